"""TLS and mutual TLS against a real mosquitto (`require_certificate true`), certificates made by openssl here.

With the client certificate the service connects and answers; without it, with an unknown CA, or with a
host name the certificate does not name, it stays disconnected and logs the cause -- once, not per retry.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub  # noqa: E402

from edgeverify.store.config import parse_config  # noqa: E402
from edgeverify.errors import ConfigError  # noqa: E402
from edgeverify.app.protocol import encode_request  # noqa: E402

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(MOSQUITTO is None or OPENSSL is None, reason="needs mosquitto and openssl")


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    _ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext + "\nauthorityKeyIdentifier=keyid\nbasicConstraints=CA:FALSE\n")
    _ssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "otherca")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth")
    return d


@pytest.fixture(scope="module")
def tls_broker(pki: Path) -> Any:
    with Broker(tls={"cafile": pki / "ca.crt", "certfile": pki / "server.crt", "keyfile": pki / "server.key",
                     "require_certificate": True}) as b:
        yield b


def _config(tmp_path: Path, port: int, **mqtt: Any) -> Any:
    return parse_config({"device_id": "tls1", "state_dir": str(tmp_path),
                         "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 1, "reconnect_max_s": 1,
                                  "discovery_prefix": None, **mqtt}})


def test_mtls_with_client_certificate(tmp_path: Path, pki: Path, tls_broker: Broker, int8_verifier: Any,
                                      speech_dir: Path, mqtt_adapter: Any) -> None:
    from edgeverify.app.decisions import DecisionService
    from edgeverify.store.profiles import ProfileStore

    config = _config(tmp_path, tls_broker.port, ca_file=str(pki / "ca.crt"), certfile=str(pki / "client.crt"),
                     keyfile=str(pki / "client.key"))
    service, run = mqtt_adapter(config, DecisionService(int8_verifier, ProfileStore(tmp_path)))
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(stop,), daemon=True)
    service.start()
    worker.start()
    hub = None
    try:
        assert service.connected.wait(20), "no mTLS connection"
        hub = Hub(tls_broker.port, tls={"cafile": str(pki / "ca.crt"), "certfile": str(pki / "client.crt"),
                                        "keyfile": str(pki / "client.key")})
        hub.subscribe("edgeverify/tls1/response")
        clip = sorted((speech_dir / "dev" / "vctk-p225").glob("*.wav"))[0]
        hub.publish("edgeverify/tls1/request", encode_request("identify", (clip.name, clip.read_bytes()), request_id="T"))
        r = json.loads(hub.wait(lambda m: m.topic == "edgeverify/tls1/response", 60).payload)
        assert r["ok"] and r["request_id"] == "T", r
    finally:
        if hub is not None:
            hub.close()
        stop.set()
        worker.join(5)
        service.stop()


@pytest.mark.parametrize(
    "case, mqtt, cause",
    [
        ("no client certificate", {}, r"certificate required|CERTIFICATE_REQUIRED|handshake failure"),
        ("unknown CA", {"ca_file": "otherca.crt"}, r"TLS certificate verification failed: .*(issuer|self.signed)"),
        ("host name mismatch", {"host": "localhost"}, r"TLS certificate verification failed: .*[Hh]ostname mismatch"),
    ],
)
def test_tls_failures_log_their_cause_once(tmp_path: Path, pki: Path, tls_broker: Broker, caplog: Any,
                                           case: str, mqtt: dict, cause: str) -> None:
    caplog.set_level(logging.INFO, logger="edgeverify")
    settings = {"ca_file": str(pki / "ca.crt"), **mqtt}
    settings["ca_file"] = str(pki / Path(settings["ca_file"]).name)
    from edgeverify.app.counters import Counters
    from edgeverify.mqtt.connection import MqttConnection

    service = MqttConnection(_config(tmp_path, tls_broker.port, **settings), "edgeverify/tls1/availability", Counters())
    service.start()
    try:
        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "edgeverify.mqtt.connection"]

        deadline = time.monotonic() + 30
        while not any(re.search(cause, m) for m in lines()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # more attempts (reconnect every 1 s), same cause
        assert not service.connected.is_set()
        matching = [m for m in lines() if re.search(cause, m)]
        assert len(matching) == 1, (case, lines())
    finally:
        service.stop()


def test_client_certificate_config_is_checked(pki: Path, tmp_path: Path) -> None:
    ok = parse_config({"mqtt": {"certfile": str(pki / "client.crt"), "keyfile": str(pki / "client.key")}})
    assert ok.mqtt.tls
    with pytest.raises(ConfigError, match="mqtt.keyfile"):
        parse_config({"mqtt": {"certfile": str(pki / "client.crt"), "keyfile": str(pki / "otherca.key")}})
    with pytest.raises(ConfigError, match="mqtt.keyfile: needs mqtt.certfile"):
        parse_config({"mqtt": {"keyfile": str(pki / "client.key")}})
    with pytest.raises(ConfigError, match="mqtt.certfile"):
        parse_config({"mqtt": {"certfile": str(tmp_path / "missing.crt")}})
    enc = tmp_path / "enc.key"
    _ssl("ec", "-in", str(pki / "client.key"), "-out", str(enc), "-aes256", "-passout", "pass:x", cwd=tmp_path)
    with pytest.raises(ConfigError, match="encrypted"):
        parse_config({"mqtt": {"certfile": str(pki / "client.crt"), "keyfile": str(enc)}})
