"""Images per second of the int8 variant against fp32, interleaved, on pinned cores.

    .venv/bin/python -m benchmarks.int8_speed [--input-size 650] [--width 16]
        [--model-dir DIR] [--rounds 20] [--cores 2] [--json]

The entry (``--model-dir``, else the method's DensityResNet at ``--width`` exported by
benchmarks.common) is copied and quantised with ``train.quantize.quantize_entry``
(calibration: 8 synthetic studies, min-max), unless it already has an ``int8`` variant. Each
round runs one study's four views (``ModelSet.predict_views``, the node's default
options) with fp32 and with int8 in alternating order; medians, the ratio and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_CACHE, bench_model, pin_cores


def int8_entry(folder: Path, cache: Path) -> Path:
    from mammo_density.manifest import read_manifest

    if "int8" in read_manifest(folder).variants:
        return folder
    out = cache / (folder.name + "-int8")
    if (out / "manifest.json").is_file() and "int8" in read_manifest(out).variants:
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(folder, out)
    from mammo_density.synth import generate
    from mammo_density.train import data as mdata
    from mammo_density.train.quantize import quantize_entry

    generate(cache / "int8-calibration", studies=8, seed=101, size="small")
    records = mdata.screening_records(mdata.read_manifest_csv(
        cache / "int8-calibration" / "manifest.csv", require_label=False))
    quantize_entry(out, records, method="minmax")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cores = pin_cores(args.cores)
    from mammo_density.worker.models import ModelSet

    folder = int8_entry(bench_model(input_size=args.input_size, width=args.width,
                                    model_dir=args.model_dir), DEFAULT_CACHE)
    sets = {"fp32": ModelSet.load(folder),
            "int8": ModelSet.load(folder, variant="int8", check_parity=False)}
    size = sets["fp32"].input_size
    rng = np.random.default_rng(0)
    images = {slot: rng.random((size, size), dtype=np.float32)
              for slot in ("R-CC", "L-CC", "R-MLO", "L-MLO")}
    for ms in sets.values():
        ms.predict_views(images)
    times: dict[str, list[float]] = {k: [] for k in sets}
    load = [os.getloadavg()[0]]
    for i in range(args.rounds):
        for name in (("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")):
            t0 = time.perf_counter()
            sets[name].predict_views(images)
            times[name].append(time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"input_size": size, "model": str(folder), "cores": cores, "rounds": args.rounds,
           "load_avg_start_end": load,
           "fp32_ms_per_study": round(med["fp32"] * 1000, 1),
           "int8_ms_per_study": round(med["int8"] * 1000, 1),
           "fp32_images_per_s": round(4 / med["fp32"], 2),
           "int8_images_per_s": round(4 / med["int8"], 2),
           "speedup": round(med["fp32"] / med["int8"], 2)}
    print(json.dumps(out, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
