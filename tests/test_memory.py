"""Heap settings of serve / worker (mammo_density.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.services import REPO

PROBE = """
import sys, threading
import numpy as np, psutil
from mammo_density.memory import limit_heap_growth
applied = limit_heap_growth() if sys.argv[1] == "on" else False
proc = psutil.Process()
def work():
    for _ in range(20):
        a = np.ones((4096, 2048), dtype=np.float32)  # 32 MiB, freed at once
        del a
before = proc.memory_info().rss
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(applied, (proc.memory_info().rss - before) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_heap_settings_applied_and_freed_images_go_back():
    out = subprocess.run([sys.executable, "-c", PROBE, "on"], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True).stdout.split()
    assert out[0] == "True"
    # 32 MiB buffers are mapped and unmapped: nothing of them stays in the process
    assert float(out[1]) < 32.0


FREEZE_PROBE = """
import gc, time, weakref
from mammo_density.memory import freeze_startup_heap
from mammo_density.worker import sr
sr.warm_up()
class Node:
    pass
def cycles(n):
    refs = []
    for _ in range(n):
        a, b = Node(), Node()
        a.other, b.other = b, a
        refs.append(weakref.ref(a))
    return refs
def full_collection_ms():
    start = time.process_time()
    gc.collect()
    return (time.process_time() - start) * 1000
before = full_collection_ms()
frozen = freeze_startup_heap()
after = full_collection_ms()
refs = cycles(1000)
gc.collect()
print(frozen, before, after, sum(r() is None for r in refs))
"""


def test_startup_objects_leave_the_collectors_scans_and_later_garbage_is_collected():
    """``freeze_startup_heap`` (each Celery pool process, after its warm-up): what start-up
    made is frozen, so a full collection no longer walks it; cycles made afterwards are
    still found and freed."""
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE], capture_output=True,
                         text=True, cwd=REPO, timeout=120, check=True).stdout.split()
    frozen, before, after, collected = int(out[0]), float(out[1]), float(out[2]), int(out[3])
    assert frozen > 50_000  # highdicom, pydicom and numpy alone leave this many
    assert after < before / 2
    assert collected == 1000  # every two-object cycle made after the freeze is freed
