"""``mammo-density quantize``: an INT8 variant beside a registry entry's fp32 networks.

Static quantisation with ONNX Runtime (calibration on preprocessed images of a labelled
or unlabelled manifest, by default synthetic studies made here), then, with ``--parity``,
the parity report on a labelled manifest: exam agreement of int8 with fp32 and the change
in accuracy and kappa. The manifest lists the int8 files with their sha256 and the
parity's headline figures; nodes run the variant only with ``model_variant = "int8"``,
and refuse it when its parity failed. Needs the ``onnx`` package (``train`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="add an INT8 variant to a model registry entry "
                       "(static quantisation + parity report)")
    p.add_argument("--model-dir", required=True, type=Path, help="registry entry to quantise "
                   "(written in place: int8 files beside the fp32 ones, manifest updated)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="manifest CSV of calibration images; default: synthetic studies "
                   "made with `synth` (--calibration-studies, --calibration-seed)")
    p.add_argument("--calibration-studies", type=int, default=32)
    p.add_argument("--calibration-seed", type=int, default=101)
    p.add_argument("--calibration-size", default="small",
                   help="synth image size of the default calibration studies")
    p.add_argument("--max-images", type=int, default=64, help="calibration images per view")
    p.add_argument("--method", default="percentile",
                   choices=("minmax", "percentile", "entropy"),
                   help="calibration method (ONNX Runtime's); percentile with 32 studies was "
                   "the one whose parity held on the demo model (benchmarks/README.md)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one weight scale per tensor (default: per output channel)")
    p.add_argument("--parity", type=Path, default=None,
                   help="labelled manifest CSV for the parity report (fp32 vs int8)")
    p.add_argument("--label-column", default="density",
                   help="ground-truth column of --parity (true_density for synth)")
    p.add_argument("--cache-dir", type=Path, default=None, help="preprocessed-array cache")
    p.add_argument("--report", type=Path, default=None, help="write the parity report JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from mammo_density.train import data as mdata
        from mammo_density.train.quantize import parity_report, quantize_entry, record_parity
    except ImportError as err:
        print(f"mammo-density quantize: {err}; install the `train` extra "
              "(pip install 'mammo-density[train]')", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory() as tmp:
            calib_csv = args.calibration
            if calib_csv is None:
                from mammo_density.synth import generate

                generate(Path(tmp) / "calib", studies=args.calibration_studies,
                         seed=args.calibration_seed, size=args.calibration_size)
                calib_csv = Path(tmp) / "calib" / "manifest.csv"
            calibration = mdata.screening_records(mdata.read_manifest_csv(
                calib_csv, require_label=False))
            manifest = quantize_entry(args.model_dir, calibration, cache_dir=args.cache_dir,
                                      max_images=args.max_images,
                                      per_channel=not args.per_tensor, method=args.method)
        print(f"wrote the int8 variant of {manifest.name} {manifest.version}: "
              + ", ".join(f"{s} {f}" for s, f in manifest.variants["int8"].items()))
        if args.parity is None:
            print("no --parity manifest: the variant has no parity report; nodes warn when "
                  "they load it")
            return 0
        records = mdata.screening_records(mdata.read_manifest_csv(
            args.parity, label_column=args.label_column))
        report = parity_report(args.model_dir, records, cache_dir=args.cache_dir)
        record_parity(args.model_dir, report)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"mammo-density quantize: {err}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    print(text)
    return 0 if report["holds"] else 3
