"""Images per second of one view's network at the model's input size, per provider.

    .venv/bin/python -m benchmarks.infer_speed [--input-size 650] [--width 16]
        [--batch 1,8,32] [--seconds 5] [--providers CUDAExecutionProvider] [--json]

Uses ``ModelSet`` exactly as the worker does (the ``--model-dir`` entry, or the method's
DensityResNet exported by benchmarks.common). Reports the provider ONNX Runtime actually
used: on a machine without onnxruntime-gpu / a GPU it is the CPU provider. Where a GPU
is lent: ``pip install onnxruntime-gpu`` in the venv first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks.common import bench_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--providers", default="", help="comma-separated; default CUDA if present")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from mammo_density.worker.models import ModelSet

    folder = bench_model(input_size=args.input_size, width=args.width,
                         model_dir=args.model_dir)
    providers = [p for p in args.providers.split(",") if p] or None
    ms = ModelSet.load(folder, threads=args.threads, providers=providers)
    size = ms.input_size
    slot = next(iter(ms.sessions))
    rng = np.random.default_rng(0)
    out = {"providers": ms.providers, "input_size": size, "model": str(folder), "runs": []}
    for batch in [int(b) for b in args.batch.split(",") if b]:
        x = rng.random((batch, size, size), dtype=np.float32)
        ms.predict(slot, x)  # warm-up (CUDA kernels, arenas)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            ms.predict(slot, x)
            n += batch
        elapsed = time.perf_counter() - t0
        out["runs"].append({"batch": batch, "images_per_s": round(n / elapsed, 1),
                            "ms_per_batch": round(elapsed / (n / batch) * 1000, 2)})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"providers {out['providers']}, input {size} px")
        for run in out["runs"]:
            print(f"batch {run['batch']:>3}: {run['images_per_s']} images/s "
                  f"({run['ms_per_batch']} ms per batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
