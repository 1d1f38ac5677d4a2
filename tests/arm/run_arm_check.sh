#!/usr/bin/env bash
# Prove edgeverify on the Raspberry Pi's CPU family (issue 5): run the package under an emulated arm64
# Python for a Cortex-A72 (Pi 4, no int8 dot product) and a Cortex-A76 (Pi 5, SDOT/UDOT), and compare
# imports, int8/fp32 embeddings, decisions and the CLI with x86 (tests/arm/arm_check.py does the work).
#
#   tests/arm/run_arm_check.sh            called by .ci/run after the main tests (about 3-5 min)
#
# Environment:
#   ARM_PYTHON_DIR     where the arm64 Python is set up and cached (default: .cache/arm-python)
#   ARM_PYTHON_TOOL    the set-up tool (default: ../shared/tools/aarch64-python next to the checkout)
#   ARM_CHECK_JOBS     emulated CPUs run at once (default 2; 1 halves the CPU load, doubles the time)
#   EDGEVERIFY_SPEECH_DIR  shared speech data (default ../shared/data/speech); missing -> skipped
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
PY="$REPO/.venv/bin/python"
ARM_DIR=${ARM_PYTHON_DIR:-$REPO/.cache/arm-python}
TOOL=${ARM_PYTHON_TOOL:-$REPO/../shared/tools/aarch64-python}
T0=$SECONDS
stamp() { printf '[arm %4ds] %s\n' "$((SECONDS - T0))" "$*"; }

[ -x "$PY" ] || { echo "run_arm_check.sh: $PY missing: run ./install.sh --dev first" >&2; exit 1; }
for m in int8 fp32; do
    [ -f "models/ecapa-$m.onnx" ] || { echo "run_arm_check.sh: models/ecapa-$m.onnx missing: run ./install.sh --dev" >&2; exit 1; }
done

# The arm side gets exactly the x86 venv's versions of the runtime dependencies (aarch64 wheels exist
# for all of them), so a difference can only come from the CPU, not from a library version.
REQS=$("$PY" - <<'EOF'
import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in
               ("onnxruntime", "numpy", "scipy", "soundfile", "paho-mqtt", "pyyaml", "sounddevice")))
EOF
)
DEBS="libportaudio2 python3-systemd"
WANT="$REQS | $DEBS | $(sha256sum "$TOOL" 2>/dev/null | cut -c1-16)"
if [ -x "$ARM_DIR/python-cortex-a72" ] && [ -x "$ARM_DIR/python-cortex-a76" ] \
    && [ "$(cat "$ARM_DIR/.edgeverify-stamp" 2>/dev/null || true)" = "$WANT" ]; then
    stamp "reusing arm64 Python in $ARM_DIR ($REQS)"
else
    [ -x "$TOOL" ] || { echo "run_arm_check.sh: set-up tool $TOOL not found (set ARM_PYTHON_TOOL)" >&2; exit 1; }
    stamp "setting up arm64 Python in $ARM_DIR: $REQS + debs $DEBS"
    rm -rf "$ARM_DIR/site"   # no stale wheels of other versions
    DEB_ARGS=(); for d in $DEBS; do DEB_ARGS+=(--deb "$d"); done
    mkdir -p "$ARM_DIR"
    # shellcheck disable=SC2086
    if ! "$TOOL" "$ARM_DIR" "${DEB_ARGS[@]}" $REQS > "$ARM_DIR/setup.log" 2>&1; then
        tail -30 "$ARM_DIR/setup.log" >&2
        echo "run_arm_check.sh: arm64 Python set-up failed (log: $ARM_DIR/setup.log)" >&2
        exit 1
    fi
    echo "$WANT" > "$ARM_DIR/.edgeverify-stamp"
    stamp "arm64 Python ready"
fi

stamp "running tests/arm/arm_check.py (x86 vs emulated Cortex-A72 and Cortex-A76)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
set +e
"$PY" tests/arm/arm_check.py drive --jobs "${ARM_CHECK_JOBS:-2}" \
    --arm "A72=$ARM_DIR/python-cortex-a72" --arm "A76=$ARM_DIR/python-cortex-a76"
rc=$?
set -e
stamp "done (exit $rc)"
exit $rc
