"""Command-line options of training (torch-free, so the CLI can build its parser cheaply)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mammo_density.study.slots import SLOTS
from mammo_density.train.recipes import DEFAULT_RECIPE, RECIPES

TASKS = ("birads4", "dense2")
ARCHS = ("density-resnet", "resnet18", "mobilenet_v2")


def get_args_parser(add_help: bool = True,
                    parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(description="Train per-view density networks",
                                          add_help=add_help)
    g = p.add_argument_group("data")
    g.add_argument("--manifest", required=True, type=Path, help="training manifest CSV")
    g.add_argument("--view", default="all", choices=[*SLOTS, "all"],
                   help="view slot to train, or all the views the manifest holds")
    g.add_argument("--task", default="birads4", choices=TASKS)
    g.add_argument("--input-size", type=int, default=650, help="square input side (px)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessed-array cache (default OUT/cache)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="share of training patients for validation when the manifest has no "
                   "val split (method 0.1, small-real 0.2)")
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
    g.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="preset of the options below that are not given (default "
                   f"{DEFAULT_RECIPE}; see docs/training.md)")
    g = p.add_argument_group("model")
    g.add_argument("--network", default=None, choices=("per-view", "shared"),
                   help="one network per view (the method) or one shared by all views")
    g.add_argument("--arch", default=None, choices=ARCHS,
                   help="density-resnet (the method's 41-layer ResNet), resnet18 or "
                   "mobilenet_v2 (torchvision's layouts, for --init-from torchvision "
                   "weights)")
    g.add_argument("--init-from", type=Path, default=None,
                   help="start from these weights: a state dict (torchvision/timm network "
                   "of --arch's layout, matched by key and shape) or a checkpoint of an "
                   "earlier run")
    g.add_argument("--probe-weights", type=Path, default=None,
                   help="with --cv: also score these weights (as --init-from takes them) "
                   "frozen, their pooled features + logistic regression on the same folds "
                   "(row embeddings+LR)")
    g.add_argument("--probe-arch", default="mobilenet_v2", choices=ARCHS,
                   help="the architecture of --probe-weights (default mobilenet_v2)")
    g.add_argument("--width", type=int, default=None,
                   help="density-resnet: first-stage bottleneck channels (method 16)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--head", default="pool", choices=("pool", "density-map"),
                   help="density-resnet's head: global average pool + linear, or a "
                   "dense-tissue map whose share of the breast is cut by ordered thresholds")
    g = p.add_argument_group("optimisation (the method's defaults)")
    g.add_argument("--epochs", type=int, default=None, help="(method 100)")
    g.add_argument("--batch-size", type=int, default=None, help="per process (method 8)")
    g.add_argument("--optimizer", default=None, choices=("sgd", "adamw"),
                   help="the method's SGD, or AdamW")
    g.add_argument("--lr", type=float, default=None, help="learning rate (method 0.1)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--scheduler", default=None, choices=("plateau", "cosine"),
                   help="decay on a validation-loss plateau (method) or cosine over the epochs")
    g.add_argument("--lr-factor", type=float, default=None, help="decay on val-loss plateau")
    g.add_argument("--lr-patience", type=int, default=None)
    g.add_argument("--loss", default=None, choices=("ce", "ordinal"),
                   help="cross-entropy, or cross-entropy plus the squared distance between "
                   "the cumulative distributions (penalises A->D more than A->B)")
    g.add_argument("--class-weights", default=None, choices=("none", "balanced"),
                   help="loss weights inversely proportional to the training class counts")
    g.add_argument("--sampler", default=None, choices=("random", "balanced"),
                   help="draw training images uniformly or class-balanced")
    g.add_argument("--select", default=None, choices=("acc", "kappa", "loss", "last"),
                   help="model selection on validation accuracy (method), linear kappa, "
                   "loss, or the last epoch (a fixed schedule)")
    g.add_argument("--early-stop", type=int, default=None,
                   help="stop after this many epochs without a better selection metric "
                   "(0: never)")
    g.add_argument("--bn-recalibrate", type=int, default=None, metavar="N",
                   help="before each validation, recompute the batch-norm statistics on N "
                   "training images without augmentation (0: off; single process only)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="keep the batch-norm statistics of --init-from while fine-tuning "
                   "(eval-mode batch norm; excludes --bn-recalibrate)")
    g.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="temperature scaling on the validation images (reported as ECE)")
    g = p.add_argument_group("augmentation (no left/right flips: orientation is normalised)")
    g.add_argument("--train-crop", type=int, default=0, metavar="PX",
                   help="train on random PX x PX patches centred on breast tissue; "
                   "validation, test and the exported model see the whole image (the "
                   "network pools globally). 0: whole images")
    g.add_argument("--rotation", type=float, default=None, help="max random rotation (deg)")
    g.add_argument("--scale", type=float, default=None, help="max relative zoom in/out")
    g.add_argument("--translate", type=float, default=None, help="max shift (share of side)")
    g.add_argument("--gamma", type=float, default=None,
                   help="random gamma in [1/(1+g), 1+g] on the breast's intensities")
    g.add_argument("--contrast", type=float, default=None,
                   help="random contrast factor in [1-c, 1+c] about the breast's mean")
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
