"""Process-wide heap settings of the long-running commands (``serve``, ``worker``).

Each study decodes four large images in short-lived threads and frees them again. With
glibc's defaults every such thread may get its own malloc arena (up to 8 per core), and
after the first large buffer is freed the mmap threshold rises so that later images come
from those arenas, which keep the freed memory: ``serve`` grew from 430 MiB after one
full-field study to 980 MiB after 20 (benchmarks/serve_rss.py). Two arenas and a fixed
mmap threshold keep it flat (benchmarks/README.md).

The mmap threshold is 16 MiB and the trim threshold 16 MiB: the few-MiB buffers of a
study's decoding and preprocessing (a compressed frame, the 832 x 1024 working image and
its temporaries) are reused from the two arenas, whose tops keep up to 16 MiB free, and
only buffers of 16 MiB and more (a full-resolution decode) are mapped and returned when
freed. The first setting, a 1 MiB mmap threshold, also kept the RSS flat, but every one
of those buffers was then a fresh mapping whose pages the kernel faulted in and zeroed
again: ~110 ms of CPU per full-field study at 650 px (0.735 -> 0.623 s with these
settings, +30-40 MiB RSS; a 32 MiB trim threshold saved ~15 ms more for ~40 MiB more).

A ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set in
the environment wins. Not glibc (musl, macOS): nothing is changed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 16 << 20


def limit_heap_growth(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD,
                      trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Apply the settings above through glibc's ``mallopt``; True when they were applied.

    Call before the process starts its worker threads.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok = bool(mallopt(M_ARENA_MAX, arenas)) and ok
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and ok
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        ok = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and ok
    if not ok:
        log.debug("mallopt refused a heap setting")
    return ok


def freeze_startup_heap() -> int:
    """Collect what start-up left as garbage, then take every object alive now (the
    libraries, the loaded models, the warm-up's caches) out of the cyclic garbage
    collector's scans with :func:`gc.freeze`; returns how many objects that was.

    A Celery pool process holds ~350,000 such objects after its warm-up, and each full
    collection, which building a study's SR triggers about once a dozen studies, walks
    all of them again: ~10 ms of CPU a study, ~2 ms once they are frozen
    (benchmarks/README.md). Objects made later are collected as before. Call it once,
    when start-up is done and before the first study.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


__all__ = ["freeze_startup_heap", "limit_heap_growth"]
