"""Train the method's per-view networks (flat script: ``get_args_parser()``, ``main(args)``).

Single process::

    mammo-density train --manifest M.csv --view R-CC --task birads4 --input-size 650 --out runs/x

All four views (sequentially on CPU or one GPU; one process per GPU when several)::

    mammo-density train --manifest M.csv --view all ...

Several GPUs / processes on one view (DDP, NCCL on GPUs, gloo on CPU)::

    torchrun --nproc_per_node 4 -m mammo_density.train.train --manifest M.csv --view R-CC ...

Output per view, in ``OUT/<view>/``: ``checkpoint.pth`` (last epoch, for ``--resume``),
``best.pth`` (weights at the best validation accuracy: the method's model selection),
``log.csv``, ``curves.png``, ``tensorboard/`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from mammo_density.study.slots import SLOTS
from mammo_density.train import data as mdata
from mammo_density.train.args import get_args_parser
from mammo_density.train.dataset import (
    ArrayCache,
    Augment,
    DensityDataset,
    compute_normalisation,
)
from mammo_density.train.distributed import (
    DistInfo,
    all_gather_object,
    cleanup,
    init_distributed,
    resolve_device,
    seed_everything,
    state_digest,
    unwrap,
)
from mammo_density.train.engine import (
    balanced_class_weights,
    evaluate,
    make_loss,
    recalibrate_batchnorm,
    train_one_epoch,
)
from mammo_density.train.model import build_network, load_init_weights
from mammo_density.train.recipes import apply_recipe

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data

def load_records(args: argparse.Namespace) -> list[mdata.ImageRecord]:
    """Manifest -> screening images with train/val/test splits (patient-level)."""
    records = mdata.screening_records(
        mdata.read_manifest_csv(args.manifest, consensus_method=args.consensus))
    if args.folds and args.fold is not None:
        folds = mdata.kfold_patients(records, args.folds, seed=args.split_seed)
        _, held = folds[args.fold]
        for r in records:
            r.split = "test" if r.patient_id in held else ""
        train = [r for r in records if not r.split]
        mdata.patient_split(train, val=args.val_fraction, test=0.0, seed=args.split_seed,
                            keep_existing=False)
        return records
    if not all(r.split for r in records):
        mdata.patient_split(records, val=args.val_fraction, test=args.test_fraction,
                            seed=args.split_seed, keep_existing=False)
    mdata.check_patient_disjoint(records)
    if not any(r.split == "val" for r in records):
        # The manifest fixes train/test only: carve validation patients out of train.
        train = [r for r in records if r.split == "train"]
        mdata.patient_split(train, val=args.val_fraction, test=0.0, seed=args.split_seed,
                            keep_existing=False)
    return records


def save_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["train_loss"] for h in history], label="train")
    a1.plot(ep, [h["val_loss"] for h in history], label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a2.plot(ep, [h["train_acc"] for h in history], label="train")
    a2.plot(ep, [h["val_acc"] for h in history], label="val")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend()
    fig.suptitle(path.parent.name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    return build_network(getattr(args, "arch", None) or "density-resnet",
                         num_classes=len(mdata.TASKS[args.task]), width=args.width,
                         dropout=args.dropout, head=args.head)


def manifest_slots(args: argparse.Namespace) -> list[str]:
    """The view slots the manifest holds, in the usual order (R-CC, L-CC, R-MLO, L-MLO)."""
    present = {r.slot for r in mdata.screening_records(
        mdata.read_manifest_csv(args.manifest, consensus_method=args.consensus))}
    return [s for s in SLOTS if s in present]


def training_units(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(output folder name, view slots it trains on) for ``--view`` and ``--network``.

    ``per-view``: one unit per view slot the manifest holds (or the one ``--view``);
    ``shared``: one unit, ``shared``, trained on all of them.
    """
    slots = manifest_slots(args) if args.view == "all" else [args.view]
    if not slots:
        raise SystemExit(f"{args.manifest}: no CC or MLO images")
    if args.network == "shared":
        return [("shared", slots)]
    return [(s, [s]) for s in slots]


def _kappa(targets: list[int], probs: np.ndarray, n: int) -> float:
    if not len(targets):
        return float("nan")
    return mdata.cohen_kappa(targets, probs.argmax(1), n, weights="linear")


def _selection_score(select: str, acc: float, kappa: float, loss: float) -> float:
    """Higher is better. ``kappa`` ties (common on small sets) are broken by the loss."""
    if select == "acc":
        return acc
    if select == "kappa":
        return (kappa if np.isfinite(kappa) else -1.0) - 1e-6 * loss
    if select == "loss":
        return -loss
    return 0.0  # "last": every epoch replaces the previous one


