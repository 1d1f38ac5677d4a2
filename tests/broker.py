"""Test helper: a real mosquitto broker on a free loopback port, and a small paho v5/3.1.1 hub client."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`with Broker() as b:` -> mosquitto listening on 127.0.0.1:b.port, anonymous, no persistence."""

    def __init__(self, max_packet_size: Optional[int] = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edgeverify-broker-"))
        self.proc: Optional[subprocess.Popen] = None
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr"]
        if max_packet_size:
            conf.append(f"max_packet_size {max_packet_size}")
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "wb"),
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 5 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Hub:
    """A client as the hub would use: subscribe, publish, and wait for matching messages."""

    def __init__(self, port: int, v5: bool = True, client_id: str = "") -> None:
        self.v5 = v5
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def subscribe(self, topic: str, timeout: float = 3.0) -> None:
        done = queue.Queue()
        self.client.on_subscribe = lambda *a: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=timeout)

    def publish(self, topic: str, payload: bytes, response_topic: Optional[str] = None,
                correlation: Optional[bytes] = None, user: Optional[dict[str, str]] = None) -> None:
        props = None
        if self.v5 and (response_topic or correlation or user):
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
            if user:
                props.UserProperty = list(user.items())
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(3)

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
