"""Decode bombs and normal clips: peak memory and time of read_audio per request (opt-in report).

    .venv/bin/python tests/audio_memory_check.py [--quick]

Builds each file in a temp dir, then decodes it in a fresh Python process (so one case's
high-water mark cannot hide another's) and prints, per case: the result (decoded seconds or the
one-line refusal), the process's peak RSS (compare with the baseline row: imports and a tiny
decode only), tracemalloc's peak of Python/numpy allocations during the decode (the input bytes
included), and wall time. The builders are also used by tests/test_audio.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

RATE = 16000


def encode(x: np.ndarray, rate: int, format: str, subtype: str) -> bytes:
    b = io.BytesIO()
    sf.write(b, x, rate, format=format, subtype=subtype)
    return b.getvalue()


def zero_flac_total(data: bytes) -> bytes:
    """A FLAC as a streaming encoder writes it: STREAMINFO's total sample count 0 (length unknown)."""
    b = bytearray(data)
    b[8 + 13] &= 0xF0
    b[8 + 14 : 8 + 18] = bytes(4)
    return bytes(b)


def silent_flac(channels: int, rate: int, seconds: float) -> bytes:
    """Low-entropy FLAC: 8 ch 192 kHz 59 s of silence is ~92 KB that decodes to 362 MB of float32."""
    return encode(np.zeros((int(rate * seconds), channels), np.float32), rate, "FLAC", "PCM_16")


def noise_ogg(channels: int, rate: int, seconds: float, subtype: str = "VORBIS") -> bytes:
    x = np.random.default_rng(0).standard_normal((int(rate * seconds), channels), dtype=np.float32)
    return encode(x * np.float32(1e-3), rate, "OGG", subtype)


def patch_ogg_rate(data: bytes, rate: int) -> bytes:
    """Rewrite the sample rate in an Ogg Vorbis identification header (libvorbis cannot encode odd rates)."""
    from flac_encoder import crc

    b = bytearray(data)
    assert b[:4] == b"OggS" and b[28:35] == b"\x01vorbis"
    nseg = b[26]
    b[27 + nseg + 12 : 27 + nseg + 16] = rate.to_bytes(4, "little")
    end = 27 + nseg + sum(b[27 : 27 + nseg])
    b[22:26] = bytes(4)
    b[22:26] = crc(bytes(b[:end]), 0x04C11DB7, 32).to_bytes(4, "little")
    return bytes(b)