def calibrate_checkpoint(path: Path, model: torch.nn.Module, loader: DataLoader,
                         targets: list[int], device: torch.device) -> dict:
    """Fit a temperature on the validation images and store it in the checkpoint."""
    from mammo_density.train.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
    )

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(ckpt["model"])
    _, probs, idx = evaluate(model, loader, device)
    y = np.asarray(targets)[idx]
    t = fit_temperature(probs, y)
    info = {"temperature": t, "val_images": len(y),
            "ece_before": expected_calibration_error(probs, y),
            "ece_after": expected_calibration_error(apply_temperature(probs, t), y)}
    ckpt["temperature"] = t
    ckpt["calibration"] = info
    torch.save(ckpt, path)
    return info


# --------------------------------------------------------------------------- one view

def train_view(args: argparse.Namespace, slot: str, dist_info: DistInfo,
               slots: list[str] | None = None) -> dict:
    """Train one network on the images of ``slots`` (default: the view ``slot``), written
    to ``OUT/<slot>/``; returns its summary (best score, epoch, normalisation)."""
    apply_recipe(args)
    slots = slots or [slot]
    device = resolve_device(args.device, dist_info)
    use_cuda = device.type == "cuda"
    amp = use_cuda if args.amp is None else args.amp
    channels_last = use_cuda if args.channels_last is None else args.channels_last
    seed_everything(args.seed, dist_info.rank)
    out = Path(args.out) / slot
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    records = load_records(args)
    cache = ArrayCache(args.cache_dir or Path(args.out) / "cache", args.input_size)
    train_all = mdata.select(records, split="train")
    train_recs = [r for r in train_all if r.slot in slots]
    val_recs = [r for r in mdata.select(records, split="val") if r.slot in slots]
    # A fixed schedule (the last epoch's weights, no early stop) may train on every
    # training woman: with --val-fraction 0 there are no validation images.
    fixed_schedule = args.select == "last" and not args.early_stop
    if not train_recs or not (val_recs or fixed_schedule):
        raise SystemExit(f"{slot}: {len(train_recs)} training and {len(val_recs)} validation "
                         "images; need both (a fixed schedule, --select last --early-stop 0, "
                         "trains without validation images)")
    if not val_recs and args.scheduler == "plateau":
        raise SystemExit(f"{slot}: no validation images: --scheduler plateau steps on the "
                         "validation loss; use --scheduler cosine")
    if args.no_normalise:
        mean, std = 0.0, 1.0
    else:
        # One normalisation for all four views (the registry entry has one).
        mean, std = compute_normalisation(train_all, cache)
    progress = dist_info.is_main and not args.no_progress
    augment = Augment(rotation=args.rotation, scale=args.scale, translate=args.translate,
                      gamma=args.gamma, contrast=args.contrast)
    train_ds = DensityDataset(train_recs, cache, task=args.task, mean=mean, std=std,
                              rotation=args.rotation, soft_labels=args.soft_labels,
                              seed=args.seed, augment=augment,
                              crop=args.train_crop)
    n_classes = len(mdata.TASKS[args.task])
    weights = (balanced_class_weights(train_ds.targets(), n_classes)
               if args.class_weights == "balanced" else None)
    loss_fn = make_loss(args.loss, class_weights=weights).to(device)
    val_ds = DensityDataset(val_recs, cache, task=args.task, mean=mean, std=std)
    if dist_info.enabled:
        train_sampler = DistributedSampler(train_ds, shuffle=True, seed=args.seed)
        val_sampler = DistributedSampler(val_ds, shuffle=False)
    elif args.sampler == "balanced":
        counts = np.bincount(train_ds.targets(), minlength=n_classes)
        train_sampler = WeightedRandomSampler(
            [1.0 / counts[t] for t in train_ds.targets()], len(train_ds), replacement=True,
            generator=torch.Generator().manual_seed(args.seed))
        val_sampler = SequentialSampler(val_ds)
    else:
        train_sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(args.seed))
        val_sampler = SequentialSampler(val_ds)
    loader_kw = {"num_workers": args.workers, "pin_memory": use_cuda,
                 "persistent_workers": args.workers > 0}
    # Drop a ragged last batch (a batch of one breaks batch norm on small feature maps),
    # unless this process's share is smaller than one batch.
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler,
                              drop_last=len(train_sampler) > args.batch_size, **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=max(args.batch_size, 32), sampler=val_sampler,
                            **loader_kw) if val_recs else None
    bn_loader = None
    if args.bn_recalibrate and not dist_info.enabled and not args.freeze_bn:
        # A fixed, evenly spread subset of the training images, without augmentation.
        step = max(1, len(train_recs) // args.bn_recalibrate)
        bn_ds = DensityDataset(train_recs[::step][:args.bn_recalibrate], cache,
                               task=args.task, mean=mean, std=std)
        bn_loader = DataLoader(bn_ds, batch_size=max(args.batch_size, 16), **loader_kw)

    model = build_model(args)
    if args.init_from and not args.resume:
        counts_loaded = load_init_weights(model, args.init_from)
        log.info("%s: initialised from %s (%d tensors loaded, %d skipped)", slot,
                 args.init_from, counts_loaded["loaded"], counts_loaded["skipped"])
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay)
    if args.scheduler == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.\
            ReduceLROnPlateau = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, args.epochs))
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=args.lr_factor, patience=args.lr_patience)
    scaler = torch.amp.GradScaler("cuda") if (amp and use_cuda) else None
    start_epoch, best_acc, best_epoch, history = 0, -1.0, -1, []
    best_score = -np.inf
    ckpt_path = out / "checkpoint.pth"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        best_acc, best_epoch = ckpt.get("best_acc", -1.0), ckpt.get("best_epoch", -1)
        best_score = ckpt.get("best_score", best_acc)
        history = ckpt.get("history", [])
        log.info("%s: resumed at epoch %d (best val acc %.3f)", slot, start_epoch, best_acc)
    if dist_info.enabled:
        ids = [device.index] if use_cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    writer = None
    if dist_info.is_main and not args.no_tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    args_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k != "func"}
    normalisation = {"mean": mean, "std": std}
    t_start = time.perf_counter()
    val_targets = val_ds.targets()
    for epoch in range(start_epoch, args.epochs):
        if args.early_stop and best_epoch >= 0 and epoch - best_epoch > args.early_stop:
            log.info("%s: early stop at epoch %d (best %d)", slot, epoch, best_epoch)
            break
        train_ds.set_epoch(epoch)
        if isinstance(train_sampler, DistributedSampler):
            train_sampler.set_epoch(epoch)
        else:
            train_sampler.generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        tr = train_one_epoch(model, train_loader, optimizer, device, scaler=scaler, amp=amp,
                             channels_last=channels_last, progress=progress,
                             desc=f"{slot} {epoch + 1}/{args.epochs}",
                             max_steps=args.max_steps_per_epoch, loss_fn=loss_fn,
                             freeze_bn=args.freeze_bn)
        if bn_loader is not None:
            recalibrate_batchnorm(model, bn_loader, device, channels_last=channels_last)
        val_loss = val_acc = vkappa = float("nan")  # no validation images: not measured
        if val_loader is not None:
            va, vprobs, vidx = evaluate(model, val_loader, device, amp=amp,
                                        channels_last=channels_last)
            val_loss, val_acc = va.loss, va.accuracy
            vkappa = _kappa([val_targets[i] for i in vidx], vprobs, n_classes)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        else:
            scheduler.step()
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.accuracy,
               "val_loss": val_loss, "val_acc": val_acc, "val_kappa": vkappa, "lr": lr,
               "train_images_per_s": tr.images_per_s}
        history.append(row)
        score = _selection_score(args.select, val_acc, vkappa, val_loss)
        improved = score > best_score or args.select == "last"
        if improved:
            best_acc, best_epoch, best_score = val_acc, epoch, score
        if dist_info.is_main:
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": args_dict,
                     "best_acc": best_acc, "best_epoch": best_epoch, "history": history,
                     "best_score": best_score, "select": args.select,
                     "normalisation": normalisation, "slot": slot, "slots": slots,
                     "temperature": 1.0,
                     "preprocessing_version": cache.version,
                     "scaler": scaler.state_dict() if scaler is not None else None}
            if improved:
                torch.save(state, out / "best.pth")
            tmp = out / "checkpoint.pth.tmp"
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
            log.info("%s epoch %d: train loss %.3f acc %.3f | val loss %.3f acc %.3f | lr %.1e",
                     slot, epoch, tr.loss, tr.accuracy, val_loss, val_acc, lr)
    elapsed = time.perf_counter() - t_start
    calibration = None
    if args.calibrate and val_loader is None:
        log.warning("%s: no validation images: temperature scaling skipped", slot)
    elif args.calibrate and dist_info.is_main and (out / "best.pth").exists():
        calibration = calibrate_checkpoint(out / "best.pth", model, val_loader, val_targets,
                                           device)
        log.info("%s: temperature %.2f, validation ECE %.3f -> %.3f", slot,
                 calibration["temperature"], calibration["ece_before"],
                 calibration["ece_after"])
    # Under DDP every rank must end with the same weights; record each rank's digest.
    digests = all_gather_object(state_digest(model))
    if len(set(digests)) > 1:
        log.error("%s: DDP ranks ended with different weights: %s", slot, digests)
    agreement = mdata.reader_agreement(records)
    summary = {"view": slot, "slots": slots,
               "best_val_acc": best_acc if val_recs else None,
               "best_epoch": best_epoch, "select": args.select, "calibration": calibration,
               "reader_agreement": agreement if agreement.get("readers", 0) > 1 else None,
               "patients": {s: len({r.patient_id for r in records if r.split == s})
                            for s in mdata.SPLITS},
               "epochs": args.epochs, "normalisation": normalisation,
               "train_images": len(train_recs), "val_images": len(val_recs),
               "seconds": round(elapsed, 1), "world_size": dist_info.world_size,
               "preprocessing_version": cache.version,
               "rank_weight_digests": digests, "args": args_dict}
    if dist_info.is_main:
        if writer is not None:
            writer.close()
        _write_log(history, out / "log.csv")
        save_curves(history, out / "curves.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_log(history: list[dict], path: Path) -> None:
    if not history:
        return
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{h[k]:.6g}" if isinstance(h[k], float)
                                         else str(h[k]) for k in keys) for h in history]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- entry

