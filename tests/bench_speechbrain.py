"""Time SpeechBrain's own torch pipeline (encode_batch's path) for `edgeverify bench --speechbrain-python`.

Runs in a separate benchmark venv that has torch and speechbrain (never edgeverify's runtime):

    python3.11 -m venv /work/sbvenv
    /work/sbvenv/bin/pip install torch==2.13.0
    /work/sbvenv/bin/pip install --no-deps speechbrain==1.1.2
    /work/sbvenv/bin/pip install hyperpyyaml joblib packaging scipy numpy tqdm sentencepiece huggingface_hub

torchaudio is only imported by SpeechBrain for file I/O and must match torch's build exactly; when it is
missing or does not load, a stub stands in (the timed path, Fbank -> sentence mean norm -> ECAPA_TDNN, is
pure torch). Prints one JSON object: median milliseconds per clip length and thread count, and the raw
embedding of the first clip (edgeverify bench compares it with its fp32 model: proof the real checkpoint ran).

    python bench_speechbrain.py CHECKPOINT [--clips 3,10] [--threads 1,2] [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types


def _torchaudio_stub() -> None:
    try:
        import torchaudio  # noqa: F401
    except Exception:  # ImportError, or OSError when its C++ extension does not match torch
        for name in [m for m in sys.modules if m.startswith("torchaudio")]:
            del sys.modules[name]
        stub = types.ModuleType("torchaudio")
        stub.__version__ = "0.0+stub"
        stub.list_audio_backends = lambda: ["soundfile"]
        sys.modules["torchaudio"] = stub


def _signal(seconds: float):
    import numpy as np

    rng = np.random.default_rng(7)  # same test signal as edgeverify.tools.bench
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--clips", default="3,10")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    _torchaudio_stub()
    import torch
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from speechbrain.processing.features import InputNormalization

    model = ECAPA_TDNN(
        80, channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1],
        attention_channels=128, lin_neurons=192,
    )
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    model.eval()
    fbank = Fbank(n_mels=80)
    norm = InputNormalization(norm_type="sentence", std_norm=False)

    def encode(wavs):  # EncoderClassifier.encode_batch with wav_lens = 1
        lens = torch.ones(wavs.shape[0])
        feats = norm(fbank(wavs), lens)
        return model(feats, lens)

    rows, embedding = [], None
    started = time.perf_counter()
    with torch.inference_mode():
        for threads in [int(t) for t in args.threads.split(",") if t]:
            torch.set_num_threads(threads)
            for seconds in [float(c) for c in args.clips.split(",") if c]:
                wavs = torch.from_numpy(_signal(seconds))[None]
                first = encode(wavs)
                if embedding is None:
                    embedding = [round(float(v), 6) for v in first.flatten()]
                times, cpu = [], []
                for _ in range(args.runs if seconds <= 3 else max(5, args.runs // 3)):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    encode(wavs)
                    times.append(1000.0 * (time.perf_counter() - t0))
                    cpu.append(1000.0 * (time.thread_time() - c0))
                rows.append({"clip_s": seconds, "threads": threads, "median_ms": round(statistics.median(times), 2),
                             "cpu_median_ms": round(statistics.median(cpu), 2), "runs": len(times)})
    print(json.dumps({"torch": torch.__version__, "speechbrain": __import__("speechbrain").__version__,
                      "rows": rows, "embedding_first_clip": embedding, "wall_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
