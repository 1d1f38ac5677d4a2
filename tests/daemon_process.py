"""A real `python -m edgeverify run` subprocess for end-to-end tests, and the hub side of a request.

The test plays systemd (binds NOTIFY_SOCKET, waits for READY=1, sends SIGTERM); ask() is a v5
request/response round trip. Fixtures that start one (broker, daemon, state_dir) are in conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from broker import Hub

REPO = Path(__file__).resolve().parents[1]
PREFIX = "evtest"


class NotifySocket:
    """What systemd does: a datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while self._run:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                continue
            except OSError:
                return

    def wait_for(self, line: str, timeout: float, since: int = 0) -> int:
        """Index of the first message from `since` on containing the line `line`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(since, len(self.messages)):
                if line in self.messages[i][1].split("\n"):
                    return i
            time.sleep(0.02)
        raise TimeoutError(f"no {line!r} from the daemon within {timeout} s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self._run = False
        self.sock.close()


class DaemonProcess:
    def __init__(self, tmp: Path, port: int, model: Path, state_dir: Path, device_id: str,
                 watchdog_usec: Optional[int] = None, extra: Optional[dict] = None,
                 env_extra: Optional[dict] = None, argv: Optional[list[str]] = None,
                 limits: Optional[dict] = None, **mqtt_extra: Any) -> None:
        """argv: the command before `run --config FILE` (default: this interpreter, -m edgeverify)."""
        self.device_id = device_id
        self.base = f"{PREFIX}/{device_id}"
        cfg = tmp / f"{device_id}.yaml"
        mqtt = {"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX, "reconnect_max_s": 2, **mqtt_extra}
        cfg.write_text(json.dumps({  # JSON is YAML
            "device_id": device_id,
            "model": str(model),
            "state_dir": str(state_dir),
            "mqtt": mqtt,
            "limits": {"max_payload_bytes": 3_000_000, "queue_size": 1, "max_audio_seconds": 30, **(limits or {})},
            **(extra or {}),
        }))
        notify_path = tmp / f"{device_id}.notify"
        notify_path.unlink(missing_ok=True)  # a restarted daemon gets a fresh socket
        self.notify = NotifySocket(notify_path)
        env = {k: v for k, v in {**os.environ, **(env_extra or {})}.items()
               if k not in ("STATE_DIRECTORY", "JOURNAL_STREAM", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = self.notify.path
        env.pop("WATCHDOG_USEC", None)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log = open(tmp / f"{device_id}.log", "ab")  # appended: a restarted daemon keeps one log
        self.proc = subprocess.Popen(
            (argv or [sys.executable, "-m", "edgeverify"]) + ["run", "--config", str(cfg)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.log_path = tmp / f"{device_id}.log"
        try:
            self.notify.wait_for("READY=1", 60)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"daemon never became ready:\n{self.log_path.read_text()}") from None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown at all (a crash, the OOM killer)."""
        self.proc.kill()
        self.proc.wait()
        self.notify.close()
        self.log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        return self.proc.returncode


def ask(hub: Hub, topic: str, payload: bytes, user: Optional[dict[str, str]] = None, timeout: float = 10) -> dict:
    """v5 request/response: own response topic, matched by correlation data."""
    reply = f"hub/replies/{uuid.uuid4().hex}"
    corr = uuid.uuid4().bytes
    hub.subscribe(reply)
    hub.publish(topic, payload, response_topic=reply, correlation=corr, user=user)
    msg = hub.wait(lambda m: m.topic == reply and getattr(m.properties, "CorrelationData", None) == corr, timeout)
    return json.loads(msg.payload)


def as_clip(p: Path) -> tuple[str, bytes]:
    """(name, bytes) of a recording, as encode_request takes a clip."""
    return (p.name, p.read_bytes())