def speech(seconds: float, rate: int = RATE) -> np.ndarray:
    """Real speech from the shared set when present (else a voiced synthetic signal), float32 mono."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "dev"
    parts, n = [], 0
    for f in sorted(root.glob("*/*.wav")):
        x, r = sf.read(str(f), dtype="float32")
        parts.append(x)
        n += x.shape[0]
        if n >= seconds * r:
            break
    if parts and r == RATE:
        x = np.concatenate(parts)[: int(seconds * RATE)]
    else:
        t = np.arange(int(seconds * RATE)) / RATE
        x = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    if rate != RATE:
        from edgeverify.core.audio import resample

        x = resample(x.astype(np.float64), RATE, rate).astype(np.float32)
    return x


def cases(quick: bool) -> dict[str, Callable[[], bytes]]:
    s10 = lambda r=RATE: speech(10.0, r)  # noqa: E731
    c: dict[str, Callable[[], bytes]] = {
        "speech 10 s 16 kHz WAV": lambda: encode(s10(), RATE, "WAV", "PCM_16"),
        "speech 10 s 44.1 kHz stereo WAV": lambda: encode(np.stack([s10(44100)] * 2, 1), 44100, "WAV", "PCM_16"),
        "speech 60 s 48 kHz stereo FLAC": lambda: encode(np.stack([speech(60.0, 48000)] * 2, 1), 48000, "FLAC", "PCM_16"),
        "speech 60 s 16 kHz 20-bit FLAC (own decoder)": lambda: _own_flac(speech(60.0), 20),
        "bomb: FLAC 8 ch 192 kHz 59 s silence": lambda: silent_flac(8, 192000, 59),
        "bomb: same, streaming header (length unknown)": lambda: zero_flac_total(silent_flac(8, 192000, 59)),
        "32 ch 48 kHz 1 s WAV (channel cap)": lambda: encode(np.zeros((48000, 32), np.float32), 48000, "WAV", "PCM_16"),
        "odd rate: FLAC 191,999 Hz 59 s silence (own decoder)": lambda: _silent_odd_flac(),
        "odd rate: Vorbis 191,999 Hz 5 s": lambda: patch_ogg_rate(noise_ogg(1, 192000, 5.0), 191999),
        "odd rate: WAV 191,999 Hz 10 s speech": lambda: encode(s10(191999), 191999, "WAV", "PCM_16"),
        "bomb: Vorbis 32 ch 192 kHz 0.5 s": lambda: noise_ogg(32, 192000, 0.5),
        "Vorbis 8 ch 192 kHz 2 s": lambda: noise_ogg(8, 192000, 2.0),
        "Opus 48 kHz stereo 10 s": lambda: noise_ogg(2, 48000, 10.0, "OPUS"),
    }
    if not quick:
        c["Vorbis 8 ch 192 kHz 10 s (just under the budget)"] = lambda: noise_ogg(8, 192000, 10.0)
    return c


def _silent_odd_flac() -> bytes:
    from flac_encoder import encode_flac

    return encode_flac(np.zeros((191999 * 59, 1), np.int64), 191999, 16)


def _own_flac(x: np.ndarray, bps: int) -> bytes:
    from flac_encoder import encode_flac

    q = np.round(x.astype(np.float64) * (1 << (bps - 1))).astype(np.int64).clip(-(1 << (bps - 1)), (1 << (bps - 1)) - 1)
    return encode_flac(q[:, None], RATE, bps)


_CHILD = r"""
import json, sys, time, tracemalloc, io
import numpy as np, soundfile as sf
from edgeverify.core.audio import read_audio
from edgeverify.errors import AudioError
b = io.BytesIO(); sf.write(b, np.zeros(1600, np.float32), 8000, format="FLAC"); read_audio(b.getvalue())  # warm up
path = sys.argv[1]
def run():
    try:
        a = read_audio(path)
        return f"decoded {a.duration_s:.2f} s ({a.source_rate} Hz x{a.source_channels})"
    except AudioError as e:
        return "refused: " + str(e).split(": ", 1)[1]
def hwm():  # VmHWM: this process's peak RSS (ru_maxrss would carry over the parent's across fork+exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
t = time.perf_counter(); result = run() if path != "-" else "baseline: imports + one tiny decode"; dt = time.perf_counter() - t
rss = hwm()
tracemalloc.start(); path != "-" and run(); tm = tracemalloc.get_traced_memory()[1]
print(json.dumps({"result": result, "peak_rss_mib": rss / 1024, "tracemalloc_peak_mib": tm / 2**20, "seconds": dt}))
"""


def measure(path: Path) -> dict:
    """Decode path in a fresh process: peak RSS (MiB, whole process), tracemalloc peak of the decode, time."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=600)
    if out.returncode:
        return {"result": f"child failed rc={out.returncode}: {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    quick = "--quick" in argv
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':48} {'file':>9} {'peak RSS':>9} {'tracemalloc':>11} {'time s':>7}  result")
        print(f"{'(process baseline)':48} {'':>9} {measure(Path('-'))['peak_rss_mib']:>9.1f}")
        for name, build in cases(quick).items():
            path = Path(tmp) / "clip"
            try:
                data = build()
            except Exception as exc:  # an encoder that cannot write this case (e.g. libvorbis at odd rates)
                print(f"{name:48} not built: {exc}")
                continue
            path.write_bytes(data)
            m = measure(path)
            print(
                f"{name:48} {len(data):>9} {m.get('peak_rss_mib', float('nan')):>9.1f} "
                f"{m.get('tracemalloc_peak_mib', float('nan')):>11.1f} {m.get('seconds', float('nan')):>7.2f}  {m['result']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
