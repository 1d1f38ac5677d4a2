"""sd_notify: real datagrams on a socket the test binds (path and abstract names)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from edgeverify.systemd import notify


def _bind(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(2)
    return s


def test_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    with _bind(path) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify.ready("up")
        assert s.recv(4096) == b"READY=1\nSTATUS=up"
        assert notify.watchdog() and s.recv(4096) == b"WATCHDOG=1"
        assert notify.status("busy") and s.recv(4096) == b"STATUS=busy"
        assert notify.stopping() and s.recv(4096) == b"STOPPING=1"
        assert notify.reloading()
        msg = s.recv(4096).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(msg.rsplit("=", 1)[1]) > 0


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgeverify-test-{os.getpid()}"
    with _bind("\0" + name) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.watchdog()
        assert s.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify.ready() is False  # logged, not raised


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert notify.watchdog_interval() is None
