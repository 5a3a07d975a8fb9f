"""The method's experiments as commands: input-size sweep and k-fold cross-validation."""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mammo_density.train import data as mdata
from mammo_density.train.evaluation import predict_checkpoints
from mammo_density.train.metrics import Prediction, evaluate_predictions, write_report

log = logging.getLogger(__name__)

TABLE_LEVELS = (("right breast", "breast:R"), ("left breast", "breast:L"),
                ("all views", "exam"))


def parse_range(text: str) -> list[int]:
    """``"250:850:100"`` -> [250, 350, ..., 850] (stop included); ``"250,650"`` -> list."""
    if "," in text or ":" not in text:
        return [int(x) for x in text.split(",") if x.strip()]
    parts = [int(x) for x in text.split(":")]
    if len(parts) != 3 or parts[2] <= 0 or parts[0] > parts[1]:
        raise ValueError(f"expected START:STOP:STEP, got {text!r}")
    return list(range(parts[0], parts[1] + 1, parts[2]))


def _train_and_score(args: argparse.Namespace, split: str) -> tuple[dict, list]:
    from mammo_density.train.train import load_records, main

    rc = main(args)
    if rc:
        raise RuntimeError(f"training failed in {args.out}")
    records = [r for r in load_records(args) if r.split == split]
    preds, _ = predict_checkpoints(Path(args.out), records,
                                   cache_dir=args.cache_dir or Path(args.out) / "cache",
                                   device=args.device)
    result = evaluate_predictions(preds, args.task)
    write_report(result, Path(args.out) / f"eval-{split}", png_levels=("exam",))
    return result, preds


def input_size_sweep(args: argparse.Namespace, sizes: list[int]) -> int:
    """Train all views at each input size; write the method's table (rows x sizes)."""
    base = Path(args.out)
    results = {}
    for size in sizes:
        a = copy.copy(args)
        a.input_size, a.out, a.view = size, base / f"size-{size}", "all"
        if args.cache_dir:
            a.cache_dir = Path(args.cache_dir)
        results[size] = _train_and_score(a, args.eval_split)[0]
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


CV_LEVELS = ("image", "breast", "breast:R", "breast:L", "exam")
CV_METRICS = ("accuracy", "kappa_linear", "kappa_quadratic", "dense_accuracy", "dense_auc")
#: The levels the CV tables show (the JSON keeps every level of ``CV_LEVELS``).
CV_TABLE_LEVELS = ("image", "breast", "exam")


def summarise_folds(per_fold: list[dict], pooled: dict | None = None) -> dict:
    """Mean and sample sd over folds per level and metric; pooled recall and confusion."""
    summary: dict[str, dict[str, object]] = {}
    for level in CV_LEVELS:
        rows = [f["levels"][level] for f in per_fold if level in f["levels"]]
        if not rows:
            continue
        entry: dict[str, object] = {}
        for metric in CV_METRICS:
            vals = np.array([r.get(metric, np.nan) for r in rows], dtype=float)
            entry[metric] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            entry[f"{metric}_std"] = (float(np.nanstd(vals, ddof=1))
                                      if np.isfinite(vals).sum() > 1 else 0.0)
        if pooled and level in pooled["levels"]:
            entry["recall"] = pooled["levels"][level]["recall"]
            entry["confusion"] = pooled["levels"][level]["confusion"]
            entry["n"] = pooled["levels"][level]["n"]
        summary[level] = entry
    return summary


FUSED_ROW = "cnn+LR"
#: Row of the linear probe of ``--probe-weights`` (frozen pretrained features + LR).
PROBE_ROW = "embeddings+LR"


def fuse_predictions(a: list[Prediction], b: list[Prediction],
                     weight: float = 0.5) -> list[Prediction]:
    """Late fusion: per image, ``weight`` x ``a``'s probabilities + the rest x ``b``'s.

    Images are matched by exam, side and view (and by order within one slot, where a
    slot holds two images: both lists keep the records' order there). Both lists must
    hold the same images; the result follows ``a``'s order.
    """
    from collections import defaultdict

    by_slot: dict[tuple[str, str, str], list[Prediction]] = defaultdict(list)
    for p in b:
        by_slot[(p.exam_id, p.laterality, p.view)].append(p)
    taken: dict[tuple[str, str, str], int] = defaultdict(int)
    out: list[Prediction] = []
    for p in a:
        key = (p.exam_id, p.laterality, p.view)
        i = taken[key]
        if i >= len(by_slot[key]):
            raise ValueError(f"no second prediction for {key[1]}-{key[2]} of an exam")
        q = by_slot[key][i]
        taken[key] += 1
        out.append(Prediction(exam_id=p.exam_id, laterality=p.laterality, view=p.view,
                              probs=weight * np.asarray(p.probs, dtype=np.float64)
                              + (1 - weight) * np.asarray(q.probs, dtype=np.float64),
                              density=p.density))
    if len(out) != len(b):
        raise ValueError(f"{len(a)} against {len(b)} predictions: not the same images")
    return out


