"""Wyoming adapter: a speech-to-text proxy for Home Assistant Assist that also says who spoke.

Home Assistant (or any Wyoming client) connects here as to a speech-to-text service. Each connection
gets its own connection to the real STT service (`stt_uri`); transcribe / audio-start / audio-chunk /
audio-stop go through unchanged, and the STT's answer comes back unchanged (byte-identical text)
unless tagging or rejection of unknown speakers is configured. Meanwhile every audio chunk is turned
into 16 kHz mono float as it arrives (audio_stream.StreamConverter, bounded); at audio-stop the
embedding runs in a worker thread *while* the STT is still transcribing, so the transcript is held
back at most for the rest of the embedding time. The decision (same shape as an MQTT identify
response, plus `utterance`: the digest of the returned transcript) goes to `on_decision(body, source)`
once the client has its answer.

Also answers the identity events proposed in OHF-Voice/wyoming PR #50, to a client that asks with
`identify` + audio: `identified` {name} (the score only with wyoming.identify_confidence) or
`not-identified`. `enroll` / `delete` are refused (enrollment is an admin action).

Every client and byte is untrusted (docs/security-trust-model.md): clients are admitted by address on
accept (admission.py), events are read with bounded lengths and checked types (wire.py), what one
connection may queue, stream and hold is bounded (session.py, work.py).

Parts: wire.py (the bounded reader), admission.py (allow-list, busy), server.py (the server and the
decisions), session.py (one connection), work.py (the embedding queue), runner.py (thread / standalone).
"""

__all__ = ["MAX_LINE_BYTES", "SOURCE", "ProxyThread", "SpeakerIdProxy", "error_event", "open_uri",
           "read_event", "serve"]  # the names the daemon, the CLI and the tests import

from .runner import ProxyThread, serve
from .server import SOURCE, SpeakerIdProxy
from .wire import MAX_LINE_BYTES, error_event, open_uri, read_event
