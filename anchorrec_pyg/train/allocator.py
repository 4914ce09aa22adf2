r"""Keeping freed memory in the process (``train.keep_freed_memory``).

A training step allocates and frees the same large tensors every time (projections of the
view inputs, their gradients, the propagation buffers). glibc's ``malloc`` serves an
allocation above its *mmap threshold* (at most 32 MiB by default) with a fresh ``mmap`` and
gives it back to the kernel on ``free``, so the next step's allocation of the same size
page-faults every 4 KiB page in again, and the kernel zeroes each one: work proportional to
the bytes a step allocates, paid again at every step, on top of the step's own arithmetic.
Raising the mmap and trim thresholds to their largest value keeps freed blocks in the heap for
reuse. Nothing computed changes (the same operations on the same values; only where the
bytes live); the process's resident memory no longer shrinks after a step's peak.

Measured with ``benchmarks/scale.py`` (docs/scale.md, "1x-16x Baby, and what page faults
cost"): AnchorRec, sampled mode, row-sparse updates, B = 2048, one CPU thread, 16x Baby:
173-207k minor page faults per step without, 11-19k with. The step time, side by side, did not
change consistently on that machine (1.954 vs 1.960 s, 2.783 vs 2.046 s), so the switch
(``train.keep_freed_memory``) is off by default.
"""
from __future__ import annotations

import ctypes
import platform

__all__ = ['is_glibc', 'keep_freed_memory']

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest value ``mallopt`` takes (a C ``int``): blocks up to 2 GiB come from the heap
#: and freed memory is not trimmed back to the kernel below that much.
KEEP_BYTES = 2**31 - 1


def is_glibc() -> bool:
    """Whether this process runs on Linux with glibc, whose ``malloc`` :func:`keep_freed_memory`
    sets."""
    return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def keep_freed_memory() -> bool:
    r"""Sets glibc's ``malloc`` to keep freed memory in the process for reuse: its mmap and
    trim thresholds to :data:`KEEP_BYTES` (``mallopt``). Process-wide, from now on.

    Returns ``True`` when both settings took, ``False`` where the C library is not glibc
    (macOS, Windows, musl), which is then left as it is.
    """
    if not is_glibc():
        return False
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
