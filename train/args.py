"""Command-line options of training (torch-free, so the CLI can build its parser cheaply)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammo_density.study.slots import SLOTS

TASKS = ("birads4", "dense2")


def get_args_parser(add_help: bool = True,
                    parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(description="Train per-view density networks",
                                          add_help=add_help)
    g = p.add_argument_group("data")
    g.add_argument("--manifest", required=True, type=Path, help="training manifest CSV")
    g.add_argument("--view", default="all", choices=[*SLOTS, "all"],
                   help="view slot to train, or all four")
    g.add_argument("--task", default="birads4", choices=TASKS)
    g.add_argument("--input-size", type=int, default=650, help="square input side (px)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessed-array cache (default OUT/cache)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of patients for validation when the manifest has no val split")
    g.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of patients held out for test when the manifest has no splits")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--folds", type=int, default=0, help="k for k-fold CV (with --fold)")
    g.add_argument("--fold", type=int, default=None,
                   help="hold this fold out as the test set (0-based); validation patients "
                   "come from the other folds")
    g.add_argument("--consensus", default="majority", choices=("majority", "median"),
                   help="how several readers' labels become one")
    g.add_argument("--soft-labels", action="store_true",
                   help="train on the readers' label distribution instead of the consensus")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=int, default=16, help="first-stage bottleneck channels")
    g.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("optimisation (the method's defaults)")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--batch-size", type=int, default=8, help="per process")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                   help="the method's SGD, or AdamW")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--lr-factor", type=float, default=0.1, help="decay on val-loss plateau")
    g.add_argument("--lr-patience", type=int, default=15)
    g.add_argument("--rotation", type=float, default=20.0, help="max random rotation (deg)")
    g.add_argument("--no-normalise", action="store_true",
                   help="skip centring/normalisation (mean 0, std 1)")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue from OUT/<view>/checkpoint.pth")
    g.add_argument("--parallel", type=int, default=0,
                   help="with --view all: views trained at once "
                   "(default: number of GPUs, 1 on CPU)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--no-tensorboard", action="store_true")
    return p
