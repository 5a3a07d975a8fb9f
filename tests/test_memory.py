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
