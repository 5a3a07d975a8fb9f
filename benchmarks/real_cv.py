"""Cross-validation on a real labelled set: baselines and CNN recipes on the same folds.

One run, the same patient folds (``--k`` folds by woman, stratified by density) and the same
inner validation patients for everything:

- ``majority``: the most frequent training class;
- ``features+LR``: hand-made histogram/texture features of the breast + logistic regression
  (scikit-learn; :mod:`mammo_density.train.baselines`);
- one row per CNN variant (``--variant NAME="train options"``; default the ``small-real``
  recipe), each trained by ``mammo-density train --cv K``;
- with ``--probe-weights W``, ``embeddings+LR``: the linear probe of pretrained weights
  (``--probe-arch``'s pooled features, frozen, + the same logistic regression);
- ``<first variant>+LR``: late fusion of the first variant and ``features+LR`` (per image,
  the mean of their probabilities; nothing fitted on top);
- with ``--ensemble``, ``mean of variants``: per image the mean of every variant's fold
  network (variants that differ only by ``--seed`` make a seed ensemble).

Per method and level (image, breast, exam): accuracy, linear and quadratic kappa (mean and
sample sd over folds), per-class recall and confusion pooled over the out-of-fold
predictions (PNG per method), wall time. Writes ``real_cv.json`` and ``real_cv.md`` to
``--out`` (outside the repository: nothing per image, but the folds are real patients').
``--export NAME`` exports the first variant's fold models as one registry entry (mean of
their probabilities) with this table in its model card.

One split of a few hundred images can flatter one method: on INbreast at 650 px the
exported recipe was level with the features baseline on one split seed and 4.3-4.6 image
points below it on two others. ``--split-seed 0,1,2`` runs everything once per seed
(``OUT/split-N``, each with its own table) and writes the summary over the splits to
``OUT``: per method and level the mean and range of accuracy and kappa over the splits,
and the paired difference to ``features+LR`` split by split. ``--inbreast ROOT`` builds
the manifest first with the INbreast adapter (PNG copy or original DICOM).

    python -m benchmarks.real_cv --inbreast /data/inbreast --input-size 256 --threads 2 \\
        --out /tmp/real_cv
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from mammo_density.train.args import ARCHS

DEFAULT_VARIANTS = {"cnn-small-real": "--recipe small-real"}
ENSEMBLE_ROW = "mean of variants"


def _parse_variant(text: str) -> tuple[str, str]:
    name, _, opts = text.partition("=")
    if not name or not opts:
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS, got {text!r}")
    return name.strip(), opts


def machine() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    load = os.getloadavg()[0]
    return (f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores, torch threads "
            f"{torch.get_num_threads()}, load avg at start {load:.1f}")


def _write_report(out: Path, args: argparse.Namespace, info: dict, rows: dict,
                  done: list[str], wall: float) -> None:
    from mammo_density.train.experiments import format_cv_table

    complete = done == list(info["variants"])
    report = {**info, "wall_seconds": round(wall, 1), "variants_done": done,
              "complete": complete, "rows": rows}
    (out / "real_cv.json").write_text(json.dumps(report, indent=2) + "\n")
    times = ", ".join(f"{n} {r.get('wall_seconds', r.get('seconds', 0)) / 60:.1f} min"
                      for n, r in rows.items())
    md = (f"# Cross-validation: {args.k} folds by patient (split seed {args.split_seed}), "
          f"{args.input_size} px\n\n{format_cv_table(rows)}\n\n"
          f"- command: `{info['command']}`\n- machine: {info['machine']}\n"
          f"- date: {info['date']}\n- wall time: {wall / 60:.1f} min ({times})\n"
          f"- variants: {json.dumps(info['variants'])}"
          f"{'' if complete else f' (finished: {done})'}\n"
          f"- confusion matrices: `<variant>/pooled-*/confusion_*.png`\n")
    (out / "real_cv.md").write_text(md)


def _export(runs: list[Path], dest: Path, name: str, args: argparse.Namespace, info: dict,
            rows: dict) -> None:
    """Fold models as one registry entry (the first variant's, or with ``--ensemble``
    every variant's); its card holds the table measured up to then."""
    from mammo_density.train.export import export_cv

    entry = export_cv(
        runs, dest, name=name, version="0.0.0-cv",
        training_data=f"{info['manifest']} ({args.k}-fold CV ensemble"
        f"{f' of {len(runs)} runs' if len(runs) > 1 else ''})",
        intended_use="research: cross-validation ensemble on a development set",
        not_for_clinical_use=True, commands=[info["command"]],
        cv_report={"k": args.k, "split_seed": args.split_seed,
                   "input_size": args.input_size, "rows": dict(rows)})
    print(f"exported {dest}: inference {entry.metrics['inference_ms_per_image']} ms/image",
          flush=True)


def run_split(args: argparse.Namespace, out: Path, manifest: Path, info: dict) -> dict:
    """Every method on the folds of one split seed (``args.split_seed``, an int here):
    the report in ``out`` is rewritten after each variant. Returns the rows."""
    from mammo_density.train.args import get_args_parser
    from mammo_density.train.experiments import PROBE_ROW, cross_validate

    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache_dir or out / "cache"
    variants = info["variants"]
    rows: dict[str, dict] = {}
    t_all = time.perf_counter()
    for i, (name, opts) in enumerate(variants.items()):
        targs = get_args_parser().parse_args(
            ["--manifest", str(manifest), "--out", str(out / name), "--input-size",
             str(args.input_size), "--split-seed", str(args.split_seed), "--device",
             args.device, "--cache-dir", str(cache), "--no-progress", "--no-tensorboard",
             *(["--threads", str(args.threads)] if args.threads else []),
             *(["--probe-weights", str(args.probe_weights)]
               if args.probe_weights and i == 0 else []),
             *(["--probe-arch", args.probe_arch] if args.probe_arch and i == 0 else []),
             *shlex.split(opts)])
        targs.fold_workers = args.fold_workers
        t0 = time.perf_counter()
        cross_validate(targs, args.k, baselines=(i == 0))
        cv = json.loads((out / name / "cv.json").read_text())
        cv["rows"]["cnn"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if i == 0:
            rows["majority"] = cv["rows"]["majority"]
            rows["features+LR"] = cv["rows"]["features+LR"]
            if PROBE_ROW in cv["rows"]:
                rows[PROBE_ROW] = cv["rows"][PROBE_ROW]
        rows[name] = cv["rows"]["cnn"]
        if i == 0:
            rows[f"{name}+LR"] = cv["rows"]["cnn+LR"]  # late fusion, mean of probabilities
        # the report is rewritten after every variant: a run stopped by a time limit keeps
        # what it finished
        _write_report(out, args, info, rows, done=list(variants)[:i + 1],
                      wall=time.perf_counter() - t_all)
        if i == 0 and args.export:
            _export([out / name], out / "model", args.export, args, info, rows)
        if i == 0:
            first = targs
    if args.ensemble and len(variants) > 1:
        from mammo_density.train.experiments import ensemble_row

        rows[ENSEMBLE_ROW] = ensemble_row([out / name for name in variants], first, args.k,
                                          out / "pooled-ensemble")
        _write_report(out, args, info, rows, done=list(variants),
                      wall=time.perf_counter() - t_all)
        if args.export:
            _export([out / name for name in variants], out / "model-ensemble",
                    f"{args.export}-ensemble", args, info, rows)
    return rows


def _mean_of(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise_splits(per_split: dict[int, dict[str, dict]],
                     reference: str = "features+LR") -> dict[str, dict]:
    """Each method's figures over several split seeds: per level, the mean over splits of
    the split's fold mean of each CV metric, its lowest and highest split, the mean
    pooled recall per class, and the paired difference to ``reference`` (the same folds,
    split by split). Only methods scored on every split are summarised."""
    from mammo_density.train.experiments import CV_LEVELS, CV_METRICS

    splits = list(per_split.values())
    names = [n for n in splits[0] if all(n in rows for rows in splits)]
    out: dict[str, dict] = {}
    for name in names:
        levels = {}
        for level in CV_LEVELS:
            runs = [rows[name]["summary"].get(level) for rows in splits]
            if any(r is None for r in runs):
                continue
            entry: dict[str, object] = {}
            for metric in CV_METRICS:
                if any(r.get(metric) is None for r in runs):
                    continue  # not defined on every split: no mean that compares
                values = [float(r[metric]) for r in runs]
                entry[metric] = float(np.mean(values))
                entry[f"{metric}_range"] = [min(values), max(values)]
                ref = [rows[reference]["summary"].get(level, {}).get(metric)
                       for rows in splits] if reference in names else [None]
                if name != reference and None not in ref:
                    diff = [v - float(r) for v, r in zip(values, ref, strict=True)]
                    entry[f"{metric}_vs_{reference}"] = float(np.mean(diff))
                    entry[f"{metric}_vs_{reference}_range"] = [min(diff), max(diff)]
            # a class absent from a split's pooled predictions has no recall there
            classes = runs[0].get("recall") or {}
            entry["recall"] = {c: _mean_of([(r.get("recall") or {}).get(c) for r in runs])
                               for c in classes}
            levels[level] = entry
        out[name] = levels
    return out


def format_splits_table(summary: dict[str, dict], seeds: list[int],
                        reference: str = "features+LR") -> str:
    """Markdown: per method and level, mean accuracy % [lowest, highest split] / linear
    kappa, the paired difference to ``reference``, mean recall per class; the levels of
    the single-split tables."""
    from mammo_density.train.experiments import CV_TABLE_LEVELS

    lines = [f"| method | level | accuracy % over splits {seeds} [range] | kappa linear "
             f"[range] | kappa quadratic | vs {reference}: accuracy points / kappa linear "
             "[range of accuracy] | recall per class |", "|---|---|---|---|---|---|---|"]

    def pct(v: float | None, signed: bool = False) -> str:
        return "-" if v is None else f"{100 * v:{'+' if signed else ''}.1f}"

    def kap(v: float | None, signed: bool = False) -> str:
        return "-" if v is None else f"{v:{'+' if signed else ''}.3f}"

    for name, levels in summary.items():
        for level, e in levels.items():
            if level not in CV_TABLE_LEVELS:
                continue
            lo, hi = e.get("accuracy_range", (None, None))
            klo, khi = e.get("kappa_linear_range", (None, None))
            key = f"accuracy_vs_{reference}"
            dlo, dhi = e.get(f"{key}_range", (None, None))
            vs = (f"{pct(e[key], True)} / {kap(e.get(f'kappa_linear_vs_{reference}'), True)} "
                  f"[{pct(dlo, True)}, {pct(dhi, True)}]") if key in e else "-"
            recall = " ".join(f"{c} {'-' if v is None else f'{v:.2f}'}"
                              for c, v in e["recall"].items())
            lines.append(f"| {name} | {level} | {pct(e.get('accuracy'))} [{pct(lo)}, "
                         f"{pct(hi)}] | {kap(e.get('kappa_linear'))} [{kap(klo)}, {kap(khi)}] "
                         f"| {kap(e.get('kappa_quadratic'))} | {vs} | {recall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mammo_density.train.experiments import parse_range

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="labelled training manifest CSV")
    src.add_argument("--inbreast", type=Path, help="INbreast root (INbreast.csv + images)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default /tmp/real_cv-<UTC time>)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--split-seed", type=parse_range, default=[0],
                   help="the folds' seed; several (0,1,2 or 0:2:1) run everything once per "
                   "seed into OUT/split-N and summarise over the splits in OUT")
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--variant", type=_parse_variant, action="append", default=[],
                   help='NAME="train options" (repeatable); default '
                   f"{DEFAULT_VARIANTS}")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--fold-workers", type=int, default=1,
                   help="folds trained at once in separate processes (1 thread each is "
                   "best on a small shared CPU: --threads 1 --fold-workers 2)")
    p.add_argument("--export", metavar="NAME", default=None,
                   help="export the first variant's fold models as registry entry NAME "
                   "into OUT/model (with --ensemble also every variant's, as NAME-ensemble "
                   "into OUT/model-ensemble); one split seed only")
    p.add_argument("--probe-weights", type=Path, default=None,
                   help="pretrained weights (as --init-from takes them) to score as a "
                   "linear probe on the same folds: row embeddings+LR")
    p.add_argument("--probe-arch", default=None, choices=ARCHS,
                   help="architecture of --probe-weights (default: train's, mobilenet_v2)")
    p.add_argument("--ensemble", action="store_true",
                   help="add the row of the mean of all variants' networks (per fold)")
    args = p.parse_args(argv)
    seeds = list(dict.fromkeys(args.split_seed))
    if not seeds:
        p.error("--split-seed: no seed given")
    if args.export and len(seeds) > 1:
        p.error("--export exports the models of one split: give one --split-seed")

    import torch

    from mammo_density.logsetup import configure_logging

    configure_logging(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp = dt.datetime.now(dt.UTC)
    out = args.out or Path(f"/tmp/real_cv-{stamp:%Y%m%d-%H%M}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = args.manifest
    if args.inbreast:
        from mammo_density.train.adapters import get

        manifest = out / "manifest.csv"
        get("inbreast").convert(args.inbreast, manifest)
    if len(seeds) > 1 and args.cache_dir is None:
        args.cache_dir = out / "cache"  # the prepared images do not depend on the split
    info = {"command": " ".join(shlex.quote(a) for a in [sys.executable, "-m",
                                                          "benchmarks.real_cv", *(argv or
                                                                                  sys.argv[1:])]),
            "machine": machine(), "date": f"{stamp:%Y-%m-%d %H:%M} UTC", "k": args.k,
            "split_seed": seeds[0] if len(seeds) == 1 else seeds,
            "input_size": args.input_size,
            "variants": dict(args.variant) or dict(DEFAULT_VARIANTS),
            "manifest": str(manifest)}
    if len(seeds) == 1:
        args.split_seed = seeds[0]
        run_split(args, out, manifest, info)
        print((out / "real_cv.md").read_text())
        return 0
    t_all = time.perf_counter()
    per_split: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        a = copy.copy(args)
        a.split_seed = seed
        per_split[seed] = run_split(a, out / f"split-{seed}", manifest,
                                    {**info, "split_seed": seed})
    summary = summarise_splits(per_split)
    wall = time.perf_counter() - t_all
    (out / "real_cv.json").write_text(json.dumps(
        {**info, "wall_seconds": round(wall, 1), "summary": summary,
         "splits": {str(s): rows for s, rows in per_split.items()}}, indent=2) + "\n")
    (out / "real_cv.md").write_text(
        f"# Cross-validation over {len(seeds)} split seeds: {args.k} folds by patient each, "
        f"{args.input_size} px\n\n{format_splits_table(summary, seeds)}\n\n"
        f"Each split's own table: `split-N/real_cv.md`.\n\n"
        f"- command: `{info['command']}`\n- machine: {info['machine']}\n"
        f"- date: {info['date']}\n- wall time: {wall / 60:.1f} min\n"
        f"- variants: {json.dumps(info['variants'])}\n")
    print((out / "real_cv.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
