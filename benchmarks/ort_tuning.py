"""ONNX Runtime session options for the node: one study's four views, interleaved A/B.

    .venv/bin/python -m benchmarks.ort_tuning [--input-size 650] [--width 16]
        [--rounds 15] [--cores 2] [--configs NAME,...] [--json]

Each configuration is a set of session options (graph optimisation level, intra-/inter-op
threads, execution mode, spinning) plus how the four views are run (one after another,
``parallel_views`` at a time in threads, or one batched run when the four views share one
network file). Every configuration gets its own sessions on the same model; rounds visit
the configurations in a new shuffled order each time (interleaved, so a load change on a
shared machine hits all of them alike) and the medians are reported with the ratio to the
node's previous default (``baseline``). The model is the method's DensityResNet at the
given width and input size (initial weights: timing does not depend on them); the
"shared" model is the same network in all four slots (one file), to measure batching;
the "plain" model is the same networks without the identity convs that the export adds
for ONNX Runtime's CPU layout (``train/cpu_fusion.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_CACHE, bench_model, pin_cores

# name -> (OrtTuning keyword arguments, model: "views" (4 files) or "shared" (1 file))
CONFIGS: dict[str, tuple[dict, str]] = {
    # the node's options before this benchmark: ONNX Runtime's default thread count
    "baseline": ({"threads": -1, "graph_optimization": "all", "spinning": False,
                  "parallel_views": 1}, "views"),
    "opt-basic": ({"graph_optimization": "basic", "parallel_views": 1}, "views"),
    "opt-extended": ({"graph_optimization": "extended", "parallel_views": 1}, "views"),
    "opt-disable": ({"graph_optimization": "disable", "parallel_views": 1}, "views"),
    "intra1": ({"threads": 1, "parallel_views": 1}, "views"),
    "intra2": ({"threads": 2, "parallel_views": 1}, "views"),
    "intra4": ({"threads": 4, "parallel_views": 1}, "views"),
    "spin": ({"threads": 2, "spinning": True, "parallel_views": 1}, "views"),
    "exec-parallel": ({"threads": 1, "inter_threads": 2, "execution_mode": "parallel",
                       "parallel_views": 1}, "views"),
    "views2x1": ({"threads": 1, "parallel_views": 2}, "views"),
    "views4x1": ({"threads": 1, "parallel_views": 4}, "views"),
    "views2x2": ({"threads": 2, "parallel_views": 2}, "views"),
    "shared-seq": ({"threads": 2, "parallel_views": 1, "batch_shared": False}, "shared"),
    "shared-batch4": ({"threads": 2, "parallel_views": 1, "batch_shared": True}, "shared"),
    # the node's default on the same networks without train/cpu_fusion.py's identity convs
    "views2x1-plain": ({"threads": 1, "parallel_views": 2}, "plain"),
}


def shared_model(folder: Path, cache: Path) -> Path:
    """The entry at ``folder`` with one network (R-CC's) for all four views, one file."""
    from mammo_density.manifest import read_manifest, sha256_file, write_manifest

    out = cache / (folder.name + "-shared")
    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    source = folder / manifest.views["R-CC"]
    shutil.copyfile(source, out / "view.onnx")
    manifest.views = dict.fromkeys(manifest.views, "view.onnx")
    manifest.files_sha256 = {"view.onnx": sha256_file(out / "view.onnx")}
    write_manifest(out, manifest)
    return out


def plain_model(folder: Path, cache: Path) -> Path:
    """The entry at ``folder`` with the identity convs of ``train/cpu_fusion.py`` taken out
    (the graph as exported before that pass)."""
    import onnx

    from mammo_density.manifest import read_manifest, sha256_file, write_manifest
    from mammo_density.train.cpu_fusion import remove_identity_convs

    out = cache / (folder.name + "-plain")
    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    for filename in sorted(set(manifest.views.values())):
        model = onnx.load(str(folder / filename))
        remove_identity_convs(model)
        onnx.save(model, str(out / filename))
        manifest.files_sha256[filename] = sha256_file(out / filename)
    write_manifest(out, manifest)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--configs", default="", help="comma-separated subset of: "
                    + ", ".join(CONFIGS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    cores = pin_cores(args.cores)
    from mammo_density.worker.models import ModelSet, OrtTuning

    folder = bench_model(input_size=args.input_size, width=args.width,
                         model_dir=args.model_dir)
    names = [n for n in args.configs.split(",") if n] or list(CONFIGS)
    folders = {"views": folder}
    if any(CONFIGS[n][1] == "shared" for n in names):
        folders["shared"] = shared_model(folder, DEFAULT_CACHE)
    if any(CONFIGS[n][1] == "plain" for n in names):
        folders["plain"] = plain_model(folder, DEFAULT_CACHE)
    sets = {}
    for name in names:
        kwargs, which = CONFIGS[name]
        sets[name] = ModelSet.load(folders[which], tuning=OrtTuning(**kwargs))
    size = args.input_size
    rng = np.random.default_rng(0)
    images = {slot: rng.random((size, size), dtype=np.float32)
              for slot in ("R-CC", "L-CC", "R-MLO", "L-MLO")}
    for ms in sets.values():  # warm-up: arenas, first-run kernels
        ms.predict_views(images)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    order = list(names)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            sets[name].predict_views(images)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load.append(os.getloadavg()[0])
    base = statistics.median(times["baseline"]) if "baseline" in times else None
    rows = []
    for name in names:
        med = statistics.median(times[name])
        rows.append({"config": name, "options": CONFIGS[name][0], "model": CONFIGS[name][1],
                     "median_ms": round(med * 1000, 1),
                     "min_ms": round(min(times[name]) * 1000, 1),
                     "cpu_ms": round(statistics.median(cpu[name]) * 1000, 1),
                     "ratio_to_baseline": round(med / base, 3) if base else None,
                     "images_per_s": round(4 / med, 2)})
    out = {"input_size": size, "width": args.width, "cores": cores, "rounds": args.rounds,
           "load_avg_start_end": load, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"4 views at {size} px, width {args.width}, cores {cores}, {args.rounds} "
              f"interleaved rounds, load {load[0]:.1f} -> {load[1]:.1f}")
        for r in sorted(rows, key=lambda r: r["median_ms"]):
            print(f"{r['config']:>14}: median {r['median_ms']:7.1f} ms  min {r['min_ms']:7.1f}"
                  f"  cpu {r['cpu_ms']:7.1f}  x{r['ratio_to_baseline']}  "
                  f"{r['images_per_s']} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
