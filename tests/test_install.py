"""install.sh: valid bash, and its --plan (which changes nothing) describes the install on amd64 and arm64."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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
        "systemctl enable --now mosquitto.service",
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
