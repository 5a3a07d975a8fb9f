"""A/B: the classify fast path with this tree's preprocessing against another revision's.

    .venv/bin/python -m benchmarks.preprocess_ab [--base main] [--rounds 7]
        [--input-size 650] [--width 16] [--cores 2] [--json]

The study, model and pipeline are those of ``benchmarks.classify`` (4 x 3328 x 4096
12-bit JPEG 2000 lossless, the method's ResNet at 650 px, models loaded, pinned to
``--cores`` cores). Only ``worker/preprocess.py`` differs between A (this tree) and B
(``git show BASE:worker/preprocess.py``, loaded as a module and patched into the
pipeline); everything else, decoding included, is this tree's. Rounds alternate A and B
(A first in even rounds, B first in odd ones) so that a shared, noisy machine weighs on
both alike; medians are reported with every run's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_model, full_field_study, module_at, pin_cores


def base_preprocess(rev: str):
    """``preprocess_dataset`` of ``rev``'s worker/preprocess.py, returning this tree's
    ``PreprocessInfo`` (timings and warnings copied) so the pipeline can use it."""
    from mammo_density.worker.preprocess import PreprocessInfo

    module = module_at(rev, "worker/preprocess.py")

    def preprocess_dataset(ds, size, **kwargs):
        out, old = module.preprocess_dataset(ds, size, **kwargs)
        info = PreprocessInfo(codec=old.codec, level=old.level,
                              working_shape=old.working_shape, timings_ms=old.timings_ms,
                              warnings=list(old.warnings))
        return out, info

    return preprocess_dataset, module.PREPROCESSING_VERSION


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision of B (default main)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    cores = pin_cores(args.cores)
    import mammo_density.worker.pipeline as pipeline_module
    from mammo_density.commands.classify import collect_jobs
    from mammo_density.config import load_settings
    from mammo_density.spool_layout import FileImages
    from mammo_density.worker.pipeline import Pipeline
    from mammo_density.worker.preprocess import PREPROCESSING_VERSION

    study = full_field_study()
    model_dir = bench_model(input_size=args.input_size, width=args.width)
    collected = collect_jobs([study])
    job = collected.jobs[0]
    work = Path(tempfile.mkdtemp(prefix="md-bench-ab-"))
    settings = load_settings(model_dir=model_dir, data_dir=work / "data",
                             ort_threads=len(cores))
    pipeline = Pipeline(settings, images=FileImages(collected.files))
    pipeline.models  # noqa: B018
    variants = {"A": pipeline_module.preprocess_dataset}
    variants["B"], base_version = base_preprocess(args.base)

    def run(name: str) -> dict:
        pipeline_module.preprocess_dataset = variants[name]
        t0 = time.perf_counter()
        result = pipeline.run(job)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, **{k: result.timings_ms.get(k, 0.0)
                                   for k in ("decode", "preprocess", "prepare", "total")}}

    runs: dict[str, list[dict]] = {"A": [], "B": []}
    load_start = os.getloadavg()[0]
    try:
        run("A")
        run("B")  # warm-up of both
        for i in range(args.rounds):
            for name in ("AB" if i % 2 == 0 else "BA"):
                runs[name].append(run(name))
    finally:
        pipeline_module.preprocess_dataset = variants["A"]

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[name]), 4)

    out = {
        "cores": cores, "rounds": args.rounds, "input_size": args.input_size,
        "load_avg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "A": {"preprocessing": PREPROCESSING_VERSION, "tree": "this"},
        "B": {"preprocessing": base_version, "tree": args.base},
    }
    for name in ("A", "B"):
        out[name].update({f"{k}_median": med(name, k) for k in
                          ("wall_s", "decode", "preprocess", "prepare", "total")})
        out[name]["wall_s_all"] = [round(r["wall_s"], 3) for r in runs[name]]
    out["wall_ratio_A_over_B"] = round(out["A"]["wall_s_median"] / out["B"]["wall_s_median"], 3)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name in ("A", "B"):
            v = out[name]
            print(f"{name} ({v['preprocessing']}, {v['tree']}): median wall {v['wall_s_median']} s"
                  f" (decode {v['decode_median']:.0f} + preprocess {v['preprocess_median']:.0f}"
                  f" ms summed over 4 images; prepare {v['prepare_median']:.0f} ms) "
                  f"all {v['wall_s_all']}")
        print(f"A/B wall ratio {out['wall_ratio_A_over_B']}; load avg "
              f"{out['load_avg_1min'][0]} -> {out['load_avg_1min'][1]}; cores {cores}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
