"""The companion's inbox requests under the broker ACL of docs/security.md (verbatim), against a real daemon.

No Home Assistant here (HA's MQTT client publishes what custom_components/edgeverify/inbox.py builds, and
reads what it parses: both are used by path): Home Assistant's broker user sends `inbox_list` the way the
companion does -- no response topic (HA's MQTT client cannot set one), a JSON `transaction` -- and gets
the answer, with the transcript, on the device's admin/response; another user, subscribed to the device's
events and its admin answers, gets the events and never the words, and cannot list the inbox itself. test_satellite.py is the
same path inside a real HA.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from broker import MOSQUITTO, Broker, Hub, free_port  # noqa: E402

_spec = importlib.util.spec_from_file_location("edgeverify_ha_inbox_acl",
                                               TESTS.parent / "custom_components" / "edgeverify" / "inbox.py")
assert _spec is not None and _spec.loader is not None
inbox = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = inbox
_spec.loader.exec_module(inbox)

if MOSQUITTO is None:
    pytest.skip("mosquitto not installed", allow_module_level=True)


def test_home_assistants_user_lists_the_inbox_and_nobody_else_reads_it(
        tmp_path: Path, int8_verifier: Any, int8_model: Path, speech_dir: Path) -> None:
    pytest.importorskip("wyoming")
    from daemon_process import DaemonProcess
    from wyoming.client import AsyncTcpClient
    from wyoming_helpers import pcm16, read_until, stream
    from wyoming_stt import TEXT, StandInStt

    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    d = speech_dir / "dev" / "vctk-p225"
    ProfileStore(tmp_path / "state").enroll(
        "alice", [int8_verifier.embed(read_audio(d / f"p225_0{n}.wav")) for n in ("08", "11", "16")], model=int8_verifier.model)
    docs = (TESTS.parent / "docs" / "security.md").read_text()
    (tmp_path / "acl").write_text(docs.split("```\n# /etc/mosquitto/acl\n", 1)[1].split("```", 1)[0])
    pw = tmp_path / "passwd"
    for user in ("edgeverify-kitchen-pi", "homeassistant", "alice-phone"):
        subprocess.run(["mosquitto_passwd", "-b", *([] if pw.exists() else ["-c"]), str(pw), user, user],
                       check=True, capture_output=True)
    proxy_port, stt_port = free_port(), free_port()
    extra = {"wyoming": {"enabled": True, "uri": f"tcp://127.0.0.1:{proxy_port}", "stt_uri": f"tcp://127.0.0.1:{stt_port}"},
             "admin": {"enabled": True}, "inbox": {"enabled": True}}
    stranger = sorted((speech_dir / "dev" / "ls-1688").glob("*.wav"))[0]

    async def talk() -> None:
        stt = await StandInStt(port=stt_port).start()
        try:
            async with AsyncTcpClient("127.0.0.1", proxy_port) as client:
                await stream(client, pcm16(stranger))
                assert (await read_until(client, ("transcript", "error")))[-1].type == "transcript"
        finally:
            await stt.stop()

    b = Broker()
    conf = b.dir / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                    + f"password_file {pw}\nacl_file {tmp_path / 'acl'}\n")
    words = " ".join(TEXT.split())
    with b:
        daemon = DaemonProcess(tmp_path, b.port, int8_model, tmp_path / "state", "kitchen-pi", extra=extra,
                               topic_prefix="edgeverify", username="edgeverify-kitchen-pi", password="edgeverify-kitchen-pi")
        ha, phone = Hub(b.port, username="homeassistant"), Hub(b.port, username="alice-phone")
        base = "edgeverify/kitchen-pi"
        seen: list[Any] = []
        try:
            ha.subscribe(f"{base}/admin/response")
            for topic in (f"{base}/event", f"{base}/admin/response", "edgeverify/+/admin/#", "edgeverify/#"):
                phone.subscribe(topic)  # mosquitto refuses the ones it may not read (SUBACK failure) or filters them
            asyncio.run(asyncio.wait_for(talk(), 60))

            def ask(client: Hub, kind: str, timeout: float = 10, **fields: Any) -> dict[str, Any]:
                transaction = inbox.new_transaction()
                client.publish(f"{base}/admin/request", inbox.request(kind, transaction, **fields))
                msg = client.wait(lambda m: m.topic == f"{base}/admin/response"
                                  and inbox.answer_transaction(m.payload) == transaction, timeout)
                answer = inbox.parse_answer(msg.payload)
                assert answer is not None
                return answer.body

            deadline = time.monotonic() + 20
            entries: list[Any] = []
            while not entries and time.monotonic() < deadline:  # the decision is handed over after the transcript
                entries = inbox.parse_entries(ask(ha, "inbox_list"), base)[0]
            [entry] = entries
            assert entry.transcript == words and entry.source == "wyoming", entry
            time.sleep(0.5)
            while not phone.messages.empty():  # what the phone got so far (its wait below consumes its queue)
                seen.append(phone.messages.get())
            with pytest.raises(TimeoutError):  # the broker drops another user's admin request
                ask(phone, "inbox_list", timeout=1.5)
            assert ask(ha, "inbox_clear", id=entry.id)["cleared"] == 1
        finally:
            ha.close()
            while not phone.messages.empty():
                seen.append(phone.messages.get())
            phone.close()
            rc = daemon.stop()
    assert rc == 0, daemon.log_path.read_text()
    assert any(m.topic == f"{base}/event" for m in seen), [m.topic for m in seen]  # the phone did read what it may
    assert not [m.topic for m in seen if "/admin/" in m.topic or "Licht" in m.payload.decode("utf-8", "replace")]
