"""`edgeverify run` with `wyoming.enabled`: one process serves MQTT and the Wyoming proxy (one model),
and a speaker identified on the Wyoming stream shows up on MQTT."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wyoming")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub, free_port  # noqa: E402
from daemon_process import DaemonProcess  # noqa: E402
from wyoming_helpers import pcm16, stream  # noqa: E402
from wyoming_stt import TEXT, StandInStt  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)"),
]


async def transcript_of(client: Any, wav: Path) -> str:
    """Stream a recording to the proxy as a Wyoming client; the transcript it answers (no error before it)."""
    from wyoming.asr import Transcript

    await stream(client, pcm16(wav))
    while True:
        event = await asyncio.wait_for(client.read_event(), 60)
        assert event is not None and event.type != "error", event
        if event.type == "transcript":
            return Transcript.from_event(event).text


def test_daemon_publishes_wyoming_decisions(tmp_path: Path, int8_verifier: Any, int8_model: Path, speech_dir: Path) -> None:
    from wyoming.client import AsyncTcpClient

    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    d = speech_dir / "dev" / "vctk-p225"
    ProfileStore(tmp_path / "state").enroll(
        "alice", [int8_verifier.embed(read_audio(d / f"p225_0{n}.wav")) for n in ("08", "11", "16")],
        model=int8_verifier.model,
    )
    proxy_port, stt_port = free_port(), free_port()
    wyoming = {"enabled": True, "uri": f"tcp://127.0.0.1:{proxy_port}", "stt_uri": f"tcp://127.0.0.1:{stt_port}"}
    with Broker() as broker:
        hub = Hub(broker.port)
        daemon = DaemonProcess(tmp_path, broker.port, int8_model, tmp_path / "state", "wyo1", extra={"wyoming": wyoming})
        try:
            hub.subscribe(f"{daemon.base}/#")

            async def talk() -> str:
                stt = await StandInStt(port=stt_port).start()
                try:
                    async with AsyncTcpClient("127.0.0.1", proxy_port) as client:
                        return await transcript_of(client, d / "p225_022.wav")
                finally:
                    await stt.stop()

            assert asyncio.run(talk()) == TEXT

            def decision(m: Any) -> bool:
                try:
                    body = json.loads(m.payload)
                except ValueError:
                    return False
                return isinstance(body, dict) and body.get("speaker") == "alice" and "wyoming" in (
                    body.get("source"), body.get("first_file")
                )

            body = json.loads(hub.wait(lambda m: m.topic == f"{daemon.base}/event" and decision(m), 30).payload)
            assert body["same_speaker"] is True and body["request_id"] == "req-1"
            # the event carries the digest of the transcript the client got, never the text
            norm = " ".join(TEXT.split()).casefold().encode("utf-8")
            assert body["utterance"]["transcript_sha256"] == hashlib.sha256(norm).hexdigest()
            assert "Licht" not in json.dumps(body, ensure_ascii=False)
        finally:
            rc = daemon.stop()
            hub.close()
        assert rc == 0, daemon.log_path.read_text()


def test_standalone_command_prints_decisions(tmp_path: Path, int8_verifier: Any, int8_model: Path, speech_dir: Path) -> None:
    """`edgeverify wyoming` (no MQTT): proxies, tags, and prints each decision as a JSON line."""
    import select
    import subprocess

    from wyoming.client import AsyncTcpClient

    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    d = speech_dir / "dev" / "vctk-p226"
    ProfileStore(tmp_path / "state").enroll(
        "bob", [int8_verifier.embed(read_audio(d / f"p226_0{n}.wav")) for n in ("03", "08", "16")],
        model=int8_verifier.model,
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": str(int8_model), "state_dir": str(tmp_path / "state")}))
    proxy_port, stt_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeverify", "wyoming", "--config", str(cfg), "--uri", f"tcp://127.0.0.1:{proxy_port}",
         "--stt-uri", f"tcp://127.0.0.1:{stt_port}", "--tag", "{speaker}: {text}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        async def talk() -> str:
            stt = await StandInStt(port=stt_port).start()
            try:
                for _ in range(300):  # until it listens (model load)
                    try:
                        client = AsyncTcpClient("127.0.0.1", proxy_port)
                        await client.connect()
                        break
                    except OSError:
                        assert proc.poll() is None, proc.stderr.read().decode()
                        await asyncio.sleep(0.1)
                async with client:
                    return await transcript_of(client, d / "p226_022.wav")
            finally:
                await stt.stop()

        assert asyncio.run(talk()) == f"bob: {TEXT}"
        assert select.select([proc.stdout], [], [], 30)[0], "no decision printed"
        body = json.loads(proc.stdout.readline())
        assert body["speaker"] == "bob" and body["event"] == "identified" and body["request_id"] == "req-1"
    finally:
        proc.terminate()
        proc.wait(10)
