"""An Assist pipeline run from speech-to-text over HA's websocket API, as HA's Assist dialog streams the
microphone: `assist_pipeline/run` with start_stage stt, then the audio as binary messages (the run's
binary handler id as the first byte, 16 kHz 16-bit mono PCM after it), an empty one to end. Run with the
HA venv's python (it has aiohttp): `ws_audio.py <http url> <token> <pipeline id> <pcm file>` prints the
run's events up to run-end as JSON."""

import asyncio
import json
import sys

import aiohttp

CHUNK_BYTES = 2048


async def run(url: str, token: str, pipeline: str, pcm: bytes) -> list:
    async with aiohttp.ClientSession() as session, session.ws_connect(url.rstrip("/") + "/api/websocket") as ws:
        assert (await ws.receive_json())["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": token})
        if (ok := await ws.receive_json())["type"] != "auth_ok":
            raise SystemExit(f"websocket auth failed: {ok}")
        await ws.send_json({"id": 1, "type": "assist_pipeline/run", "start_stage": "stt", "end_stage": "intent",
                            "input": {"sample_rate": 16000}, "pipeline": pipeline})
        events: list = []
        while True:
            msg = await ws.receive_json()
            if msg.get("id") != 1:
                continue
            if msg["type"] == "result":
                if not msg["success"]:
                    raise SystemExit(f"assist_pipeline/run failed: {msg['error']}")
                continue
            events.append(msg["event"])
            kind = msg["event"]["type"]
            if kind == "run-start":
                handler = bytes([msg["event"]["data"]["runner_data"]["stt_binary_handler_id"]])
                for i in range(0, len(pcm), CHUNK_BYTES):
                    await ws.send_bytes(handler + pcm[i:i + CHUNK_BYTES])
                await ws.send_bytes(handler)  # end of audio
            elif kind == "run-end":
                return events


if __name__ == "__main__":
    with open(sys.argv[4], "rb") as f:
        audio = f.read()
    print(json.dumps(asyncio.run(asyncio.wait_for(run(sys.argv[1], sys.argv[2], sys.argv[3], audio), 60))))
