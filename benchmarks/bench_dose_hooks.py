"""Timing of dose extraction (real vendor RDSRs), hook dispatch and registry delivery.

Run: ``.venv/bin/python benchmarks/bench_dose_hooks.py`` (needs ../shared/testdata).
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402

from mammo_density.config import load_settings  # noqa: E402
from mammo_density.worker.dose import extract_dose  # noqa: E402
from mammo_density.worker.hooks import HookQueue, dispatch  # noqa: E402
from tests.services import TESTDATA  # noqa: E402
from tests.test_rules import make_result  # noqa: E402


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:.2f} ms, max {max(samples) * 1e3:.1f} ms"


def main() -> None:
    for path in sorted((TESTDATA / "real-mg" / "openrem").glob("MG-RDSR*.dcm")):
        ds = pydicom.dcmread(path)
        samples = []
        for _ in range(50):
            t0 = time.perf_counter()
            extract_dose([], [ds])
            samples.append(time.perf_counter() - t0)
        print(f"extract_dose {path.name}: {_ms(samples)}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=tmp, webhook_url="http://127.0.0.1:9/unused")
        samples = []
        for i in range(100):
            result = make_result(f"1.2.3.{i}")
            t0 = time.perf_counter()
            dispatch(result, settings)
            samples.append(time.perf_counter() - t0)
        print(f"dispatch, 2 hooks (registry + webhook): {_ms(samples)}")
        with sqlite3.connect(Path(tmp) / "hooks.sqlite3") as db:
            db.execute("DELETE FROM hook_events WHERE hook = 'webhook'")
        queue = HookQueue(load_settings(data_dir=tmp))
        t0 = time.perf_counter()
        n = queue.deliver_due(limit=1000)
        print(f"deliver_due, registry hook: {n} rows in {(time.perf_counter() - t0) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
