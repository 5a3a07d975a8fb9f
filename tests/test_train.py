"""Training: resume continues where it stopped; 2-process DDP (gloo) keeps ranks in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mammo_density.train.distributed import state_digest
from mammo_density.train.evaluation import load_checkpoint_models
from mammo_density.train.model import count_conv_layers, count_residual_blocks
from mammo_density.train.train import args_to_argv, get_args_parser, main
from tests.services import free_port
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("synth"))


def run(argv: list[str]) -> int:
    return main(get_args_parser().parse_args(argv))


def digest(run_dir, which="checkpoint"):
    return state_digest(load_checkpoint_models(run_dir, which=which)["R-CC"][0])


def test_resume_continues_where_it_stopped(manifest, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(train_argv(manifest, full, "--view", "R-CC", "--epochs", "2")) == 0
    assert run(train_argv(manifest, part, "--view", "R-CC", "--epochs", "1",
                          "--no-tensorboard")) == 0
    ckpt = torch.load(part / "R-CC" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and set(ckpt) >= {"model", "optimizer", "lr_scheduler", "args",
                                                "best_acc"}
    assert run(train_argv(manifest, part, "--view", "R-CC", "--epochs", "2", "--resume",
                          "--no-tensorboard")) == 0
    resumed = torch.load(part / "R-CC" / "checkpoint.pth", map_location="cpu",
                         weights_only=False)
    assert resumed["epoch"] == 1 and len(resumed["history"]) == 2
    # Same seeds, same data order and augmentation, optimizer momentum restored: the
    # interrupted run ends bit-identical to the uninterrupted one.
    assert digest(part) == digest(full)
    first = torch.load(full / "R-CC" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert resumed["optimizer"]["state"].keys() == first["optimizer"]["state"].keys()
    for f in ("log.csv", "curves.png", "summary.json", "best.pth"):
        assert (full / "R-CC" / f).exists(), f
    assert any((full / "R-CC" / "tensorboard").iterdir())
    summary = json.loads((full / "R-CC" / "summary.json").read_text())
    assert summary["normalisation"]["std"] > 0 and summary["world_size"] == 1


def test_model_is_the_methods_resnet():
    from mammo_density.train.model import DensityResNet

    m = DensityResNet(width=4)
    assert count_conv_layers(m) == 41 and count_residual_blocks(m) == 12
    out = torch.softmax(m.eval()(torch.zeros(2, 1, 32, 32)), 1)
    assert out.shape == (2, 4) and torch.allclose(out.sum(1), torch.ones(2))


def test_args_round_trip():
    args = get_args_parser().parse_args(["--manifest", "m.csv", "--out", "o", "--no-amp",
                                         "--soft-labels", "--view", "L-CC"])
    again = get_args_parser().parse_args([*args_to_argv(args), "--view", "L-CC"])
    assert vars(again) == vars(args)


@pytest.mark.slow
def test_ddp_two_processes_same_weights(manifest, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "mammo_density.train.train",
           *train_argv(manifest, out, "--view", "R-CC", "--epochs", "2", "--device", "cpu",
                       "--no-tensorboard")]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "R-CC" / "summary.json").read_text())
    assert summary["world_size"] == 2
    d = summary["rank_weight_digests"]
    assert len(d) == 2 and d[0] == d[1]
    # and the weights moved: training happened
    ckpt = torch.load(out / "R-CC" / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["optimizer"]["state"]


def test_readers_and_soft_labels_train(tmp_path, manifest):
    """A manifest with three readers' labels trains on soft labels and reports agreement."""
    import csv

    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out_csv = tmp_path / "readers.csv"
    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["exam_id", "patient_id", "laterality", "view", "path", "reader1",
                    "reader2", "reader3"])
        for i, r in enumerate(rows):
            if r["extra"]:
                continue
            other = "ABCD"[min(3, "ABCD".index(r["density"]) + 1)]
            w.writerow([r["exam_id"], r["patient_id"], r["laterality"], r["view"],
                        str(manifest.parent / r["path"]), r["density"], r["density"],
                        other if i % 3 == 0 else r["density"]])
    out = tmp_path / "run"
    argv = train_argv(out_csv, out, "--view", "L-MLO", "--epochs", "1", "--soft-labels",
                      "--no-tensorboard")
    assert run(argv) == 0
    summary = json.loads((out / "L-MLO" / "summary.json").read_text())
    ag = summary["reader_agreement"]
    assert ag["readers"] == 3 and 0 < ag["fleiss_kappa"] < 1
    assert summary["patients"]["train"] and summary["patients"]["val"]