def method_row(folds: list[dict], oof: list[Prediction], task: str, seconds: float,
               report_dir: Path) -> dict:
    """One method's row of a CV table: per-fold results (``evaluate_predictions``) and
    the pooled out-of-fold predictions (their report and confusion PNGs written to
    ``report_dir``)."""
    pooled = evaluate_predictions(oof, task, n_boot=0)
    write_report(pooled, report_dir, png_levels=("image", "breast", "exam"))
    return {"summary": summarise_folds(folds, pooled), "seconds": round(seconds, 1),
            "folds": [{lv: {m: f["levels"][lv].get(m) for m in CV_METRICS}
                       for lv in CV_LEVELS if lv in f["levels"]} for f in folds]}


def ensemble_row(runs: Sequence[Path], args: argparse.Namespace, k: int,
                 report_dir: Path) -> dict:
    """The row of the mean of several CV runs' networks (same folds, e.g. one recipe
    trained with different seeds): per fold, each run's fold checkpoints score the
    held-out patients and their probabilities are averaged per image."""
    import time

    t0 = time.perf_counter()
    folds: list[dict] = []
    oof: list[Prediction] = []
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(runs[0]) / "cache"
    for fold in range(k):
        test = [r for r in fold_records(args, k, fold) if r.split == "test"]
        mean: list[Prediction] | None = None
        for i, run in enumerate(runs):
            preds, _ = predict_checkpoints(Path(run) / f"fold-{fold}", test,
                                           cache_dir=cache_dir, device=args.device)
            mean = preds if mean is None else fuse_predictions(mean, preds, i / (i + 1))
        assert mean is not None
        folds.append(evaluate_predictions(mean, args.task, n_boot=0))
        oof += mean
    return method_row(folds, oof, args.task, time.perf_counter() - t0, report_dir)


def fold_records(args: argparse.Namespace, k: int, fold: int) -> list[mdata.ImageRecord]:
    """The manifest's records with the splits of ``fold``: test = held-out patients,
    val = the inner validation patients (``--val-fraction``), train = the rest."""
    from mammo_density.train.recipes import apply_recipe
    from mammo_density.train.train import load_records

    a = copy.copy(args)
    a.folds, a.fold = k, fold
    apply_recipe(a)
    return load_records(a)


