"""CPU of preparing one full-field study (decode at the working level, preprocessing,
thumbnails) with OpenCV's thread pool at 1 thread and at 2, interleaved in one process.

A Celery pool process gets its share of the cores for its own threads
(``mammo_density.commands.worker.pool_share``); OpenCV sizes its pool to the machine
unless told (``limit_image_threads``). This measures what that costs.

    .venv/bin/python -m benchmarks.opencv_threads --rounds 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2

from benchmarks.common import full_field_study
from mammo_density.worker.pipeline import thumbnail
from mammo_density.worker.preprocess import preprocess_dataset, read_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--size", type=int, default=650, help="model input side (px)")
    args = ap.parse_args(argv)
    datasets = [read_dataset(path) for path in sorted(full_field_study().rglob("*.dcm"))]

    def prepare() -> float:
        start = time.process_time()
        for ds in datasets:
            x, _ = preprocess_dataset(ds, args.size, threads=1)
            thumbnail(x)
        return time.process_time() - start

    prepare()  # first-call set-up out of the figures
    cpu: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for n in (1, 2) if r % 2 else (2, 1):
            cv2.setNumThreads(n)
            cpu[n].append(prepare())
    diffs = [a - b for a, b in zip(cpu[1], cpu[2], strict=True)]
    print(json.dumps({
        "cpu_ms_per_study": {f"opencv_threads_{n}": round(1000 * statistics.median(v), 1)
                             for n, v in cpu.items()},
        "paired_median_diff_ms_1_minus_2": round(1000 * statistics.median(diffs), 1),
        "rounds": args.rounds, "size": args.size, "images": len(datasets)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
