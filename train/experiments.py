"""The method's experiments as commands: input-size sweep and k-fold cross-validation."""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np

from mammo_density.train import data as mdata
from mammo_density.train.evaluation import predict_checkpoints
from mammo_density.train.metrics import evaluate_predictions, write_report

log = logging.getLogger(__name__)

TABLE_LEVELS = (("right breast", "breast:R"), ("left breast", "breast:L"),
                ("all views", "exam"))


def parse_range(text: str) -> list[int]:
    """``"250:850:100"`` -> [250, 350, ..., 850] (stop included); ``"250,650"`` -> list."""
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    parts = [int(x) for x in text.split(":")]
    if len(parts) != 3 or parts[2] <= 0 or parts[0] > parts[1]:
        raise ValueError(f"expected START:STOP:STEP, got {text!r}")
    return list(range(parts[0], parts[1] + 1, parts[2]))


def _train_and_score(args: argparse.Namespace, split: str) -> dict:
    from mammo_density.train.train import load_records, main

    rc = main(args)
    if rc:
        raise RuntimeError(f"training failed in {args.out}")
    records = [r for r in load_records(args) if r.split == split]
    preds, _ = predict_checkpoints(Path(args.out), records,
                                   cache_dir=args.cache_dir or Path(args.out) / "cache")
    result = evaluate_predictions(preds, args.task)
    write_report(result, Path(args.out) / f"eval-{split}", png_levels=("exam",))
    return result


def input_size_sweep(args: argparse.Namespace, sizes: list[int]) -> int:
    """Train all views at each input size; write the method's table (rows x sizes)."""
    base = Path(args.out)
    results = {}
    for size in sizes:
        a = copy.copy(args)
        a.input_size, a.out, a.view = size, base / f"size-{size}", "all"
        if args.cache_dir:
            a.cache_dir = Path(args.cache_dir)
        results[size] = _train_and_score(a, args.eval_split)
    lines = ["| input | " + " | ".join(str(s) for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for label, level in TABLE_LEVELS:
        cells = [f"{100 * results[s]['levels'][level]['accuracy']:.1f}%" for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (base / "sweep.md").write_text(table + "\n")
    (base / "sweep.json").write_text(json.dumps(
        {str(s): r for s, r in results.items()}, indent=2) + "\n")
    print(table)
    return 0


def cross_validate(args: argparse.Namespace, k: int) -> int:
    """K patient-level folds: train on K-1 (val carved out), test on the held-out fold."""
    base = Path(args.out)
    records = mdata.screening_records(mdata.read_manifest_csv(args.manifest))
    mdata.kfold_patients(records, k, seed=args.split_seed)  # validates k early
    per_fold = []
    for fold in range(k):
        a = copy.copy(args)
        a.folds, a.fold, a.out, a.view = k, fold, base / f"fold-{fold}", "all"
        a.cache_dir = Path(args.cache_dir) if args.cache_dir else base / "cache"
        per_fold.append(_train_and_score(a, "test"))
    summary: dict[str, dict[str, float]] = {}
    for level in ("breast:R", "breast:L", "exam"):
        for metric in ("accuracy", "kappa_linear", "dense_accuracy", "dense_auc"):
            vals = np.array([f["levels"][level][metric] for f in per_fold], dtype=float)
            summary.setdefault(level, {})[metric] = float(np.nanmean(vals))
            summary[level][f"{metric}_std"] = float(np.nanstd(vals, ddof=1)) if k > 1 else 0.0
    (base / "cv.json").write_text(json.dumps({"k": k, "summary": summary,
                                              "folds": per_fold}, indent=2) + "\n")
    for level, m in summary.items():
        print(f"{level:<10} accuracy {100 * m['accuracy']:.1f}% +- "
              f"{100 * m['accuracy_std']:.1f}  kappa {m['kappa_linear']:.3f} +- "
              f"{m['kappa_linear_std']:.3f}")
    return 0
