#!/usr/bin/env bash
# Prove edgeverify on the Raspberry Pi's CPU family (issue 5): run the package under an emulated arm64
# Python for a Cortex-A72 (Pi 4, no int8 dot product) and a Cortex-A76 (Pi 5, SDOT/UDOT), and compare
# imports, int8/fp32 embeddings of ECAPA and CAM++, decisions and the CLI with x86 (tests/arm/arm_check.py does
# the work), after building the models on the emulated A72 and comparing them byte for byte with x86's.
#
#   tests/arm/run_arm_check.sh            .ci/run runs it at nice 19 beside the main tests (4-7 min alone on 2 cores, 9-13 under a load of 4-6)
#
# What can overlap does: the arm64 Python's set-up with the aarch64 resolution of our wheel (both downloads),
# the four resolutions with each other, and the model build under the emulated A72 (one process) with
# arm_check.py's embeddings on both emulated CPUs (the latter use the x86 build's models).
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
WANT="$REQS | $DEBS | $(sha256sum "$TOOL" 2>/dev/null | cut -c1-16 || true)"  # no tool: said below
# The arm64 Python is set up (downloads) while the wheel is resolved and installed below (downloads too).
SETUP_PID=""
if [ -x "$ARM_DIR/python-cortex-a72" ] && [ -x "$ARM_DIR/python-cortex-a76" ] \
    && [ "$(cat "$ARM_DIR/.edgeverify-stamp" 2>/dev/null || true)" = "$WANT" ]; then
    stamp "reusing arm64 Python in $ARM_DIR ($REQS)"
else
    [ -x "$TOOL" ] || { echo "run_arm_check.sh: set-up tool $TOOL not found (set ARM_PYTHON_TOOL)" >&2; exit 1; }
    stamp "setting up arm64 Python in $ARM_DIR: $REQS + debs $DEBS"
    rm -rf "$ARM_DIR/site" "$ARM_DIR/.edgeverify-stamp"   # no stale wheels of other versions
    DEB_ARGS=(); for d in $DEBS; do DEB_ARGS+=(--deb "$d"); done
    mkdir -p "$ARM_DIR"
    # shellcheck disable=SC2086
    "$TOOL" "$ARM_DIR" "${DEB_ARGS[@]}" $REQS > "$ARM_DIR/setup.log" 2>&1 &
    SETUP_PID=$!
