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
    base=${HA_BASE_PYTHON:-$(command -v python3.13 || ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 2>/dev/null | sort -V | tail -1 || true)}
    if [ -z "$base" ]; then
        echo "no Python 3.13 found: set HA_BASE_PYTHON" >&2
        exit 2
    fi
    echo "creating $HA_VENV with $base and installing homeassistant${HA_VERSION:+==$HA_VERSION} (minutes)"
    "$base" -m venv "$HA_VENV"
    "$HA_VENV/bin/pip" install -q "homeassistant${HA_VERSION:+==$HA_VERSION}"
fi
HA_PYTHON="$HA_VENV/bin/python" exec .venv/bin/python tests/ha/ha_check.py
