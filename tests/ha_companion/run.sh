#!/usr/bin/env bash
# The companion integration against a real Home Assistant Core: one command, exit code 0 = passed.
#
#   tests/ha_companion/run.sh            # makes .venv (install.sh) and .venv-ha (setup_ha.sh) when missing
#   HA_VERSION=2025.4.4 HA_VENV=.venv-ha-2025.4 tests/ha_companion/run.sh    # another HA release
#   tests/ha_companion/run.sh -k heard   # arguments go to pytest
#
# First run on a fresh machine: installing HA takes 1-3 minutes (network: PyPI); the test itself about a minute.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ -x .venv/bin/python ] || ./install.sh --dev
tests/ha_companion/setup_ha.sh
export HA_VENV=${HA_VENV:-.venv-ha}
exec .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/ha_companion "$@"
