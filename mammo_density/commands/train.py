"""``mammo-density train``: train the per-view networks (and the method's experiments).

Plain training: see :mod:`mammo_density.train.train`. Experiments:
``--sweep-sizes 250:850:100`` trains and evaluates every input size (the method's
input-size table); ``--cv K`` runs K-fold patient-level cross-validation and reports mean
and spread.
"""

from __future__ import annotations

import argparse

from mammo_density.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mammo_density.train.args import get_args_parser

    p = sub.add_parser("train", help="train the per-view density networks (PyTorch)",
                       description="Train the method's per-view residual networks.")
    get_args_parser(parser=p)
    g = p.add_argument_group("experiments")
    g.add_argument("--sweep-sizes", metavar="START:STOP:STEP", default=None,
                   help="train and test every input size in the range (the method: "
                   "250:850:100); one run folder per size under --out")
    g.add_argument("--cv", type=int, default=0, metavar="K",
                   help="K-fold patient-level cross-validation under --out/fold-<i>")
    g.add_argument("--fold-workers", type=int, default=1, metavar="N",
                   help="with --cv: train N folds at once in separate processes")
    g.add_argument("--eval-split", default="test",
                   help="split the experiments score (default test)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from mammo_density.train import experiments
    from mammo_density.train.data import read_manifest_csv
    from mammo_density.train.train import main

    try:
        read_manifest_csv(args.manifest)  # fail early, with the row and column at fault
        if args.sweep_sizes:
            return experiments.input_size_sweep(args,
                                                experiments.parse_range(args.sweep_sizes))
        if args.cv:
            return experiments.cross_validate(args, args.cv)
        return main(args)
    except (OSError, ValueError) as err:
        print(f"mammo-density train: {err}", file=sys.stderr)
        return 2
