"""Speaker embeddings from 16 kHz audio: the model's own numpy front end + one onnxruntime session made once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
import os
from typing import Dict, Union

import numpy as np

from ..errors import ModelError
from .features import front_end
from .blas import limit_blas_threads
from .memory import tune_malloc

log = logging.getLogger(__name__)


AUTO_THREADS_MAX = 4


def usable_cpus() -> int:
    """CPUs this process may run on (honours systemd CPUAffinity= and taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_threads(threads: Union[int, str]) -> int:
    """onnxruntime intra-op threads for a setting: a count, or "auto" = half the CPUs this process may run
    on, 1 to 4. Half: the other cores stay with capture, MQTT and the rest of the home box; at most 4:
    ECAPA's per-op work at a few seconds of audio does not spread further (2 threads gave 1.4x on a 3 s
    clip and 1.6x on 10 s, on an otherwise idle x86 core pair)."""
    if threads == "auto":
        return max(1, min(AUTO_THREADS_MAX, usable_cpus() // 2))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ModelError(f"threads must be a positive integer or 'auto', not {threads!r}")
    return threads


def make_session(path: Union[str, Path], threads: Union[int, str] = 1):
    """An onnxruntime CPU session with explicit threading.

    With more than one thread the pool's workers spin between the graph's ~400 small ops instead of
    sleeping and waking for each (3 s clip at 2 threads: 23.6 instead of 26.6 ms); onnxruntime stops the
    spinning when a run ends (~1 % of a core idle), so it costs only during a request. One thread has no
    pool and spins nothing; more threads than usable CPUs do not spin either (a spinning worker would hold
    the core another one needs: 4 threads on 2 cores took 69 ms per 3 s clip).

    Memory: no CPU arena. With the arena, a 10 s clip peaked ~33 MB higher (the arena rounds its chunks
    up and keeps what it has grown; shrinking after each run only returned part of it). Without it every
    activation is malloc'd and freed as the plan says, and with glibc's mmap threshold fixed
    (memory.tune_malloc) each large one is returned to the OS on free. Same kernels, same embeddings.
    """
    import onnxruntime as ort

    tune_malloc()
    limit_blas_threads()  # numpy's spinning BLAS threads halved the speed of onnxruntime's (core/blas.py)
    threads = resolve_threads(threads)
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = 1 < threads <= usable_cpus()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelError(f"cannot load model {path}: {exc}") from exc


class Embedder:
    """Turns speech samples (float32, 16 kHz, mono) into an L2-normalised 192-dim embedding."""

    def __init__(self, path: Union[str, Path], threads: Union[int, str] = 1) -> None:
        self.path = Path(path)
        self.threads = resolve_threads(threads)
        self.session = make_session(self.path, self.threads)
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.sample_rate = int(self.metadata.get("sample_rate", 16000))
        if self.sample_rate != 16000:
            raise ModelError(f"{path}: model expects {self.sample_rate} Hz input; only 16 kHz models are supported")
        self._input = self.session.get_inputs()[0].name
        self.features = front_end(self.metadata)  # each model has the front end it was trained with

    @property
    def default_threshold(self) -> float:
        return float(self.metadata["default_threshold"]) if "default_threshold" in self.metadata else float("nan")

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        """Raw (unnormalised) embedding of (frames, 80) features from ``self.features``."""
        out = self.session.run(None, {self._input: features[None].astype(np.float32, copy=False)})[0]
        return out[0]

    def embed(self, samples: np.ndarray) -> np.ndarray:
        vector = self.embed_features(self.features(samples)).astype(np.float32)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ModelError("model produced an invalid embedding (zero or non-finite)")
        return vector / norm

    def describe(self) -> str:
        return json.dumps({k: self.metadata.get(k) for k in ("model", "variant", "source_sha256", "default_threshold")})
