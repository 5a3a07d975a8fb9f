"""How near one view's network runs to the CPU's arithmetic peak, layer by layer.

    .venv/bin/python -m benchmarks.conv_flops [--input-size 650] [--width 16]
        [--model-dir DIR] [--variant fp32|int8] [--threads 1] [--rounds 10] [--top 8]
        [--json]

Runs one view's network (R-CC) with the node's session options (``OrtTuning``, one
intra-op thread by default: what each Celery pool process gets on 2 cores) and ONNX
Runtime's own per-node profiler. Prints the time per image, the time per operator type,
and for the fp32 convolutions their arithmetic from the shapes the profiler records
(2 x output elements x input channels per group x kernel area) and the GFLOP/s they
reach, overall and for the slowest layers. Compared with the core's fp32 peak (a Zen 4
or Ice Lake core: 32 FLOP a cycle), this says whether the same network could still run
faster on that CPU (layers well below the peak) or not. The int8 variant's QLinearConv
nodes come with their weights pre-packed, so the profiler gives no weight shape: for it
the times are printed without FLOPs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_CACHE, bench_model


def _shape(entry: dict) -> list[int]:
    return [int(d) for d in next(iter(entry.values()))]


def conv_flops(args: dict) -> tuple[int, list[int], list[int]]:
    """FLOPs of one Conv node from the profiler's ``args`` (input and output shapes; an
    NCHWc output, rank 5 with the channels in blocks, has as many elements)."""
    out = _shape(args["output_type_shape"][0])
    weight = _shape(args["input_type_shape"][1])
    per_output = int(np.prod(weight[1:]))  # input channels per group x kernel area
    return 2 * int(np.prod(out)) * per_output, out, weight


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=650)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from mammo_density.manifest import read_manifest
    from mammo_density.worker.models import OrtTuning, variant_views

    folder = bench_model(input_size=args.input_size, width=args.width,
                         model_dir=args.model_dir)
    if args.variant == "int8":
        from benchmarks.int8_speed import int8_entry

        folder = int8_entry(folder, DEFAULT_CACHE)
    manifest = read_manifest(folder)
    path = Path(folder) / variant_views(manifest, args.variant)["R-CC"]
    with tempfile.TemporaryDirectory() as tmp:
        opts = OrtTuning(threads=args.threads, parallel_views=1).session_options()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        size = manifest.input_size
        x = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
        for _ in range(3):
            session.run(None, {name: x})
        cpu, wall = [], []
        for _ in range(args.rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            session.run(None, {name: x})
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = 3 + args.rounds
    durations: dict[str, list[float]] = defaultdict(list)
    node_args: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            durations[e["name"]].append(e["dur"] / 1e6)
            node_args[e["name"]] = e["args"]
    layers, by_op, total_node, conv_time, flops = [], defaultdict(float), 0.0, 0.0, 0
    for key, times in durations.items():
        seconds = statistics.median(times[-args.rounds:]) if len(times) >= runs else \
            statistics.median(times)
        total_node += seconds
        op = node_args[key].get("op_name", "")
        by_op[op] += seconds
        if op in ("Conv", "FusedConv"):
            f, out, weight = conv_flops(node_args[key])
            conv_time += seconds
            flops += f
            layers.append({"op": op, "ms": seconds * 1e3, "gflop": f / 1e9,
                           "gflop_per_s": f / seconds / 1e9 if seconds else 0.0,
                           "output": out, "weight": weight})
        elif op == "QLinearConv":
            layers.append({"op": op, "ms": seconds * 1e3, "gflop": None, "gflop_per_s": None,
                           "output": _shape(node_args[key]["output_type_shape"][0]),
                           "weight": None})
    layers.sort(key=lambda r: -r["ms"])
    report = {
        "model": str(path), "variant": args.variant, "input_size": size,
        "threads": args.threads, "rounds": args.rounds,
        "ms_per_image_wall": round(statistics.median(wall) * 1e3, 2),
        "ms_per_image_cpu": round(statistics.median(cpu) * 1e3, 2),
        "node_ms_sum": round(total_node * 1e3, 2),
        "ms_by_operator": {k: round(v * 1e3, 2)
                           for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "conv_ms": round(conv_time * 1e3, 2),
        "conv_share": round(conv_time / total_node, 3) if total_node else None,
        "conv_gflop": round(flops / 1e9, 3),
        "conv_gflop_per_s": round(flops / conv_time / 1e9, 1) if conv_time else None,
        "slowest": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                    for r in layers[:args.top]],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']} ({args.variant}, {size} px, {args.threads} thread(s)): "
          f"{report['ms_per_image_wall']} ms an image (CPU {report['ms_per_image_cpu']} ms)")
    print("by operator (ms): " + ", ".join(f"{k} {v}"
                                          for k, v in report["ms_by_operator"].items()))
    if flops:
        print(f"fp32 convolutions: {report['conv_ms']} ms of {report['node_ms_sum']} ms of "
              f"nodes ({report['conv_share']:.0%}), {report['conv_gflop']} GFLOP, "
              f"{report['conv_gflop_per_s']} GFLOP/s")
    for r in report["slowest"]:
        rate = f"{r['gflop_per_s']:6.1f} GFLOP/s" if r["gflop_per_s"] is not None else ""
        print(f"  {r['ms']:6.2f} ms {rate:>14}  {r['op']} out {r['output']}"
              + (f" weight {r['weight']}" if r["weight"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
