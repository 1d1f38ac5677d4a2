"""numpy's OpenBLAS is held to one thread once a model session exists (core/blas.py).

Its worker threads busy-wait after each product; on 2 cores they starved onnxruntime's second thread
(3 s clip at 2 threads: 51 ms instead of 26). The check runs in a fresh process where numpy is imported
first, as in any program that uses the core as a library, so OPENBLAS_NUM_THREADS could not help there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import ctypes, json, sys
import numpy as np
from edgeverify.core.blas import loaded_openblas
from edgeverify.core.embedder import Embedder

def threads():
    out = []
    for path in loaded_openblas():
        lib = ctypes.CDLL(path)
        for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
            if hasattr(lib, name):
                out.append(getattr(lib, name)())
                break
    return out

before = threads()
embedder = Embedder(sys.argv[1], 2)
embedder.embed(np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1)
print(json.dumps({"libs": loaded_openblas(), "before": before, "after": threads()}))
"""


def test_numpy_blas_runs_on_one_thread_once_a_session_exists(int8_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(int8_model)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["libs"]:
        pytest.skip("numpy is not linked against OpenBLAS here")
    assert len(result["after"]) == len(result["libs"]), result  # every loaded OpenBLAS has a known setter
    assert result["after"] == [1] * len(result["libs"]), result
