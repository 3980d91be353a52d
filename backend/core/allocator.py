"""Keep freed memory in the process for reuse, so a training step does not page-fault its activations in.

PyTorch's CPU tensors come from glibc ``malloc``. A block above the mmap threshold (128 KiB at first;
glibc raises it towards 32 MiB as such blocks are freed) is mapped fresh from the kernel and unmapped when
freed, and free memory at the top of the heap is handed back once it passes a trim threshold. Training
and scoring allocate and free the same activations every step (``small`` at batch 256: 16 MiB tensors in
its first layer), so with the defaults the memory keeps going back to the kernel and coming back as fresh
pages, one minor page fault per 4 KiB (microseconds each in a VM).
Measured with ``benchmarks/bench_malloc.py`` (fresh processes, 2-core VM): MC-dropout scoring 12,900
faults per 512 images -> ~100, 1.53x the images/s; training ``small`` 1,800-3,300 faults per step ->
~400, 1.04x in fp32 (up to 1.5x in processes whose heap settled badly), bf16 unchanged. This is what the
jemalloc/tcmalloc advice for PyTorch on CPUs fixes; glibc's own knobs do it without preloading a library.

The settings: blocks up to 32 MiB (glibc's own ceiling for its adaptive mmap threshold) come from the
heap, and the heap keeps up to 1 GiB of free memory at its top instead of returning it. The cost: memory
a process frees stays in that process for reuse, so its resident size stays near its peak after a large
job (each process on its own: the server, every worker, every Ray actor). Only allocation placement
changes, never a value computed. ``mallopt`` is not thread-safe against concurrent frees; a Ray worker
applies it with Ray's threads running, where a racing free could at worst leave glibc's adaptive
thresholds in place (the faults come back, nothing breaks). ``REBALANCE_KEEP_FREED_MEMORY=0`` in a process's
environment keeps glibc's defaults there (a host where memory handed back matters more than speed); Ray
workers read it from the environment their node was started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
ENV_SWITCH = "REBALANCE_KEEP_FREED_MEMORY"  # "0", "false", "no" or "off": keep glibc's defaults
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30

_done: bool | None = None  # None: not tried yet; then whether the settings took


def supported() -> bool:
    """Whether this process's C library is glibc on Linux, the one these settings are for."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True where they are in effect (glibc), False elsewhere
    (macOS, musl, Windows: nothing is changed there) and where ``REBALANCE_KEEP_FREED_MEMORY`` turns them
    off. Safe to call any number of times."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not supported() or os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    except (OSError, AttributeError) as exc:  # no loadable C library or no mallopt in it: keep the defaults
        log.debug("malloc settings not applied: %s", exc)
        return False
    _done = ok
    return ok
