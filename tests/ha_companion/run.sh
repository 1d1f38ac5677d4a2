#!/usr/bin/env bash
# The companion integration against a real Home Assistant Core: one command, exit code 0 = passed.
#
#   tests/ha_companion/run.sh            # makes .venv (install.sh) and .venv-ha (setup_ha.sh) when missing
#   HA_VERSION=2025.4.4 HA_VENV=.venv-ha-2025.4 tests/ha_companion/run.sh    # another HA release
#   tests/ha_companion/run.sh -k heard   # arguments go to pytest
#
# First run on a fresh machine: installing HA takes 1-2 minutes with uv (3-7 with pip; network: PyPI); the
# tests about 2.5 minutes (two HAs: test_companion.py and test_satellite.py, the satellite path with our daemon;
# 2 cores). .ci/run runs this with HA_VENV=.cache/ci/venv-ha, installed while the main suite runs.
# Exit status: pytest's; setup_ha.sh's 2 (no Python >= 3.13) or 3 (package index unreachable) when HA cannot
# be installed here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ -x .venv/bin/python ] || ./install.sh --dev
tests/ha_companion/setup_ha.sh
export HA_VENV=${HA_VENV:-.venv-ha}
exec .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/ha_companion "$@"
