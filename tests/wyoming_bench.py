"""Opt-in benchmark of the Wyoming proxy (not collected by pytest): added latency and memory.

    .venv/bin/python tests/wyoming_bench.py [--repeat 5] [--stt-delay 0 0.5] [--json]

This process runs the proxy the way the daemon does (ProxyThread: its own asyncio thread, the model
shared); a child process runs a stand-in STT and a client (the wyoming library's AsyncTcpClient) that
streams a real recording cut to 3 / 6 / 10 s, once straight to the STT and once through the proxy.
The STT answers `stt-delay` seconds after audio-stop (0 = an instant STT, the worst case for us:
nothing to overlap the embedding with). Per clip length, medians over --repeat runs:
  embed_ms  identification at audio-stop (VAD + features + model), running while the STT works
  added_ms  client-side audio-stop -> transcript, proxied minus direct (what the user waits extra)
Memory: this process's RSS with the model loaded and warm (decisions already run through the same
code path), then after importing the proxy and after serving every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPEECH = Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"))
LENGTHS = (3.0, 6.0, 10.0)


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def clips() -> dict[float, bytes]:
    x, rate = sf.read(str(SPEECH / "dev" / "vctk-p225" / "p225_023.wav"), dtype="int16")  # 9.4 s
    x = np.concatenate([x, x])
    return {s: x[: int(s * rate)].tobytes() for s in LENGTHS}


# -- child: STT + client ---------------------------------------------------------------------------------

async def one(port: int, pcm: bytes, delay: float) -> float:
    """Seconds from sending audio-stop to receiving the transcript."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(name=f"delay:{delay}", language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(pcm), 2048):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 2048]).event())
        await asyncio.sleep(0.05)  # let the proxy catch up with the stream, as it does in real time
        sent = time.perf_counter()
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            assert event is not None and event.type != "error", event
            if event.type == "transcript":
                return time.perf_counter() - sent


def client_process(stt_port: int, proxy_port: int, delays: list, repeat: int, out: "multiprocessing.Queue") -> None:
    from wyoming_stt import StandInStt

    async def main() -> list:
        stt = await StandInStt(port=stt_port, record=False).start()
        rows = []
        for delay in delays:
            for seconds, pcm in clips().items():
                direct, proxied = [], []
                for _ in range(repeat):
                    direct.append(await one(stt_port, pcm, delay))
                    proxied.append(await one(proxy_port, pcm, delay))
                rows.append({"stt_delay_s": delay, "audio_s": seconds, "direct_ms": 1000 * statistics.median(direct),
                             "proxied_ms": 1000 * statistics.median(proxied)})
        await stt.stop()
        return rows

    out.put(asyncio.run(main()))


# -- parent: the proxy, as in the daemon -------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stt-delay", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--model", default="int8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from broker import free_port

    from edgeverify.core.audio import read_audio
    from edgeverify.app.decisions import DecisionService
    from edgeverify.store.profiles import ProfileStore
    from edgeverify.core.verifier import Verifier

    verifier = Verifier.load(args.model)
    verifier.warm_up()
    store = ProfileStore(tempfile.mkdtemp(prefix="wyoming-bench-"))
    for name, spk in (("alice", "vctk-p225"), ("bob", "vctk-p226")):
        store.enroll(name, [verifier.embed(read_audio(p)) for p in sorted((SPEECH / "dev" / spk).glob("*.wav"))[:3]],
                     model=verifier.model)
    handler = DecisionService(verifier, store, max_audio_seconds=60)
    for pcm in clips().values():  # the model's working memory at full size: the model's, not the proxy's
        handler.decide_samples(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768, "warm-up")
    before, _ = rss_mb()

    from edgeverify.store.config import WyomingConfig
    from edgeverify.wyoming_stt.proxy import ProxyThread, SpeakerIdProxy

    imported, _ = rss_mb()
    stt_port = free_port()
    bodies: list = []
    proxy = SpeakerIdProxy(handler, WyomingConfig(stt_uri=f"tcp://127.0.0.1:{stt_port}"), lambda b, s: bodies.append(b))
    thread = ProxyThread(proxy, "tcp://127.0.0.1:0")
    thread.start()
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=client_process, args=(stt_port, proxy.port, args.stt_delay, args.repeat, out)
    )
    child.start()
    rows = out.get(timeout=600)
    child.join()
    after, peak = rss_mb()
    thread.stop()
    embeds = [b["elapsed_ms"] for b in bodies]
    for i, row in enumerate(rows):  # decisions arrive in the client's order, `repeat` per row
        row["embed_ms"] = statistics.median(embeds[i * args.repeat : (i + 1) * args.repeat])
        row["added_ms"] = row["proxied_ms"] - row["direct_ms"]
        for k in ("direct_ms", "proxied_ms", "embed_ms", "added_ms"):
            row[k] = round(row[k], 1)
    memory = {"rss_model_loaded_mb": round(before, 1), "import_mb": round(imported - before, 1),
              "serving_mb": round(after - imported, 1), "proxy_extra_mb": round(after - before, 1),
              "peak_rss_mb": round(peak, 1)}
    if args.json:
        print(json.dumps({"rows": rows, "memory": memory, "cpus": os.cpu_count()}))
        return 0
    print(f"{'stt delay':>9} {'audio':>6} {'embed':>8} {'direct':>9} {'proxied':>9} {'added':>8}")
    for r in rows:
        print(f"{r['stt_delay_s']:>8.1f}s {r['audio_s']:>5.0f}s {r['embed_ms']:>6.0f}ms {r['direct_ms']:>7.0f}ms "
              f"{r['proxied_ms']:>7.0f}ms {r['added_ms']:>6.0f}ms")
    print(f"RSS: {before:.0f} MB with the model loaded and warm; proxy +{after - before:.1f} MB "
          f"(import {imported - before:.1f} MB, serving {after - imported:.1f} MB); peak {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
