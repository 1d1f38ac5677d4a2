"""Test helper: a real mosquitto broker on a free loopback port, and a small paho v5/3.1.1 hub client."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt

from edgeverify.mqtt.guard import guard_publish, tolerate_bom

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`with Broker() as b:` -> mosquitto listening on 127.0.0.1:b.port, anonymous, no persistence.

    persistence=True keeps sessions, subscriptions, queued messages and retained messages in b.dir across
    restart() (mosquitto saves on SIGTERM); tls=dict(cafile=, certfile=, keyfile=, require_certificate=)
    makes the listener TLS.
    """

    def __init__(self, max_packet_size: Optional[int] = None, persistence: bool = False,
                 tls: Optional[dict[str, Any]] = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edgeverify-broker-"))
        self.proc: Optional[subprocess.Popen] = None
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "log_dest stderr"]
        if os.geteuid() == 0:
            conf.append("user root")  # else mosquitto drops to user "mosquitto", who cannot write our tmp dir
        conf.append(f"persistence {'true' if persistence else 'false'}")
        if persistence:
            conf += [f"persistence_location {self.dir}/", "autosave_interval 1"]
        if max_packet_size:
            conf.append(f"max_packet_size {max_packet_size}")
        for key in ("cafile", "certfile", "keyfile"):
            if tls and tls.get(key):
                conf.append(f"{key} {tls[key]}")
        if tls and tls.get("require_certificate"):
            conf.append("require_certificate true")
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def halt(self, kill: bool = False) -> None:
        """Stop the process, keeping its directory (persistence database, log) for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> "Broker":
        self.halt()
        return self.start()

    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Hub:
    """A client as the hub would use: subscribe, publish, and wait for matching messages."""

    def __init__(self, port: int, v5: bool = True, client_id: str = "", session_expiry: int = 0,
                 tls: Optional[dict[str, Any]] = None, username: Optional[str] = None) -> None:
        """session_expiry > 0 (with a client_id): a persistent session, so replies published while the
        broker restarts are not lost; subscriptions are renewed on every (re)connect either way."""
        self.v5 = v5
        self.topics: list[str] = []
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = self._on_connect
        tolerate_bom()  # paho's own clients would otherwise drop the connection on hostile fuzz messages
        guard_publish(self.client)
        self.client.reconnect_delay_set(1, 2)
        if username:
            self.client.username_pw_set(username, username)  # tests' convention: password = user name
        if tls:
            self.client.tls_set(ca_certs=tls.get("cafile"), certfile=tls.get("certfile"), keyfile=tls.get("keyfile"))
        kwargs: dict[str, Any] = {}
        if v5 and session_expiry:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect("127.0.0.1", port, keepalive=10, **kwargs)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)

    def connected(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def subscribe(self, topic: str, timeout: float = 3.0) -> None:
        done = queue.Queue()
        self.client.on_subscribe = lambda *a: done.put(True)
        self.topics.append(topic)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=timeout)

    def publish(self, topic: str, payload: bytes, response_topic: Optional[str] = None,
                correlation: Optional[bytes] = None, user: Optional[dict[str, str]] = None,
                expiry: Optional[int] = None, wait: bool = True) -> None:
        props = None
        if self.v5 and (response_topic or correlation or user or expiry is not None):
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if user:
                props.UserProperty = list(user.items()) if isinstance(user, dict) else list(user)
            if expiry is not None:
                props.MessageExpiryInterval = expiry
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if wait:
            info.wait_for_publish(10)

    def wait(self, predicate: Any = None, timeout: float = 10.0) -> mqtt.MQTTMessage:
        """The next message satisfying predicate(msg) (others are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching MQTT message within the timeout")
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if predicate is None or predicate(m):
                return m

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
