"""Evaluation of density predictions at the method's levels: view, breast, exam.

Input: one :class:`Prediction` per image (exam, laterality, view, class probabilities,
true density). Levels (docs/method.md, "From views to an exam"):

- ``view:<slot>``: each view's network alone; ``image``: all images pooled.
- ``breast:R`` / ``breast:L`` / ``breast``: mean of the breast's views' probabilities
  (the method's "right breast" / "left breast" rows); ground truth = the breast's label.
- ``exam``: the method's "all views" row, by the deployed exam rule: the functions of
  :mod:`mammo_density.study.exam`, which worker/combine.py calls too (class and P(dense)
  per task; ``tests/test_exam_rule.py`` checks both agree). Ground truth = the exam's
  label (the denser breast).

Class predictions at every level break ties as the deployed rule does
(:func:`mammo_density.study.exam.denser_argmax`).

Per level: accuracy, linear-weighted Cohen's kappa, confusion matrix, per-class recall,
dense/non-dense accuracy and ROC AUC of P(dense), each with a bootstrap 95% interval
(resampling exams). The arithmetic is plain NumPy so a 1,000-sample bootstrap is fast;
tests check it against torchmetrics.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammo_density.study.exam import decide_birads4, decide_dense2, denser_argmax
from mammo_density.study.slots import SLOTS
from mammo_density.train.data import DENSITY_CLASSES, TASKS, cohen_kappa

SLOT_ORDER = SLOTS


@dataclass
class Prediction:
    exam_id: str
    laterality: str
    view: str
    probs: np.ndarray  # class probabilities of the task
    density: str  # true BI-RADS A-D

    @property
    def slot(self) -> str:
        return f"{self.laterality}-{self.view}"


# --------------------------------------------------------------------------- primitives

def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> np.ndarray:
    """Rows = truth, columns = prediction."""
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return m


def recall_per_class(conf: np.ndarray) -> list[float | None]:
    rows = conf.sum(1)
    return [float(conf[i, i] / rows[i]) if rows[i] else None for i in range(len(rows))]


def roc_auc(y_true: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN if one class."""
    t = np.asarray(y_true, dtype=int)
    s = np.asarray(score, dtype=float)
    n_pos, n_neg = int(t.sum()), int((1 - t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def kappa_linear(y_true: Sequence[int], y_pred: Sequence[int], n: int) -> float:
    if len(y_true) == 0:
        return float("nan")
    return cohen_kappa(y_true, y_pred, n, weights="linear")


# --------------------------------------------------------------------------- levels

@dataclass
class LevelData:
    """Rows of one evaluation level: truth/prediction indices, P(dense), resampling groups."""

    y_true: np.ndarray
    y_pred: np.ndarray
    dense_true: np.ndarray
    dense_score: np.ndarray
    groups: np.ndarray  # exam index of each row, for the bootstrap


def _dense_prob(probs: np.ndarray, task: str) -> float:
    return float(probs[2] + probs[3]) if task == "birads4" else float(probs[1])


def _task_index(density: str, task: str) -> int:
    i = DENSITY_CLASSES.index(density)
    return i if task == "birads4" else int(i >= 2)


def _denser(a: str, b: str) -> str:
    return a if DENSITY_CLASSES.index(a) >= DENSITY_CLASSES.index(b) else b


def build_levels(preds: Iterable[Prediction], task: str) -> dict[str, LevelData]:
    """Group predictions into the levels described in the module docstring."""
    preds = list(preds)
    exams = sorted({p.exam_id for p in preds})
    exam_idx = {e: i for i, e in enumerate(exams)}
    rows: dict[str, list[tuple[int, int, float, int]]] = defaultdict(list)

    def add(level: str, truth: str, probs: np.ndarray, exam: str) -> None:
        rows[level].append((_task_index(truth, task), denser_argmax(probs),
                            _dense_prob(probs, task), exam_idx[exam]))

    by_breast: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in preds:
        add(f"view:{p.slot}", p.density, p.probs, p.exam_id)
        add("image", p.density, p.probs, p.exam_id)
        by_breast[(p.exam_id, p.laterality)].append(p)

    breast_out: dict[str, dict[str, tuple[np.ndarray, str]]] = defaultdict(dict)
    for (exam, lat), items in sorted(by_breast.items()):
        mean = np.mean([p.probs for p in items], axis=0)
        truth = items[0].density
        for p in items[1:]:
            truth = _denser(truth, p.density)
        breast_out[exam][lat] = (mean, truth)
        add(f"breast:{lat}", truth, mean, exam)
        add("breast", truth, mean, exam)

    for exam in exams:
        sides = breast_out[exam]
        truth = None
        for _, t in sides.values():
            truth = t if truth is None else _denser(truth, t)
        assert truth is not None
        y = _task_index(truth, task)
        if task == "birads4":
            decision = decide_birads4({lat: m for lat, (m, _) in sides.items()},
                                      DENSITY_CLASSES)
            pred, dense = decision.category, decision.p_dense
        else:
            exam_preds = [p for p in preds if p.exam_id == exam]
            dense, is_dense = decide_dense2([_dense_prob(p.probs, task) for p in exam_preds])
            pred = int(is_dense)
        rows["exam"].append((y, pred, dense, exam_idx[exam]))

    out = {}
    for level, r in rows.items():
        arr = np.array(r, dtype=float)
        y_true = arr[:, 0].astype(int)
        out[level] = LevelData(
            y_true=y_true, y_pred=arr[:, 1].astype(int),
            dense_true=(y_true >= 2).astype(int) if task == "birads4" else y_true,
            dense_score=arr[:, 2], groups=arr[:, 3].astype(int))
    return out


def _stats(d: LevelData, task: str, idx: np.ndarray | None = None) -> dict[str, float]:
    n = len(TASKS[task])
    if idx is None:
        idx = np.arange(len(d.y_true))
    t, p = d.y_true[idx], d.y_pred[idx]
    dense_pred = (p >= 2).astype(int) if task == "birads4" else p
    return {
        "accuracy": accuracy(t, p),
        "kappa_linear": kappa_linear(t, p, n),
        "kappa_quadratic": cohen_kappa(t, p, n, weights="quadratic") if len(t) else float("nan"),
        "dense_accuracy": accuracy(d.dense_true[idx], dense_pred),
        "dense_auc": roc_auc(d.dense_true[idx], d.dense_score[idx]),
    }


def bootstrap_ci(d: LevelData, task: str, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals, resampling exams (all rows of an exam together)."""
    rng = np.random.default_rng(seed)
    groups = np.unique(d.groups)
    members = {g: np.flatnonzero(d.groups == g) for g in groups}
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_boot):
        pick = rng.choice(groups, size=len(groups), replace=True)
        idx = np.concatenate([members[g] for g in pick])
        for k, v in _stats(d, task, idx).items():
            if not np.isnan(v):
                samples[k].append(v)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
            for k, v in samples.items() if v}


def evaluate_predictions(preds: Iterable[Prediction], task: str = "birads4", *,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, object]:
    """All metrics of all levels, JSON-ready."""
    preds = list(preds)
    if not preds:
        raise ValueError("no predictions to evaluate")
    classes = list(TASKS[task])
    levels = build_levels(preds, task)
    out: dict[str, object] = {"task": task, "classes": classes,
                              "exams": len({p.exam_id for p in preds}),
                              "images": len(preds), "levels": {}}
    order = [f"view:{s}" for s in SLOT_ORDER] + ["image", "breast:R", "breast:L", "breast",
                                                 "exam"]
    for level in [lv for lv in order if lv in levels]:
        d = levels[level]
        conf = confusion(d.y_true, d.y_pred, len(classes))
        entry: dict[str, object] = {"n": len(d.y_true), **_stats(d, task)}
        entry["recall"] = dict(zip(classes, recall_per_class(conf), strict=True))
        entry["confusion"] = conf.tolist()
        if n_boot:
            entry["ci95"] = {k: list(v) for k, v in
                             bootstrap_ci(d, task, n_boot=n_boot, seed=seed).items()}
        out["levels"][level] = entry  # type: ignore[index]
    return out


# --------------------------------------------------------------------------- reports

def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "  -  "
    return f"{100 * float(v):5.1f}"


def format_table(result: dict) -> str:
    """A readable table: one row per level, accuracy with its 95% interval."""
    lines = [f"task {result['task']}: {result['exams']} exams, {result['images']} images",
             f"{'level':<12} {'n':>5}  {'acc%':>5} {'95% CI':>13}  {'kappa':>6}  "
             f"{'dense%':>6}  {'AUC':>5}"]
    for level, e in result["levels"].items():
        ci = e.get("ci95", {}).get("accuracy")
        ci_s = f"[{_fmt(ci[0])},{_fmt(ci[1])}]" if ci else ""
        kappa = e["kappa_linear"]
        kappa_s = f"{kappa:6.3f}" if not np.isnan(kappa) else "   -  "
        auc = e["dense_auc"]
        auc_s = f"{auc:5.3f}" if not np.isnan(auc) else "  -  "
        lines.append(f"{level:<12} {e['n']:>5}  {_fmt(e['accuracy'])} {ci_s:>13}  {kappa_s}  "
                     f"{_fmt(e['dense_accuracy']):>6}  {auc_s}")
    return "\n".join(lines)


def write_confusion(result: dict, level: str, out_dir: Path, *,
                    png: bool = True) -> tuple[Path, Path | None]:
    """Confusion matrix of ``level`` as CSV and (``png``) PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = result["classes"]
    conf = np.asarray(result["levels"][level]["confusion"])
    stem = "confusion_" + level.replace(":", "_")
    csv_path = out_dir / f"{stem}.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["truth \\ predicted", *classes])
        for c, row in zip(classes, conf.tolist(), strict=True):
            w.writerow([c, *row])
    if not png:
        return csv_path, None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(conf, cmap="Blues")
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center",
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"{level} ({result['task']})")
    fig.tight_layout()
    png_path = out_dir / f"{stem}.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def write_report(result: dict, out_dir: Path, *,
                 png_levels: Sequence[str] | None = None) -> dict[str, str]:
    """metrics.json, metrics.txt and confusion CSV/PNG of every level; returns the paths.

    ``png_levels`` limits the PNGs to those levels (default: all).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "metrics.txt").write_text(format_table(result) + "\n")
    paths = {"json": str(out_dir / "metrics.json"), "table": str(out_dir / "metrics.txt")}
    for level in result["levels"]:
        png = png_levels is None or level in png_levels
        csv_path, png_path = write_confusion(result, level, out_dir, png=png)
        paths[f"confusion:{level}"] = str(csv_path)
        if png_path is not None:
            paths[f"confusion_png:{level}"] = str(png_path)
    return paths


def summary(result: dict) -> dict[str, float]:
    """The few headline figures stored in a registry manifest."""
    out: dict[str, float] = {"exams": result["exams"]}
    for level, e in result["levels"].items():
        key = level.replace(":", "_")
        out[f"{key}_accuracy"] = round(e["accuracy"], 4)
        if level in ("exam", "breast"):
            out[f"{key}_kappa_linear"] = round(e["kappa_linear"], 4)
            out[f"{key}_dense_accuracy"] = round(e["dense_accuracy"], 4)
            if not np.isnan(e["dense_auc"]):
                out[f"{key}_dense_auc"] = round(e["dense_auc"], 4)
            if "ci95" in e and "accuracy" in e["ci95"]:
                out[f"{key}_accuracy_ci95"] = [round(x, 4) for x in e["ci95"]["accuracy"]]
    return out
