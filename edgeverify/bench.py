"""Speed and memory figures: per-clip latency, real-time factor, load time, peak RSS, model size."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .audio import TARGET_RATE
from .embedder import Embedder
from .model_store import resolve_model

# SpeechBrain's torch fp32 pipeline per 3 s clip, measured on this machine class (issue #2), for the ratio.
TORCH_REFERENCE_MS = {1: 137.0, 2: 54.0}


@dataclass
class BenchRow:
    model: str
    clip_s: float
    threads: int
    median_ms: float
    p90_ms: float
    rtf: float
    runs: int
    speedup_vs_torch_3s: Optional[float] = None


def _test_signal(seconds: float) -> np.ndarray:
    """Speech-like input: features and network cost do not depend on content, only on length."""
    rng = np.random.default_rng(7)
    n = int(seconds * TARGET_RATE)
    t = np.arange(n) / TARGET_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def time_embedder(embedder: Embedder, seconds: float, runs: int) -> List[float]:
    samples = _test_signal(seconds)
    embedder.embed(samples)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed(samples)
        times.append(1000.0 * (time.perf_counter() - started))
    return times


def load_time_ms(path: Path, threads: int = 1, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        Embedder(path, threads)
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


def verify_peak_rss_mb(model: str) -> Optional[float]:
    """Peak RSS of a real `edgeverify verify` process on two 3 s clips (ru_maxrss of the child)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(2):
            path = Path(tmp) / f"clip{i}.wav"
            sf.write(path, _test_signal(3.0) * (1 + i), TARGET_RATE, subtype="PCM_16")
            clips.append(str(path))
        cmd = [sys.executable, "-m", "edgeverify", "verify", *clips, "--model", model, "--vad", "off", "--json"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return None
        return usage.ru_maxrss / 1024.0  # kB on Linux


def run_bench(
    models: Sequence[str] = ("int8", "fp32"),
    clips: Sequence[float] = (3.0, 10.0),
    threads: Sequence[int] = (1, 2),
    runs: int = 15,
    measure_rss: bool = True,
) -> Dict:
    rows: List[BenchRow] = []
    per_model: Dict[str, Dict] = {}
    for model in models:
        path = resolve_model(model)
        per_model[model] = {
            "path": str(path),
            "file_mb": round(path.stat().st_size / 1e6, 2),
            "load_ms": round(load_time_ms(path), 1),
        }
        for n_threads in threads:
            embedder = Embedder(path, n_threads)
            for seconds in clips:
                times = time_embedder(embedder, seconds, runs if seconds <= 3 else max(5, runs // 3))
                median = statistics.median(times)
                row = BenchRow(
                    model=model,
                    clip_s=seconds,
                    threads=n_threads,
                    median_ms=round(median, 2),
                    p90_ms=round(float(np.percentile(times, 90)), 2),
                    rtf=round(median / 1000.0 / seconds, 5),
                    runs=len(times),
                )
                if seconds == 3.0 and n_threads in TORCH_REFERENCE_MS:
                    row.speedup_vs_torch_3s = round(TORCH_REFERENCE_MS[n_threads] / median, 2)
                rows.append(row)
        if measure_rss:
            rss = verify_peak_rss_mb(model)
            per_model[model]["verify_peak_rss_mb"] = round(rss, 1) if rss is not None else None
    return {
        "rows": [asdict(r) for r in rows],
        "models": per_model,
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "torch_reference_ms_3s": TORCH_REFERENCE_MS,
        "cpu": _cpu_name(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