fi
PIDS=()  # background jobs of this script, stopped when it stops early
# shellcheck disable=SC2317  # called by the EXIT trap
stop_jobs() { local pid; for pid in $SETUP_PID "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_jobs EXIT

# --- install: what `pip install /path/to/edgeverify[build]` resolves on an arm64 board -------------------
# Our wheel plus its dependencies resolved from pyproject.toml's ranges (not the venv's pins), for aarch64
# only (manylinux tags of glibc <= 2.36 = Debian 12 / Raspberry Pi OS bookworm): fails if any dependency
# lacks an aarch64 wheel. Resolved for Python 3.10-3.13 (Jetson's Ubuntu 22.04 ... Debian 13); installed
# for 3.11 into a folder that then runs under the emulated A72 without the checkout on its path.
INST="$ARM_DIR/installed"
rm -rf "$INST" && mkdir -p "$INST/wheel" "$INST/site" "$INST/models"
AARCH64=(--only-binary=:all: --implementation cp --platform manylinux_2_36_aarch64 --platform manylinux_2_34_aarch64
         --platform manylinux_2_31_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64
         --platform manylinux_2_24_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform any)
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$INST/wheel" . > "$INST/pip.log" 2>&1 \
    || { cat "$INST/pip.log" >&2; echo "run_arm_check.sh: building the edgeverify wheel failed" >&2; exit 1; }
WHEEL=$(ls "$INST"/wheel/edgeverify-*.whl)
# the four resolutions at once (network): dry runs for 3.10, 3.12, 3.13; the install for 3.11
for v in 3.10 3.11 3.12 3.13; do
    if [ "$v" = 3.11 ]; then target=(--target "$INST/site"); else target=(--dry-run --target "$INST/dry-$v"); fi
    "$PY" -m pip install -q --disable-pip-version-check --ignore-installed "${target[@]}" \
        "${AARCH64[@]}" --python-version "$v" --report "$INST/resolve-$v.json" "${WHEEL}[build]" > "$INST/pip-$v.log" 2>&1 &
    PIDS+=($!)
done
for n in 0 1 2 3; do
    v=$(echo 3.10 3.11 3.12 3.13 | cut -d' ' -f$((n + 1)))
    wait "${PIDS[$n]}" || { tail -20 "$INST/pip-$v.log" >&2; echo "run_arm_check.sh: no aarch64 wheels (or install) for Python $v" >&2; exit 1; }
done
PIDS=()
"$PY" tests/arm/arm_check.py resolved "$INST"/resolve-*.json
if [ -n "$SETUP_PID" ]; then
    if ! wait "$SETUP_PID"; then
        SETUP_PID=""
        tail -30 "$ARM_DIR/setup.log" >&2
        echo "run_arm_check.sh: arm64 Python set-up failed (log: $ARM_DIR/setup.log)" >&2
        exit 1
    fi
    SETUP_PID=""
    echo "$WANT" > "$ARM_DIR/.edgeverify-stamp"
    stamp "arm64 Python ready"
fi
cp "$ARM_DIR/site/sitecustomize.py" "$INST/site/"
sed "s#$ARM_DIR/site#$INST/site#" "$ARM_DIR/python-cortex-a72" > "$INST/python-cortex-a72"
chmod +x "$INST/python-cortex-a72"
stamp "installed $(basename "$WHEEL")[build] with its aarch64 wheels into $INST/site"

# --- build on the board: the models a Pi builds itself (install.sh step 4) must be the x86 files ------------
CKPT=models/.cache/embedding_model.ckpt
[ -f "$CKPT" ] || { echo "run_arm_check.sh: $CKPT missing (./install.sh --dev downloads it)" >&2; exit 1; }
# the committed model data (manifests, calibration ranges) as the board has it, and the x86 build's download
# cache (every model's checkpoint, checked by sha256 there) copied, so the A72 build reads the same bytes
# and downloads nothing
git ls-files -z 'models/*.json' | xargs -0 -I{} cp {} "$INST/models/"
mkdir -p "$INST/models/.cache"
for f in models/.cache/*; do if [ -f "$f" ]; then cp "$f" "$INST/models/.cache/"; fi; done
# CAM++: checked where this checkout built it (./install.sh --dev, `edgeverify model build`)
CAMPP=0
if [ -f models/campp-int8.onnx ] && [ -f models/campp-fp32.onnx ]; then
    CAMPP=1
elif "$PY" -c 'import sys; from edgeverify.core import model_store as m; sys.exit("campp" not in getattr(m, "MODELS", {}))'; then
    echo "run_arm_check.sh: this edgeverify knows CAM++ but models/campp-int8.onnx / campp-fp32.onnx are not built" >&2
    exit 1
else
    stamp "CAM++ is not a model of this edgeverify: CAM++ ARM checks SKIPPED"
fi
# The A72 build (one emulated process, about 2 minutes) runs while arm_check.py drives the embeddings on both
# emulated CPUs (it uses the x86 build's models, not these), so 2 cores stay busy throughout.
stamp "model build under the emulated A72 (installed package, not the checkout; background, log $INST/build.log)"
(
    started=$SECONDS
    cd "$INST" && export EDGEVERIFY_MODEL_DIR="$INST/models" \
        && ./python-cortex-a72 -m edgeverify --version \
        && ./python-cortex-a72 -c 'import edgeverify, sys; sys.exit(not edgeverify.__file__.startswith(sys.argv[1]))' "$INST/site" \
        && ./python-cortex-a72 -m edgeverify model build --out "$INST/models" \
        && echo "A72 model build: $((SECONDS - started)) s"
) > "$INST/build.log" 2>&1 &
BUILD_PID=$!
PIDS+=("$BUILD_PID")

stamp "running tests/arm/arm_check.py (x86 vs emulated Cortex-A72 and Cortex-A76)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
set +e
CAMPP_ARGS=(); [ "$CAMPP" = 1 ] && CAMPP_ARGS=(--require-campp)
"$PY" tests/arm/arm_check.py drive --jobs "${ARM_CHECK_JOBS:-2}" "${CAMPP_ARGS[@]}" \
    --arm "A72=$ARM_DIR/python-cortex-a72" --arm "A76=$ARM_DIR/python-cortex-a76"
rc=$?
set -e
stamp "arm_check.py done (exit $rc); the A72 model build:"

if ! wait "$BUILD_PID"; then
    tail -20 "$INST/build.log" >&2
    echo "run_arm_check.sh: the installed package failed under the emulated A72 (log: $INST/build.log)" >&2
    exit 1
fi
PIDS=()
grep -m1 "^edgeverify " "$INST/build.log" | sed 's/^/  installed and runs: /'
grep -m1 "^A72 model build: " "$INST/build.log" | sed 's/^/  /'
BUILT="ecapa-int8 ecapa-fp32"
[ "$CAMPP" = 1 ] && BUILT="$BUILT campp-int8 campp-fp32"
for m in $BUILT; do
    [ -f "$INST/models/$m.onnx" ] || { echo "run_arm_check.sh: the A72 build made no $m.onnx (log: $INST/build.log)" >&2; exit 1; }
    x86=$(sha256sum "models/$m.onnx" | cut -d' ' -f1)
    arm=$(sha256sum "$INST/models/$m.onnx" | cut -d' ' -f1)
    printf '  %s.onnx sha256: x86 build %s..., A72 build %s... %s\n' "$m" "${x86:0:16}" "${arm:0:16}" \
        "$([ "$x86" = "$arm" ] && echo identical || echo DIFFERENT)"
    [ "$x86" = "$arm" ] || { echo "run_arm_check.sh: $m.onnx built under the A72 differs from x86's" >&2; exit 1; }
done
stamp "model build under the emulated A72 (installed package, not the checkout) is byte-identical to x86's ($BUILT)"
stamp "done (exit $rc)"
exit $rc
