"""install.sh: valid bash, and its --plan (which changes nothing) describes the install on amd64 and arm64."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "install.sh"


def plan(*args: str, arch: str = "arm64") -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEVERIFY_ARCH": arch}
    return subprocess.run(["bash", str(SCRIPT), "--plan", *args], capture_output=True, text=True, env=env, timeout=60)


def test_syntax() -> None:
    res = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert SCRIPT.read_text().splitlines()[6] == "set -euo pipefail"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    res = subprocess.run(["shellcheck", str(SCRIPT), str(REPO / "tests" / "run.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_plan_lists_every_step(arch: str) -> None:
    res = plan("--with-broker", arch=arch)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"architecture: {arch}" in out
    for expected in (
        "libportaudio2", "libsystemd-dev", "python3-venv", "mosquitto",
        "/usr/bin/python3 -m venv /opt/edgeverify/venv",
        "pip install",
        "/opt/edgeverify/venv/bin/edgeverify model build --out /opt/edgeverify/models",
        "/etc/edgeverify/config.yaml",
        "/etc/systemd/system/edgeverify.service",
        "systemctl daemon-reload",
        "systemctl enable mosquitto.service",
        "systemctl restart mosquitto.service",
        "systemctl restart edgeverify.service",
    ):
        assert expected in out, expected
    # the account step adapts to the host: created, fixed, or already there
    assert "useradd --system --gid edgeverify --groups audio" in out or "user edgeverify exists" in out
    # printed with shell quoting: the extras survive copy-paste
    assert "[systemd,build,wyoming]" in out.replace("\\", "")
    # nothing architecture-specific baked in
    assert "x86_64" not in out and "aarch64" not in out


def test_plan_no_start_and_no_broker() -> None:
    out = plan("--no-start").stdout
    assert "systemctl restart edgeverify.service" not in out
    assert "systemctl enable edgeverify.service" in out
    assert "mosquitto" not in out


def test_plan_warns_on_unsupported_arch() -> None:
    res = plan(arch="armhf")
    assert "not supported" in res.stderr


def test_bad_option_and_dev_plan_are_refused() -> None:
    assert subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True).returncode == 2
    assert subprocess.run(["bash", str(SCRIPT), "--dev", "--plan"], capture_output=True).returncode != 0


def test_plan_changes_nothing() -> None:
    """--plan as a plain user must not need root or touch the system (run it from a copy to see)."""
    if not os.path.exists("/opt/edgeverify"):
        plan()
        assert not os.path.exists("/opt/edgeverify")


# -- --with-broker ---------------------------------------------------------------------------------------------

def _documented_acl() -> str:
    """The ACL the docs tell users to run (docs/security.md, or the README's admin section before it)."""
    for doc in (REPO / "docs" / "security.md", REPO / "README.md"):
        text = doc.read_text() if doc.exists() else ""
        if "```\n# /etc/mosquitto/acl\n" in text:
            return text.split("```\n# /etc/mosquitto/acl\n", 1)[1].split("```", 1)[0]
    raise AssertionError("no mosquitto ACL block in docs/security.md or README.md")


def test_plan_with_broker_shows_users_files_and_the_documented_acl() -> None:
    out = plan("--with-broker").stdout
    for expected in (
        "write /etc/edgeverify/mqtt-password (mode 0640, owner root:edgeverify): generated secret",
        "write /etc/edgeverify/homeassistant-mqtt-password (mode 0600, owner root:root): generated secret",
        "write /etc/mosquitto/edgeverify.passwd (mode 0600, owner mosquitto:mosquitto)",
        "mosquitto_passwd -U",
        "write /etc/mosquitto/edgeverify.acl (mode 0640, owner mosquitto:mosquitto)",
        "write /etc/mosquitto/conf.d/edgeverify.conf (mode 0644, owner root:root)",
        "| allow_anonymous false", "| password_file /etc/mosquitto/edgeverify.passwd",
        "| acl_file /etc/mosquitto/edgeverify.acl",
        "password_file: /etc/edgeverify/mqtt-password",
        "systemctl restart mosquitto.service",
        "/etc/systemd/system/edgeverify-wyoming.service",
    ):
        assert expected in out.replace("\\", ""), expected
    acl = "\n".join(l[8:] for l in out.splitlines() if l.startswith("      | ") or l == "      |")
    assert "pattern write edgeverify/+/request" in acl and "user homeassistant" in acl
    assert "enable --now mosquitto" not in out


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto not installed")
def test_broker_files_run_in_a_real_mosquitto(tmp_path: Path) -> None:
    """The files --with-broker writes (here under a scratch directory): the documented ACL for this device,
    hashed passwords, modes 0600/0640; a real mosquitto with them refuses anonymous clients and wrong
    passwords, lets the device and Home Assistant in, and keeps admin/ to Home Assistant; a re-run keeps
    the passwords."""
    import sys
    import time

    import paho.mqtt.client as mqtt

    sys.path.insert(0, str(REPO / "tests"))
    from broker import MOSQUITTO, Broker

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    etc = tmp_path / "etc"
    res = subprocess.run(["bash", str(SCRIPT), "--broker-files", str(etc), "--device-id", "kitchen-pi"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    files = {"mosquitto/edgeverify.passwd": 0o600, "mosquitto/edgeverify.acl": 0o640,
             "edgeverify/mqtt-password": 0o640, "edgeverify/homeassistant-mqtt-password": 0o600,
             "mosquitto/conf.d/edgeverify.conf": 0o644}
    for rel, mode in files.items():
        assert (etc / rel).stat().st_mode & 0o777 == mode, rel
    assert (etc / "mosquitto/edgeverify.acl").read_text() == _documented_acl()
    device_pw = (etc / "edgeverify/mqtt-password").read_text().strip()
    hub_pw = (etc / "edgeverify/homeassistant-mqtt-password").read_text().strip()
    assert len(device_pw) >= 24 and len(hub_pw) >= 24 and device_pw != hub_pw
    hashed = (etc / "mosquitto/edgeverify.passwd").read_text()
    assert device_pw not in hashed and hub_pw not in hashed
    assert [l.split(":")[0] for l in hashed.split()] == ["edgeverify-kitchen-pi", "homeassistant"]

    b = Broker()
    conf = b.dir / "mosquitto.conf"
    ours = [l for l in (etc / "mosquitto/conf.d/edgeverify.conf").read_text().splitlines()
            if l.strip() and not l.startswith(("#", "listener"))]
    conf.write_text(conf.read_text().replace("allow_anonymous true\n", "") + "\n".join(ours) + "\n")

    def client(user: Optional[str], password: Optional[str]) -> tuple[mqtt.Client, list]:
        got: list = []
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if user:
            c.username_pw_set(user, password)
        c.on_connect = lambda cl, u, f, reason, p: got.append(("connect", reason.is_failure))
        c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        return c, got

    with b:
        clients = []
        try:
            for user, pw in ((None, None), ("homeassistant", "wrong"), ("edgeverify-kitchen-pi", hub_pw)):
                c, got = client(user, pw)
                clients.append(c)
                assert got and got[0] == ("connect", True), (user, got)  # refused
            device, dgot = client("edgeverify-kitchen-pi", device_pw)
            hub, hgot = client("homeassistant", hub_pw)
            clients += [device, hub]
            assert dgot[0] == ("connect", False) and hgot[0] == ("connect", False)
            hub.subscribe("edgeverify/#", qos=1)
            device.subscribe("edgeverify/kitchen-pi/admin/request", qos=1)
            time.sleep(0.3)
            device.publish("edgeverify/kitchen-pi/state", b"s", qos=1).wait_for_publish(5)
            device.publish("edgeverify/other-pi/admin/request", b"x", qos=1)  # another device's: not granted
            device.publish("edgeverify/other-pi/state", b"x", qos=1)
            hub.publish("edgeverify/kitchen-pi/admin/request", b"from-hub", qos=1).wait_for_publish(5)
            time.sleep(0.5)
            assert ("edgeverify/kitchen-pi/state", b"s") in hgot
            assert not [t for t, _ in hgot[1:] if t.startswith("edgeverify/other-pi/")], hgot
            admin = [p for t, p in dgot[1:] if t == "edgeverify/kitchen-pi/admin/request"]
            assert admin == [b"from-hub"], dgot
        finally:
            for c in clients:
                c.loop_stop()
                c.disconnect()

    res = subprocess.run(["bash", str(SCRIPT), "--broker-files", str(etc), "--device-id", "kitchen-pi"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and (etc / "edgeverify/mqtt-password").read_text().strip() == device_pw
