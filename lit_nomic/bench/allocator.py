"""Opt-in glibc malloc tuning for CPU runs, and the evidence for it in the MoE benchmark.

glibc serves blocks above its mmap threshold (dynamic, capped at 32 MiB on 64-bit) with a fresh
``mmap`` and returns them with ``munmap`` on free, so every such tensor costs one page fault per
4 KiB page, each step, plus the kernel zeroing the page: allocating and filling a 75 MiB tensor
took 79 ms and 19,201 page faults here, 15 ms and ~1,500 faults once tuned. An MoE layer hits this
more often than the dense FFN it is compared with: expert-weight gradients (``[E, D, F]``, 75 MiB
per matrix at 8 x 768 x 3072) and the stacked expert activations (``[T*k, F]``, 100 MiB at 8,192
tokens, top-2, F=1,536) are single tensors above the cap, where the per-expert loop's pieces stay
below it. In the MoE sweep the tuning cut kernel time from 34 s to 12 s, and turned the per-expert
loop's lead at 8,192 tokens (loop/grouped 0.92x) into 1.02x.

Raising the mmap threshold and the trim threshold keeps freed blocks in the heap for reuse, the
same effect as preloading jemalloc/tcmalloc (Intel's PyTorch CPU tuning guide advice), without a
preload. It changes the whole process, so the benchmarks make it opt-in (``--tune-malloc``, recorded with the
results) and the ``lit-nomic`` commands with ``LIT_NOMIC_TUNE_MALLOC=1``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["tune_glibc_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_glibc_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Keep large freed blocks in the heap (glibc ``mallopt``); False where glibc is not the allocator.

    The 32 MiB cap applies to glibc's *dynamic* threshold only; an explicit ``mallopt`` value is
    accepted (glibc 2.36 here) and disables the dynamic adjustment.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
