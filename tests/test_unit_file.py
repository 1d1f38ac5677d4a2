"""The systemd units (the daemon, and the standalone Wyoming proxy): systemd-analyze accepts them (no unknown
or invalid settings), they are hardened, and they say what we rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgeverify.service"
WYOMING_UNIT = UNIT.with_name("edgeverify-wyoming.service")
UNITS = [UNIT, WYOMING_UNIT]
EXEC = "/opt/edgeverify/venv/bin/edgeverify"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows repeated keys, so every value is kept)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def _one(unit: dict, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"{key}= missing from [{section}]"
    return values[-1]


@pytest.fixture(params=UNITS, ids=lambda p: p.name)
def verifiable_unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Copy of a unit whose ExecStart points at an executable that exists here (same arguments)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    exe = tmp_path / "bin" / "edgeverify"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = request.param.read_text()
    assert EXEC in text
    copy = tmp_path / request.param.name
    copy.write_text(text.replace(EXEC, str(exe)))
    return copy


def test_systemd_analyze_verify_is_clean(verifiable_unit: Path) -> None:
    res = subprocess.run(
        ["systemd-analyze", "verify", str(verifiable_unit)], capture_output=True, text=True, timeout=60
    )
    # unknown keys/bad values are only warnings ("..., ignoring.") with exit code 0: fail on any line about us
    ours = [l for l in (res.stdout + res.stderr).splitlines() if "edgeverify" in l]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


def test_broken_unit_is_caught(tmp_path: Path, verifiable_unit: Path) -> None:
    """The check above can fail: a misspelt setting shows up as a line about the unit."""
    bad = tmp_path / "edgeverify-bad.service"
    assert "ProtectHome=true" in verifiable_unit.read_text()
    bad.write_text(verifiable_unit.read_text().replace("ProtectHome=true", "ProtectHomes=true"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert any("ProtectHomes" in l for l in (res.stdout + res.stderr).splitlines())


def test_security_exposure_is_low(verifiable_unit: Path) -> None:
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(verifiable_unit)],
        capture_output=True, text=True, timeout=60,
    )
    if res.returncode != 0 and "offline" in res.stderr:
        pytest.skip("systemd-analyze security --offline not supported by this systemd")
    line = [l for l in res.stdout.splitlines() if "Overall exposure level" in l]
    assert line, res.stdout + res.stderr
    exposure = float(line[0].split(":")[1].split()[0])
    assert exposure <= 2.5, line[0]


def test_service_settings(unit: dict) -> None:
    s = "Service"
    assert _one(unit, s, "Type") == "notify"
    assert _one(unit, s, "NotifyAccess") == "main"
    assert _one(unit, s, "ExecStart") == f"{EXEC} run --config /etc/edgeverify/config.yaml"
    assert _one(unit, s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _one(unit, s, "WatchdogSec") == "30"
    assert _one(unit, s, "Restart") == "on-failure"
    assert "TimeoutStartSec" in unit[s]
    assert _one(unit, s, "User") == "edgeverify" and _one(unit, s, "Group") == "edgeverify"
    assert _one(unit, s, "SupplementaryGroups") == "audio"
    assert _one(unit, s, "StateDirectory") == "edgeverify"
    assert _one(unit, s, "StateDirectoryMode") == "0700"
    assert _one(unit, s, "ConfigurationDirectory") == "edgeverify"
    assert "RuntimeDirectory" in unit[s]
    assert "PYTHONUNBUFFERED=1" in unit[s]["Environment"]
    assert _one(unit, s, "UMask") == "0077"
    assert "MemoryMax" in unit[s]


def test_hardening(unit: dict) -> None:
    s = "Service"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "PrivateDevices": "false",  # the microphone must stay visible ...
        "DevicePolicy": "closed",  # ... but only ALSA devices:
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "RestrictNamespaces": "true",
        "LockPersonality": "true",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
    }.items():
        assert _one(unit, s, key) == value, key
    assert _one(unit, s, "DeviceAllow").split()[0] == "char-alsa"
    assert set(_one(unit, s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # cffi callbacks (sounddevice, soundfile) need W+X memory; see the comment in the unit
    assert "MemoryDenyWriteExecute" not in unit[s]


def test_unit_and_install(unit: dict) -> None:
    after = " ".join(unit["Unit"]["After"]).split()
    assert "network-online.target" in after and "sound.target" in after
    assert "network-online.target" in " ".join(unit["Unit"].get("Wants", []))
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"


# -- who may reach the service (both units) -----------------------------------------------------------------

@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_network_reach_is_loopback_and_lan_only_and_one_listening_port(path: Path) -> None:
    """IP traffic of every socket: denied, then loopback, link-local and the private ranges allowed (never
    the Internet, even with a wide wyoming.allow); the default allow-list lies inside it; the one port the
    service may bind is wyoming.uri's default."""
    import ipaddress
    from urllib.parse import urlparse

    from edgeverify.store.config import parse_config

    u = parse_unit(path.read_text())
    s = "Service"
    assert _one(u, s, "IPAddressDeny") == "any"
    allowed = " ".join(u[s]["IPAddressAllow"]).split()
    assert "any" not in allowed and "localhost" in allowed
    nets = [ipaddress.ip_network(a) for a in allowed if a not in ("localhost", "link-local", "multicast")]
    for net in nets:
        assert net.is_private and not net.is_global, net  # no Internet range
    defaults = parse_config(None).wyoming
    for net in map(ipaddress.ip_network, defaults.allow):  # the default allow-list: loopback, inside "localhost"
        assert net.is_loopback, net
    assert _one(u, s, "SocketBindDeny") == "any"
    assert _one(u, s, "SocketBindAllow") == f"tcp:{urlparse(defaults.uri).port}"
    assert urlparse(defaults.uri).hostname == "127.0.0.1"


def test_standalone_wyoming_unit() -> None:
    u = parse_unit(WYOMING_UNIT.read_text())
    s = "Service"
    assert _one(u, s, "ExecStart") == f"{EXEC} wyoming --config /etc/edgeverify/config.yaml"
    assert _one(u, s, "User") == "edgeverify" and _one(u, s, "StateDirectory") == "edgeverify"
    assert _one(u, s, "PrivateDevices") == "true"  # no microphone here
    assert "SupplementaryGroups" not in u[s] and "MemoryMax" in u[s]
    assert set(_one(u, s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert _one(u, "Install", "WantedBy") == "multi-user.target"
