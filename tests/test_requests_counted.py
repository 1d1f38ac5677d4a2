"""Home Assistant's "Requests handled" counts every request the device handled, from every source.

A real `edgeverify run` on a real mosquitto, with its (virtual) microphone in identify mode, its Wyoming
proxy in front of the stand-in STT, and admin requests on: one microphone utterance, one Wyoming
utterance, one MQTT identify request and one admin `list` make the retained diagnostics say 4 requests,
split by source in `requests_by_source` (the sensor's attributes, per its discovery config).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import MOSQUITTO, Hub, free_port  # noqa: E402
from daemon_process import DaemonProcess, as_clip, ask  # noqa: E402

from edgeverify.app.protocol import encode_request  # noqa: E402

if MOSQUITTO is None:
    pytest.skip("mosquitto not installed", allow_module_level=True)


def test_requests_handled_counts_every_source(tmp_path: Path, broker: Any, hub: Hub, int8_model: Path,
                                              state_dir: Path, clips: dict[str, list[Path]]) -> None:
    pytest.importorskip("wyoming")
    import virtual_mic
    from wyoming.client import AsyncTcpClient
    from wyoming_helpers import pcm16, read_until, stream
    from wyoming_stt import StandInStt

    reason = virtual_mic.available()
    if reason:
        pytest.skip(f"virtual microphone unavailable: {reason}")
    proxy_port, stt_port = free_port(), free_port()
    extra = {"microphone": {"enabled": True, "device": "pulse", "mode": "identify", "max_utterance_s": 8.0},
             "wyoming": {"enabled": True, "uri": f"tcp://127.0.0.1:{proxy_port}", "stt_uri": f"tcp://127.0.0.1:{stt_port}"},
             "admin": {"enabled": True}}
    alice = clips["vctk-p225"]

    async def talk(wav: Path) -> None:
        stt = await StandInStt(port=stt_port).start()
        try:
            async with AsyncTcpClient("127.0.0.1", proxy_port) as client:
                await stream(client, pcm16(wav))
                assert (await read_until(client, ("transcript", "error")))[-1].type == "transcript"
        finally:
            await stt.stop()

    with virtual_mic.VirtualMic(16000) as vm:
        d = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "count1", extra=extra, env_extra=vm.env)
        try:
            base = d.base
            hub.subscribe(f"{base}/event")
            hub.subscribe("homeassistant/device/edgeverify_count1/config")
            config = json.loads(hub.wait(lambda m: m.topic.endswith("edgeverify_count1/config"), 10).payload)
            sensor = config["cmps"]["requests"]
            assert sensor["name"] == "Requests handled" and sensor["json_attributes_topic"] == f"{base}/diagnostics"

            vm.play(alice[4])  # the microphone
            mic = hub.wait(lambda m: m.topic == f"{base}/event" and json.loads(m.payload)["source"] == "microphone", 30)
            assert json.loads(mic.payload)["speaker"] == "alice"
            asyncio.run(asyncio.wait_for(talk(alice[5]), 60))  # Wyoming
            hub.wait(lambda m: m.topic == f"{base}/event" and json.loads(m.payload)["source"] == "wyoming", 30)
            assert ask(hub, f"{base}/request", encode_request("identify", as_clip(alice[6])), timeout=30)["ok"]  # MQTT
            assert ask(hub, f"{base}/admin/request", json.dumps({"type": "list"}).encode(), timeout=30)["ok"]  # admin

            hub.subscribe(f"{base}/diagnostics")
            want = {"mqtt": 1, "admin": 1, "microphone": 1, "wyoming": 1}
            deadline, doc = time.monotonic() + 30, {}
            while time.monotonic() < deadline and doc.get("requests_by_source") != want:  # published every 10 s at most
                doc = json.loads(hub.wait(lambda m: m.topic == f"{base}/diagnostics", deadline - time.monotonic()).payload)
            assert doc["requests_by_source"] == want, doc
            assert doc["requests"] == 4 and doc["decisions"] == 3 and doc["errors"] == 0, doc
        finally:
            rc = d.stop()
        log = d.log_path.read_text()
        assert rc == 0 and "Traceback" not in log, log
        assert "stopped after 4 request(s)" in log, log[-2000:]
