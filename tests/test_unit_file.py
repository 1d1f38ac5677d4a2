"""The systemd unit: systemd-analyze accepts it (no unknown or invalid settings) and it says what we rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgeverify.service"
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


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """Copy of the unit whose ExecStart points at an executable that exists here (same arguments)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    exe = tmp_path / "bin" / "edgeverify"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    assert EXEC in text
    copy = tmp_path / "edgeverify.service"
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
