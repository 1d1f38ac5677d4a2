#!/usr/bin/env bash
# Opt-in check against a real Home Assistant Core from PyPI (not run by tests/run.sh or .ci/run: the first
# run installs Home Assistant, which takes minutes). See README "Home Assistant" -> "Tested against HA".
#
#   tests/ha/run_ha_check.sh                  # venv in $HA_VENV (default ~/.cache/edgeverify-ha/venv)
#   HA_VENV=/work/havenv tests/ha/run_ha_check.sh
#   HA_VERSION=2025.4.4 tests/ha/run_ha_check.sh   # pin; default: the newest that installs on that Python
#
# Needs: this checkout set up (tests/run.sh once: .venv, models/, mosquitto), the shared speech data, and a
# Python >= 3.13 for Home Assistant ($HA_BASE_PYTHON, else python3.13 on PATH, else pyenv's newest 3.13).
set -euo pipefail
cd "$(dirname "$0")/../.."
HA_VENV=${HA_VENV:-$HOME/.cache/edgeverify-ha/venv}
if [ ! -x "$HA_VENV/bin/hass" ]; then
    base=${HA_BASE_PYTHON:-}
    if [ -z "$base" ]; then  # a Python 3.13 that runs (a pyenv shim may exist for one that is not active)
        for cand in python3.13 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 2>/dev/null | sort -rV); do
            if "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then base=$cand; break; fi
        done
    fi
    if [ -z "$base" ]; then
        echo "no Python 3.13 found: set HA_BASE_PYTHON" >&2
        exit 2
    fi
    echo "creating $HA_VENV with $base and installing homeassistant${HA_VERSION:+==$HA_VERSION} (minutes)"
    "$base" -m venv "$HA_VENV"
    # uv (the test extra's) where there is one: a minute instead of several; it also picks the newest release
    # whose Requires-Python this Python meets
    uv=.venv/bin/uv; [ -x "$uv" ] || uv=$(command -v uv || true)
    if [ -z "$uv" ] || ! "$uv" pip install -q --python "$HA_VENV/bin/python" "homeassistant${HA_VERSION:+==$HA_VERSION}"; then
        "$HA_VENV/bin/pip" install -q "homeassistant${HA_VERSION:+==$HA_VERSION}"
    fi
fi
HA_PYTHON="$HA_VENV/bin/python" exec .venv/bin/python tests/ha/ha_check.py
