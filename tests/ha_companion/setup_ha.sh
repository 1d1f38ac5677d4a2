#!/usr/bin/env bash
# Make .venv-ha/: a Home Assistant Core for the companion integration's real-HA test (tests/ha_companion/run.sh).
#
#   tests/ha_companion/setup_ha.sh                      # .venv-ha in the repo root, HA_VERSION default below
#                                                       # (an existing ready venv is kept when HA_VERSION is unset)
#   HA_VERSION=2025.4.4 tests/ha_companion/setup_ha.sh  # any release that installs on the Python found
#   HA_VENV=/elsewhere HA_BASE_PYTHON=/usr/bin/python3.13 tests/ha_companion/setup_ha.sh
#   HA_INSTALLER=pip tests/ha_companion/setup_ha.sh     # uv (the default where one is found) or pip
#
# HA >= 2025.5 asks for Python >= 3.13.2 and HA >= 2026.3 for 3.14.2. On an older 3.13 uv resolves as for the
# newest 3.13 patch release (--python-version 3.13.99), pip ignores Requires-Python (--ignore-requires-python;
# both gave the same ~110 packages for 2026.2.3), and tests/ha_companion/hass.py starts HA past its start-up
# version gate. The venv's entry-point scripts (bin/hass, bin/pip) name the .partial path: use bin/python.
# The requirements of every integration the test loads (HA's bootstrap set + mqtt, conversation, person and
# their dependencies) are installed here, so HA installs nothing at start (the test runs it with --skip-pip).
#
# Installer: uv where found ($UV, .venv/bin/uv from the test extra, or uv on PATH): 1-2 minutes for HA's
# ~110 packages; pip otherwise, or when uv fails (3-7 minutes). The venv is made in $HA_VENV.partial and moved
# into place only when complete, so a half-made or failed install is never taken for a Home Assistant (the
# tests skip while $HA_VENV is absent, also when they start during an install).
# Idempotent: a venv that already has that HA version is kept.
#
# Exit status: 0 ready; 2 no Python >= 3.13 here; 3 the package index does not answer (both: HA cannot be
# installed on this machine, .ci/run reports the tests SKIPPED); 1 anything else (an install that fails while
# the index answers is a failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
HA_VENV=${HA_VENV:-.venv-ha}
HA_VENV=${HA_VENV%/}
INSTALLER=${HA_INSTALLER:-}
INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}

find_uv() {
    local cand
    for cand in "${UV:-}" .venv/bin/uv "$(command -v uv 2>/dev/null || true)"; do
        if [ -n "$cand" ] && "$cand" --version >/dev/null 2>&1; then echo "$cand"; return 0; fi
    done
    return 1
}
if [ -z "$INSTALLER" ]; then
    if UV_BIN=$(find_uv); then INSTALLER=uv; else INSTALLER=pip; fi
elif [ "$INSTALLER" = uv ]; then
    UV_BIN=$(find_uv) || { echo "HA_INSTALLER=uv but no uv found (pip install uv, or set UV)" >&2; exit 1; }
elif [ "$INSTALLER" != pip ]; then
    echo "HA_INSTALLER must be uv or pip, not '$INSTALLER'" >&2
    exit 1
fi
# uv does not read pip's configuration: give it pip's CA bundle when one is set (TLS-inspecting proxies)
if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then export SSL_CERT_FILE=$PIP_CERT; fi

# install VENV ARGS...: the packages into VENV's python with the chosen installer; pip when uv fails
install_into() {
    local venv=$1; shift
    local py="$venv/bin/python"
    if [ "$INSTALLER" = uv ]; then
        # resolve for the newest patch release of this minor version: HA's Requires-Python asks for a newer
        # 3.13 than pyenv's 3.13.0, yet nothing that needs 3.14 may be chosen. Bytecode is compiled here, off
        # the tests' clock (HA imports some thousand modules at its first start).
        if "$UV_BIN" pip install --quiet --compile-bytecode --python "$py" \
            --python-version "$("$py" -c 'import sys; print("%d.%d.99" % sys.version_info[:2])')" "$@"; then
            return 0
        fi
        echo "setup_ha.sh: uv failed; installing with pip instead" >&2
    fi
    "$py" -m pip install -q --disable-pip-version-check --ignore-requires-python "$@"
}

sync_requirements() {  # a kept venv gets what integrations the tests added since it was made
    local want
    want=$("$HA_VENV/bin/python" tests/ha_companion/ha_requirements.py 2>/dev/null)
    if [ "$want" != "$(cat "$HA_VENV/integration-requirements.txt" 2>/dev/null)" ]; then
        printf '%s\n' "$want" > "$HA_VENV/integration-requirements.txt"
        install_into "$HA_VENV" -r "$HA_VENV/integration-requirements.txt"
    fi
}
ha_version_of() { "$1/bin/python" -c 'import homeassistant.const as c; print(c.__version__)' 2>/dev/null; }

if [ -z "${HA_VERSION:-}" ] && [ -f "$HA_VENV/.edgeverify-ready" ]; then  # no version asked: keep what is there
    sync_requirements
    echo "$HA_VENV: Home Assistant $(ha_version_of "$HA_VENV") ready"
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
    echo "no Python >= 3.13 found (set HA_BASE_PYTHON): Home Assistant cannot be installed here" >&2
    exit 2
fi
if [ -x "$HA_VENV/bin/python" ] && [ "$(ha_version_of "$HA_VENV")" = "$HA_VERSION" ] \
    && [ -f "$HA_VENV/.edgeverify-ready" ]; then
    sync_requirements
    echo "$HA_VENV: Home Assistant $HA_VERSION ready"
    exit 0
fi

# the index answers? (else HA cannot be installed here: say so at once rather than after pip's retries)
if ! why=$("$base" -c '
import sys, urllib.request
try:
    with urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers={"Accept": "text/html"}), timeout=20):
        pass
except Exception as exc:
    sys.exit(f"{sys.argv[1]}: {exc}")
' "$INDEX/homeassistant/" 2>&1); then
    echo "the package index does not answer ($why): Home Assistant cannot be installed here" >&2
    exit 3
fi

partial="$HA_VENV.partial"
rm -rf "$partial"
trap 'rm -rf "$partial"' EXIT  # a failed install leaves nothing behind
echo "creating $HA_VENV with $base ($("$base" -V)) and Home Assistant $HA_VERSION ($INSTALLER)"
started=$SECONDS
"$base" -m venv "$partial"
[ "$INSTALLER" = uv ] || "$partial/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
install_into "$partial" "homeassistant==$HA_VERSION"
"$partial/bin/python" tests/ha_companion/ha_requirements.py > "$partial/integration-requirements.txt"
install_into "$partial" -r "$partial/integration-requirements.txt"
touch "$partial/.edgeverify-ready"
# move into place: the tests only run $HA_VENV/bin/python (a venv's entry-point scripts keep the old path)
rm -rf "$HA_VENV"
mv "$partial" "$HA_VENV"
echo "$HA_VENV: Home Assistant $HA_VERSION ready ($((SECONDS - started)) s with $INSTALLER)"
