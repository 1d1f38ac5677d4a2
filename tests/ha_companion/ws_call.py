"""One command on HA's websocket API (what HA's UI uses where REST has no endpoint); run with the HA venv's
python (it has aiohttp): `ws_call.py <http url> <token> '<command json>' [raw]` prints the result as JSON (for
`assist_pipeline/run`: the run's events, up to run-end); with `raw`, the whole result message, also a failed
one ({"success": false, "error": {"code", "message"}}: what HA's UI shows the user)."""

import asyncio
import json
import sys

import aiohttp


async def call(url: str, token: str, command: dict, raw: bool = False) -> object:
    async with aiohttp.ClientSession() as session, session.ws_connect(url.rstrip("/") + "/api/websocket") as ws:
        assert (await ws.receive_json())["type"] == "auth_required"
        await ws.send_json({"type": "auth", "access_token": token})
        ok = await ws.receive_json()
        if ok["type"] != "auth_ok":
            raise SystemExit(f"websocket auth failed: {ok}")
        await ws.send_json({"id": 1, **command})
        events: list = []
        while True:
            msg = await ws.receive_json()
            if msg.get("id") == 1 and msg.get("type") == "result":
                if raw:
                    return msg
                if not msg["success"]:
                    raise SystemExit(f"websocket command failed: {msg['error']}")
                if command["type"] != "assist_pipeline/run":
                    return msg["result"]
            elif msg.get("id") == 1 and msg.get("type") == "event":  # a pipeline run: its events up to run-end
                events.append(msg["event"])
                if msg["event"].get("type") == "run-end":
                    return events


if __name__ == "__main__":
    raw = sys.argv[4:5] == ["raw"]
    print(json.dumps(asyncio.run(asyncio.wait_for(call(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), raw), 30))))
