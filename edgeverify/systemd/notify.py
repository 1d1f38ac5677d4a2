"""systemd integration: sd_notify over $NOTIFY_SOCKET and journal-friendly logging.

sd_notify is one datagram of "KEY=value" lines to a unix socket, so it is implemented here (no
dependency); outside systemd (no NOTIFY_SOCKET) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Optional

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to the service manager; False if not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":  # abstract namespace socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state, exc)
        return False


def ready(status_text: Optional[str] = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping(status_text: Optional[str] = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload (systemd >= 253) requires."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval() -> Optional[float]:
    """Seconds within which systemd expects WATCHDOG=1 (WatchdogSec=), or None when not enabled for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def setup_logging(level: str = "info") -> None:
    """Journal handler (structured fields) under systemd when python-systemd is installed, else stderr."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER="edgeverify")
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)  # journald adds time and priority itself
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
