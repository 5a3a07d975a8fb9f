"""``mammo-density export``: trained checkpoints -> ONNX model-registry entry.

Each view's network is exported with a dynamic batch axis, checked by ``onnx.checker`` and
by ONNX Runtime against PyTorch on the same inputs (max abs difference of the softmax
<= 1e-4 in fp32, 1e-2 with ``--fp16``); the manifest records sha256s, metrics, training
data, preprocessing version and the commands that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export trained networks to an ONNX registry entry")
    p.add_argument("--run", required=True, type=Path, action="append",
                   help="training output (<view>/best.pth or shared/best.pth), or the output "
                   "of `train --cv K` (fold-<i>/...): then the K fold models are exported "
                   "together, each view's file averaging their probabilities. Repeat it "
                   "for several --cv runs on the same folds (e.g. different --seed): all "
                   "their fold models go into the mean")
    p.add_argument("--cv-report", type=Path, default=None,
                   help="with a --cv run: a cross-validation JSON with baselines' rows "
                   "(default RUN/cv.json) for the manifest and model card")
    p.add_argument("--out", required=True, type=Path, help="registry entry folder to write")
    p.add_argument("--name", required=True, help="model name, e.g. site-birads4")
    p.add_argument("--version", dest="model_version", default="0.1.0", help="model version")
    p.add_argument("--checkpoint", default="best", choices=("best", "checkpoint"))
    p.add_argument("--training-data", default="", help="what it was trained on (free text)")
    p.add_argument("--metrics", type=Path, default=None,
                   help="metrics.json from `mammo-density evaluate --out` to record")
    p.add_argument("--intended-use", default="")
    p.add_argument("--not-for-clinical-use", action="store_true",
                   help="flag the entry as not for clinical use (demo / research models)")
    p.add_argument("--command", action="append", default=[], dest="commands",
                   help="a command that made the model (repeatable; recorded in the manifest)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights (parity tolerance 1e-2)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.train.export import export_cv, export_run, fold_dirs

    cv_runs = [run for run in args.run if fold_dirs(run)]
    if len(args.run) > 1 and len(cv_runs) < len(args.run):
        print("mammo-density export: several --run are only for `train --cv K` outputs; "
              f"not one: {', '.join(str(r) for r in args.run if r not in cv_runs)}",
              file=sys.stderr)
        return 1
    try:
        if cv_runs:
            report = json.loads(args.cv_report.read_text()) if args.cv_report else None
            if report is not None and "rows" not in report and "splits" in report:
                print(f"mammo-density export: {args.cv_report} summarises several split "
                      "seeds; the model card takes the table of the split these runs "
                      "come from (OUT/split-N/real_cv.json)", file=sys.stderr)
                return 1
            manifest = export_cv(
                cv_runs, args.out, name=args.name, version=args.model_version,
                which=args.checkpoint, training_data=args.training_data,
                intended_use=args.intended_use,
                not_for_clinical_use=args.not_for_clinical_use, commands=args.commands,
                fp16=args.fp16, opset=args.opset, cv_report=report)
            _print(args, manifest)
            return 0
        metrics = evaluation = None
        if args.metrics:
            from mammo_density.train.metrics import summary

            evaluation = json.loads(Path(args.metrics).read_text())
            metrics = summary(evaluation)
        manifest = export_run(
            args.run[0], args.out, name=args.name, version=args.model_version,
            which=args.checkpoint, training_data=args.training_data, metrics=metrics,
            intended_use=args.intended_use, not_for_clinical_use=args.not_for_clinical_use,
            commands=args.commands, fp16=args.fp16, opset=args.opset, evaluation=evaluation)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"mammo-density export: {err}", file=sys.stderr)
        return 1
    _print(args, manifest)
    return 0


def _print(args: argparse.Namespace, manifest: object) -> None:
    parity = manifest.metrics.get("export_parity_max_abs_diff", {})
    print(f"wrote {args.out}: {manifest.name} {manifest.version} ({manifest.task}, "
          f"{manifest.input_size} px, views {', '.join(manifest.views)}); "
          f"ONNX Runtime vs PyTorch max |diff| {max(parity.values()):.1e}")
