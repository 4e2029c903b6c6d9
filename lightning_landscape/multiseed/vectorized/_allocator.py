"""glibc's malloc told to keep large freed blocks: a big ensemble's step would page-fault fresh memory."""

from __future__ import annotations

import ctypes
import sys

_tuned = False


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep large freed blocks for reuse, once per process; ``True`` if in effect.

    A big ensemble's activations (``[K, B, width]``, tens of MB at K=300) exceed malloc's mmap threshold, so
    by default every step maps fresh pages from the OS, page-faults them in and unmaps them again: on a CPU
    that system time dominated the step (K=300 of (1,50,50,1), batch 1024: about 3x slower than with the
    blocks kept). Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB (what the environment
    variables ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` do at start-up) keeps them. The setting is
    process-wide: freed memory stays with the process instead of going back to the OS. No-op off glibc.

    Returns:
        Whether the setting is in effect in this process.
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    _tuned = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _tuned
