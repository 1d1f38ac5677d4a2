#!/usr/bin/env bash
# Make .venv-ha/: a Home Assistant Core for the companion integration's real-HA test (tests/ha_companion/run.sh).
#
#   tests/ha_companion/setup_ha.sh                      # .venv-ha in the repo root, HA_VERSION default below
#                                                       # (an existing ready venv is kept when HA_VERSION is unset)
#   HA_VERSION=2025.4.4 tests/ha_companion/setup_ha.sh  # any release that installs on the Python found
#   HA_VENV=/elsewhere HA_BASE_PYTHON=/usr/bin/python3.13 tests/ha_companion/setup_ha.sh
#
# HA >= 2025.5 asks for Python >= 3.13.2 and HA >= 2026.3 for 3.14.2. On an older 3.13 the wheel is installed
# with --ignore-requires-python and tests/ha_companion/hass.py starts HA past its start-up version gate.
# The requirements of every integration the test loads (HA's bootstrap set + mqtt, conversation, person and
# their dependencies) are installed here, so HA installs nothing at start (the test runs it with --skip-pip).
# Idempotent: a venv that already has that HA version is kept. Takes 1-3 minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
HA_VENV=${HA_VENV:-.venv-ha}
if [ -z "${HA_VERSION:-}" ] && [ -f "$HA_VENV/.edgeverify-ready" ]; then  # no version asked: keep what is there
    echo "$HA_VENV: Home Assistant $("$HA_VENV/bin/python" -c 'import homeassistant.const as c; print(c.__version__)') ready"
    exit 0
fi
HA_VERSION=${HA_VERSION:-2026.2.3}  # the newest HA whose dependencies install on Python 3.13 (2026.3 needs 3.14)
base=${HA_BASE_PYTHON:-}
if [ -z "$base" ]; then  # the newest Python >= 3.13 that runs (a pyenv shim may exist for one that is not active)
    for cand in python3.14 python3.13 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[34]*/bin/python3 2>/dev/null | sort -rV); do
        if "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then base=$cand; break; fi
    done
fi
if [ -z "$base" ] || ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
    echo "no Python >= 3.13 found: set HA_BASE_PYTHON" >&2
    exit 2
fi
if [ -x "$HA_VENV/bin/python" ] && [ "$("$HA_VENV/bin/python" -c 'import homeassistant.const as c; print(c.__version__)' 2>/dev/null)" = "$HA_VERSION" ] \
    && [ -f "$HA_VENV/.edgeverify-ready" ]; then
    echo "$HA_VENV: Home Assistant $HA_VERSION ready"
    exit 0
fi
rm -rf "$HA_VENV"
echo "creating $HA_VENV with $base ($("$base" -V)) and Home Assistant $HA_VERSION"
"$base" -m venv "$HA_VENV"
"$HA_VENV/bin/pip" install -q --upgrade pip
"$HA_VENV/bin/pip" install -q --ignore-requires-python "homeassistant==$HA_VERSION"
"$HA_VENV/bin/python" tests/ha_companion/ha_requirements.py > "$HA_VENV/integration-requirements.txt"
"$HA_VENV/bin/pip" install -q --ignore-requires-python -r "$HA_VENV/integration-requirements.txt"
touch "$HA_VENV/.edgeverify-ready"
echo "$HA_VENV: Home Assistant $HA_VERSION ready"