def _spawn_views(args: argparse.Namespace, argv: list[str], parallel: int,
                 slots: list[str]) -> int:
    """Train the views in ``parallel`` child processes (one GPU each when present)."""
    n_gpu = torch.cuda.device_count()
    pending = list(slots)
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    gpu_free = list(range(n_gpu))
    while pending or running:
        while pending and len(running) < parallel:
            slot = pending.pop(0)
            env = dict(os.environ)
            gpu = None
            if gpu_free:
                gpu = gpu_free.pop(0)
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            cmd = [sys.executable, "-m", "mammo_density.train.train", *argv, "--view", slot]
            running.append((slot, subprocess.Popen(cmd, env=env)))
            running[-1][1].gpu = gpu  # type: ignore[attr-defined]
        for item in list(running):
            slot, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.gpu is not None:  # type: ignore[attr-defined]
                    gpu_free.append(proc.gpu)  # type: ignore[attr-defined]
                if proc.returncode != 0:
                    failed.append(slot)
        time.sleep(0.5)
    if failed:
        log.error("views failed: %s", failed)
        return 1
    return 0


def args_to_argv(args: argparse.Namespace, *, skip: tuple[str, ...] = ("view",)) -> list[str]:
    """Command-line options that reproduce ``args`` (for child processes)."""
    out: list[str] = []
    for action in get_args_parser(add_help=False)._actions:
        if not action.option_strings or action.dest in skip or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        opt = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            if value is not None:
                out.append(opt if value else "--no-" + opt[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                out.append(opt)
        elif value is not None:
            out += [opt, str(value)]
    return out


def main(args: argparse.Namespace) -> int:
    """Train ``args.view`` (or all four, sequentially or in parallel child processes)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_recipe(args)
    dist_info = init_distributed(args.device)
    try:
        units = training_units(args)
        parallel = args.parallel or max(1, torch.cuda.device_count())
        if len(units) > 1 and parallel > 1 and not dist_info.enabled:
            return _spawn_views(args, args_to_argv(args), parallel, [u for u, _ in units])
        summaries = [train_view(args, unit, dist_info, slots) for unit, slots in units]
        if dist_info.is_main:
            for s in summaries:
                if s["best_val_acc"] is None:  # a fixed schedule without validation images
                    log.info("%s: last epoch %d kept, no validation images (%.0f s)",
                             s["view"], s["best_epoch"], s["seconds"])
                else:
                    log.info("%s: best val acc %.3f at epoch %d (%.0f s)", s["view"],
                             s["best_val_acc"], s["best_epoch"], s["seconds"])
        return 0
    finally:
        cleanup()


def cli(argv: list[str] | None = None) -> int:
    from mammo_density.logsetup import configure_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    configure_logging(0)
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
