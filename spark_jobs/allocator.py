"""Keep freed memory in the process instead of handing it back to the kernel after every batch.

glibc's ``malloc`` serves large blocks (above a threshold that starts at 128 KiB and adapts up
to 32 MiB) with ``mmap`` and gives them back with ``munmap`` when they are freed, and it trims
the top of its heap once more than twice that threshold is free there. A model's activations
are exactly such blocks, allocated and freed on every batch, so every batch faults its
activations in again, one zeroed 4 KiB page at a time. Measured on this project's models, one
single-threaded process on the CPU (2-core AMD EPYC, batches of 32): the small CNN at 64 px took
169-171 page faults per image and 1.25-1.28 CPU ms of inference, 0 faults and 0.87-0.89 ms with
the settings below; ResNet-18 at 160 px 1,535 faults and 23.2-23.7 ms, 384-395 faults and
20.2 ms (its blocks above 32 MiB are still mapped each time: glibc allows no higher threshold).

So a process that scores batches fixes the threshold at its maximum (which also stops the
adapting) and lets up to :data:`TRIM_THRESHOLD` stay free at the top of the heap. The memory is
kept for the next batch, not leaked: a Python worker's resident size stays at its peak (what
its first batches touched) instead of dropping between batches.

Set ``RESCORE_KEEP_FREED_MEMORY=0`` in the executors' environment (``spark.executorEnv.``) to
leave the allocator as it is. Other C libraries (musl, macOS) have no such settings: nothing
is changed there.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the largest ``mmap`` threshold glibc accepts on 64-bit (``HEAP_MAX_SIZE / 2``)
MMAP_THRESHOLD = 32 * 2**20
#: free memory kept at the top of the heap before any is given back
TRIM_THRESHOLD = 1 * 2**30
#: the environment variable that turns this off (``0``)
ENV_SWITCH = "RESCORE_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings above to this process once; True when they are in force.

    Safe to call from every predictor build and every decoding process: it does the work once.
    """
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not applied:
        log.info("this C library refused the malloc settings: freed memory goes back to the kernel as before")
    return applied
