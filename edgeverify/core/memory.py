"""Process memory policy for glibc: large buffers go straight back to the OS.

onnxruntime (arena off, see embedder.make_session) allocates each activation with malloc. glibc's
mmap threshold starts at 128 KiB but rises to the size of every mmapped block that is freed (up to
32 MiB), so after the first inference the multi-megabyte activations came from the heap, which keeps
their pages: a 10 s request left ~30 MB more than the live set at its peak and after it. Setting the
threshold once (mallopt) turns that adaptation off: every block over it is its own mapping, returned
on free(). Elsewhere (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed
_M_MMAP_THRESHOLD = -3  # malloc.h
_libc: Any = None
_tuned = False


def _glibc() -> Optional[Any]:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)  # the symbols already loaded, libc's among them
            _ = libc.gnu_get_libc_version  # only glibc has it (and mallopt/malloc_trim with these meanings)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold (idempotent). Call before the model is loaded. True when applied."""
    global _tuned
    if not _tuned:
        libc = _glibc()
        _tuned = bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
        log.debug("malloc mmap threshold %s", f"fixed at {MMAP_THRESHOLD} bytes" if _tuned else "left as it is")
    return _tuned


def release_memory() -> None:
    """Return the free pages of every malloc arena to the OS (malloc_trim(0)); no-op without glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