def cross_validate(args: argparse.Namespace, k: int, *, baselines: bool = True) -> int:
    """K patient-level folds: train on K-1 (val carved out), test on the held-out fold.

    The baselines (majority class; hand-made features + logistic regression) are scored
    on the same folds and the same validation patients, with the late fusion of the
    network and the regression (mean of their probabilities, row ``cnn+LR``) and, with
    ``--probe-weights``, the linear probe of those weights (row ``embeddings+LR``), so
    ``OUT/cv.json`` holds one row per method: mean and sample sd over folds (image, breast,
    exam), pooled recall and confusion over the out-of-fold predictions, wall time.
    """
    import time

    from mammo_density.train.dataset import ArrayCache

    base = Path(args.out)
    records = mdata.screening_records(mdata.read_manifest_csv(args.manifest))
    mdata.kfold_patients(records, k, seed=args.split_seed)  # validates k early
    cache_dir = Path(args.cache_dir) if args.cache_dir else base / "cache"
    per_fold: list[dict] = []
    probe = args.probe_weights if baselines else None
    extra = (PROBE_ROW,) if probe else ()
    oof: dict[str, list] = {name: [] for name in ("cnn", "majority", "features+LR",
                                                  FUSED_ROW, *extra)}
    base_folds: dict[str, list[dict]] = {name: [] for name in ("majority", "features+LR",
                                                               FUSED_ROW, *extra)}
    seconds = dict.fromkeys(oof, 0.0)
    features: dict = {}
    fold_args = []
    for fold in range(k):
        a = copy.copy(args)
        a.folds, a.fold, a.out, a.view = k, fold, base / f"fold-{fold}", "all"
        a.cache_dir = cache_dir
        if hasattr(a, "func"):
            del a.func  # the CLI's handler: not needed (nor picklable) in fold workers
        fold_args.append(a)
    t0 = time.perf_counter()
    workers = min(int(getattr(args, "fold_workers", 1) or 1), k)
    if workers > 1:
        # Folds in parallel processes (one torch thread each): on a small shared CPU this
        # beats one process with several threads, whose threads wait on each other.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            outcomes = list(pool.map(_fold_worker, fold_args))
    else:
        outcomes = [_train_and_score(a, "test") for a in fold_args]
    seconds["cnn"] = time.perf_counter() - t0
    for fold, (a, (result, preds)) in enumerate(zip(fold_args, outcomes, strict=True)):
        per_fold.append(result)
        oof["cnn"] += preds
        if baselines:
            from mammo_density.train import baselines as bl

            recs = fold_records(a, k, fold)
            tr = [r for r in recs if r.split == "train"]
            va = [r for r in recs if r.split == "val"]
            te = [r for r in recs if r.split == "test"]
            fold_cache = ArrayCache(cache_dir, args.input_size)  # both regressions read it
            t0 = time.perf_counter()
            p = bl.majority_class(tr + va, te, args.task)
            seconds["majority"] += time.perf_counter() - t0
            oof["majority"] += p
            base_folds["majority"].append(evaluate_predictions(p, args.task, n_boot=0))
            t0 = time.perf_counter()
            p, info = bl.features_logistic(tr, va, te, fold_cache, task=args.task,
                                           features=features)
            seconds["features+LR"] += time.perf_counter() - t0
            oof["features+LR"] += p
            result = evaluate_predictions(p, args.task, n_boot=0)
            result["model"] = info
            base_folds["features+LR"].append(result)
            # Late fusion: mean of the network's and the regression's probabilities.
            fused = fuse_predictions(preds, p)
            oof[FUSED_ROW] += fused
            base_folds[FUSED_ROW].append(evaluate_predictions(fused, args.task, n_boot=0))
            if probe:  # linear probe of the weights a site brings (--probe-weights)
                t0 = time.perf_counter()
                p, info = bl.embeddings_logistic(tr, va, te, fold_cache, weights=probe,
                                                 arch=args.probe_arch, task=args.task)
                seconds[PROBE_ROW] += time.perf_counter() - t0
                oof[PROBE_ROW] += p
                result = evaluate_predictions(p, args.task, n_boot=0)
                result["model"] = info
                base_folds[PROBE_ROW].append(result)
    rows: dict[str, dict] = {}
    for name, folds in (("cnn", per_fold), *base_folds.items()):
        if not folds:
            continue
        rows[name] = method_row(folds, oof[name], args.task, seconds[name],
                                base / f"pooled-{name.replace('+', '-')}")
    summary = rows["cnn"]["summary"]
    (base / "cv.json").write_text(json.dumps({
        "k": k, "split_seed": args.split_seed, "manifest": str(args.manifest),
        "input_size": args.input_size, "recipe": getattr(args, "recipe", None),
        "rows": rows, "summary": summary, "folds": per_fold}, indent=2, default=_json) + "\n")
    print(format_cv_table(rows))
    return 0


def _fold_worker(a: argparse.Namespace) -> tuple[dict, list]:
    import torch

    from mammo_density.logsetup import configure_logging

    configure_logging(0)
    torch.set_num_threads(max(1, int(a.threads or 1)))
    return _train_and_score(a, "test")


def _json(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def format_cv_table(rows: dict[str, dict], levels: tuple[str, ...] = CV_TABLE_LEVELS) -> str:
    """Markdown: one line per (method, level): accuracy +- sd, kappas, recall per class."""
    lines = ["| method | level | accuracy % (sd) | kappa linear (sd) | kappa quadratic | "
             "recall per class | dense/non-dense % |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for level in levels:
            e = row["summary"].get(level)
            if not e:
                continue
            rec = e.get("recall") or {}
            rec_s = " ".join(f"{c} {v:.2f}" if v is not None else f"{c} -"
                             for c, v in rec.items())
            kq = e.get("kappa_quadratic")
            lines.append(
                f"| {name} | {level} | {100 * e['accuracy']:.1f} ({100 * e['accuracy_std']:.1f})"
                f" | {e['kappa_linear']:.3f} ({e['kappa_linear_std']:.3f}) | "
                f"{kq:.3f} | {rec_s} | {100 * e['dense_accuracy']:.1f} |"
                if kq is not None else f"| {name} | {level} | - | - | - | {rec_s} | - |")
    return "\n".join(lines)
