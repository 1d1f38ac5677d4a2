"""numpy's BLAS on one thread, so that onnxruntime's threads get the cores.

The log-mel features do one small matrix product per clip. numpy's bundled OpenBLAS runs it on every core
and its worker threads then busy-wait for more work; on a 2-core machine that starved onnxruntime's second
thread: a 3 s clip at 2 threads took 51 ms instead of 26 ms (1 thread: 40 ms). OPENBLAS_NUM_THREADS only
works before numpy is loaded, so this finds the loaded OpenBLAS and sets its thread count at run time.
"""

from __future__ import annotations

import ctypes
import logging
import re

log = logging.getLogger(__name__)

# What OpenBLAS builds name their setter: plain (Debian's libopenblas), numpy/scipy wheels' scipy-openblas (64-bit ints).
_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
_done = False


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            text = maps.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)\s*$", text, re.MULTILINE)))


def limit_blas_threads() -> int:
    """Set every loaded OpenBLAS to one thread (idempotent); returns how many libraries were set."""
    global _done
    if _done:
        return 0
    import numpy  # noqa: F401,PLC0415 -- loads numpy's BLAS, which is what is being set

    count = 0
    for path in loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter(1)
                count += 1
                break
    _done = True
    log.debug("numpy BLAS limited to one thread in %d librar%s", count, "y" if count == 1 else "ies")
    return count
