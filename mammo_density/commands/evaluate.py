"""``mammo-density evaluate``: score trained networks on a labelled manifest.

Accuracy per view, per breast and for all views (the method's tables), linear-weighted
Cohen's kappa, confusion matrices (CSV + PNG), per-class recall, dense/non-dense accuracy
and AUC, bootstrap 95% intervals; JSON + a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate checkpoints or a registry entry on a manifest")
    p.add_argument("--manifest", required=True, type=Path, help="labelled manifest CSV")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help="training output folder (<view>/best.pth)")
    src.add_argument("--model-dir", type=Path,
                     help="registry entry (manifest.json + ONNX); default: configured or "
                     "bundled demo model")
    p.add_argument("--checkpoint", default="best", choices=("best", "checkpoint"),
                   help="with --run: best (model selection) or last checkpoint")
    p.add_argument("--device", default="cpu",
                   help="with --run: torch device (cpu, cuda, cuda:N, auto)")
    p.add_argument("--split", default="auto",
                   help="rows to score: train/val/test/all; auto = test if the manifest "
                   "has a test split, else all")
    p.add_argument("--label-column", default="density",
                   help="ground-truth column (e.g. true_density for synthetic data)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--cache-dir", type=Path, default=None, help="preprocessed-array cache")
    p.add_argument("--out", type=Path, default=None,
                   help="write metrics.json, metrics.txt, confusion_*.csv/png here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def _model_dir(args: argparse.Namespace, settings: Settings) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    if settings.model_dir:
        return Path(settings.model_dir)
    from mammo_density.worker.models import default_model_dir

    return default_model_dir()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.train import data as mdata
    from mammo_density.train.evaluation import predict_checkpoints, predict_registry
    from mammo_density.train.metrics import evaluate_predictions, format_table, write_report

    try:
        records = mdata.screening_records(mdata.read_manifest_csv(
            args.manifest, label_column=args.label_column))
    except (OSError, ValueError) as err:
        print(f"mammo-density evaluate: {err}", file=sys.stderr)
        return 2
    split = args.split
    if split == "auto":
        split = "test" if any(r.split == "test" for r in records) else "all"
    if split != "all":
        records = [r for r in records if r.split == split]
    if not records:
        print(f"mammo-density evaluate: no images in split {split!r}", file=sys.stderr)
        return 2
    if args.run:
        preds, info = predict_checkpoints(args.run, records, cache_dir=args.cache_dir,
                                          which=args.checkpoint, device=args.device)
    else:
        preds, info = predict_registry(_model_dir(args, settings), records,
                                       cache_dir=args.cache_dir)
    result = evaluate_predictions(preds, info["task"], n_boot=args.bootstrap, seed=args.seed)
    result["model"] = info
    result["split"] = split
    result["label_column"] = args.label_column
    if args.out:
        write_report(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model: {info['source']} ({info['task']}, {info['input_size']} px); "
              f"split {split}, truth {args.label_column}")
        print(format_table(result))
    return 0
