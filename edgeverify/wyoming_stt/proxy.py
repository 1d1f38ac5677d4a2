"""Wyoming adapter: a speech-to-text proxy for Home Assistant Assist that also says who spoke.

Home Assistant (or any Wyoming client) connects here as to a speech-to-text service. Each connection
gets its own connection to the real STT service (`stt_uri`); transcribe / audio-start / audio-chunk /
audio-stop go through unchanged, and the STT's answer comes back unchanged (byte-identical text)
unless tagging or rejection of unknown speakers is configured. Meanwhile every audio chunk is turned
into 16 kHz mono float as it arrives (audio_stream.StreamConverter, bounded); at audio-stop the
embedding runs in a worker thread *while* the STT is still transcribing, so the transcript is held
back at most for the rest of the embedding time. The decision (same shape as an MQTT identify
response) goes to `on_decision(body, source)`.

Also answers the identity events proposed in OHF-Voice/wyoming PR #50: `identify` + audio ->
`identified` {name, confidence} or `not-identified`. `enroll` / `delete` are refused (enrollment is
an admin action: `edgeverify enroll`, or the MQTT admin requests).

Everything read from either socket is untrusted: header lines, data and payload lengths are bounded
before anything is buffered, types are checked, and a bad event becomes a Wyoming `error` event.
"""

__all__ = ["MAX_LINE_BYTES", "SOURCE", "ProxyThread", "SpeakerIdProxy", "error_event", "open_uri",
           "read_event", "serve"]  # the names the daemon, the CLI and the tests import

from .runner import ProxyThread, serve
from .server import SOURCE, SpeakerIdProxy
from .wire import MAX_LINE_BYTES, error_event, open_uri, read_event
