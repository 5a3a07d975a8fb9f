"""The method's experiments as commands: input-size sweep and k-fold cross-validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammo_density.cli import main as cli_main
from mammo_density.train.experiments import parse_range
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("synth"), studies=6, seed=6)


def test_parse_range():
    assert parse_range("250:850:100") == [250, 350, 450, 550, 650, 750, 850]
    assert parse_range("32,48") == [32, 48]
    with pytest.raises(ValueError):
        parse_range("850:250:100")


@pytest.mark.slow
def test_input_size_sweep_writes_the_methods_table(manifest, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                      "--max-steps-per-epoch", "1", "--sweep-sizes", "32,40")
    argv[argv.index("--test-fraction") + 1] = "0.3"
    assert cli_main(["train", *argv]) == 0
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0] == "| input | 32 | 40 |"
    assert [row.split("|")[1].strip() for row in table[2:]] == \
        ["right breast", "left breast", "all views"]
    data = json.loads((out / "sweep.json").read_text())
    assert data["32"]["levels"]["exam"]["n"] >= 1
    assert (out / "size-40" / "eval-test" / "confusion_exam.png").exists()


@pytest.mark.slow
def test_cross_validation_reports_mean_and_spread(manifest, tmp_path, capsys):
    import torch

    from mammo_density.train.model import build_network

    out = tmp_path / "cv"
    probe = tmp_path / "mobilenet_v2.pth"
    torch.save(build_network("mobilenet_v2").state_dict(), probe)
    argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                      "--max-steps-per-epoch", "1", "--cv", "2", "--probe-weights", str(probe))
    assert cli_main(["train", *argv]) == 0
    cv = json.loads((out / "cv.json").read_text())
    assert cv["k"] == 2 and len(cv["folds"]) == 2
    assert {"features+LR", "embeddings+LR"} <= set(cv["rows"])
    assert "accuracy_std" in cv["summary"]["exam"]
    # every exam is tested exactly once over the folds
    assert sum(f["exams"] for f in cv["folds"]) == 6
    assert "accuracy" in capsys.readouterr().out


def test_linear_probe_scores_frozen_weights_a_site_brings(manifest, tmp_path):
    """``--probe-weights`` (train/baselines.py ``embeddings_logistic``): weights made here
    (a torchvision-layout MobileNetV2 state dict) are loaded whole and frozen; each image
    becomes the 1280 pooled features in front of the classifier, not its 4 outputs; the
    test images get probabilities; weights of another architecture are refused."""
    import torch

    from mammo_density.train import baselines as bl
    from mammo_density.train import data as mdata
    from mammo_density.train.dataset import ArrayCache
    from mammo_density.train.model import build_network

    records = mdata.screening_records(mdata.read_manifest_csv(manifest))
    patients = sorted({r.patient_id for r in records})
    role = {pid: ("train", "train", "train", "val")[i] if i < 4 else "test"
            for i, pid in enumerate(patients)}
    split = {name: [r for r in records if role[r.patient_id] == name]
             for name in ("train", "val", "test")}
    weights = tmp_path / "mobilenet_v2.pth"
    net = build_network("mobilenet_v2")
    torch.save(net.state_dict(), weights)
    tensors = len(net.state_dict())
    cache = ArrayCache(tmp_path / "cache", 32)
    preds, info = bl.embeddings_logistic(split["train"], split["val"], split["test"], cache,
                                         weights=weights)
    assert info["dims"] == [1280] and info["tensors_loaded"] == tensors
    assert len(preds) == len(split["test"]) > 0
    assert all(abs(p.probs.sum() - 1.0) < 1e-6 for p in preds)
    other = tmp_path / "resnet18.pth"
    torch.save(build_network("resnet18").state_dict(), other)
    with pytest.raises(ValueError):
        bl.embeddings_logistic(split["train"], split["val"], split["test"], cache,
                               weights=other)


def test_late_fusion_matches_images_by_slot_and_averages():
    from mammo_density.train.experiments import fuse_predictions
    from mammo_density.train.metrics import Prediction

    def pred(exam, side, view, probs, density="B"):
        return Prediction(exam_id=exam, laterality=side, view=view,
                          probs=np.asarray(probs, dtype=float), density=density)

    a = [pred("e1", "R", "MLO", [1, 0, 0, 0]), pred("e1", "L", "CC", [0, 1, 0, 0]),
         pred("e2", "R", "CC", [0, 0, 1, 0]), pred("e2", "R", "CC", [0, 0, 0, 1])]
    # other order; e2 holds two R-CC images (a retake), kept in the same order
    b = [pred("e2", "R", "CC", [0, 0, 0, 1]), pred("e1", "L", "CC", [0, 0, 1, 0]),
         pred("e2", "R", "CC", [1, 0, 0, 0]), pred("e1", "R", "MLO", [0, 1, 0, 0])]
    fused = fuse_predictions(a, b)
    assert [(p.exam_id, p.slot) for p in fused] == [(p.exam_id, p.slot) for p in a]
    np.testing.assert_allclose(np.stack([p.probs for p in fused]),
                               [[.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5],
                                [.5, 0, 0, .5]])
    np.testing.assert_allclose(fuse_predictions(a, b, weight=1.0)[3].probs, [0, 0, 0, 1])
    with pytest.raises(ValueError, match="not the same images"):
        fuse_predictions(a[:3], b)
    with pytest.raises(ValueError, match="no second prediction"):
        fuse_predictions(a, b[1:])


@pytest.mark.slow
def test_ensemble_row_is_the_mean_of_the_runs_networks(manifest, tmp_path):
    """The mean of a run with itself scores as the run; two seeds give one row on the
    same held-out images."""
    from mammo_density.train.args import get_args_parser
    from mammo_density.train.experiments import ensemble_row

    runs = {}
    for seed in (1, 2):
        out = tmp_path / f"seed-{seed}"
        argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                          "--max-steps-per-epoch", "1", "--cv", "2", "--seed", str(seed))
        assert cli_main(["train", *argv]) == 0
        runs[seed] = (out, json.loads((out / "cv.json").read_text()), argv)
    out1, cv1, argv1 = runs[1]
    i = argv1.index("--cv")
    args = get_args_parser().parse_args(argv1[:i] + argv1[i + 2:])  # --cv is the command's
    same = ensemble_row([out1, out1], args, 2, tmp_path / "same")
    for level in ("image", "breast", "exam"):
        assert same["summary"][level]["accuracy"] == \
            pytest.approx(cv1["rows"]["cnn"]["summary"][level]["accuracy"])
        assert same["summary"][level]["kappa_linear"] == \
            pytest.approx(cv1["rows"]["cnn"]["summary"][level]["kappa_linear"])
    both = ensemble_row([out1, runs[2][0]], args, 2, tmp_path / "both")
    assert len(both["folds"]) == 2
    assert [set(f) for f in both["folds"]] == [set(f) for f in cv1["rows"]["cnn"]["folds"]]
    assert (tmp_path / "both" / "confusion_image.png").exists()
    # fold 0 by hand: the two runs' probabilities averaged per image
    from mammo_density.train.evaluation import predict_checkpoints
    from mammo_density.train.experiments import fold_records
    from mammo_density.train.metrics import Prediction, evaluate_predictions

    test = [r for r in fold_records(args, 2, 0) if r.split == "test"]
    p1, _ = predict_checkpoints(out1 / "fold-0", test, cache_dir=args.cache_dir)
    p2, _ = predict_checkpoints(runs[2][0] / "fold-0", test, cache_dir=args.cache_dir)
    assert len(p1) == len(p2) == len(test)
    mean = [Prediction(exam_id=a.exam_id, laterality=a.laterality, view=a.view,
                       probs=(np.asarray(a.probs) + np.asarray(b.probs)) / 2,
                       density=a.density) for a, b in zip(p1, p2, strict=True)]
    expected = evaluate_predictions(mean, args.task, n_boot=0)["levels"]
    for level in ("image", "exam"):
        assert both["folds"][0][level]["accuracy"] == \
            pytest.approx(expected[level]["accuracy"])
        assert both["folds"][0][level]["kappa_linear"] == \
            pytest.approx(expected[level]["kappa_linear"], nan_ok=True)


@pytest.mark.slow
def test_export_of_several_cv_runs_averages_all_their_fold_models(manifest, tmp_path,
                                                                  capsys):
    import onnxruntime as ort
    import torch

    from mammo_density.manifest import read_manifest
    from mammo_density.train.evaluation import load_checkpoint_models

    runs = []
    for seed in (1, 2):
        out = tmp_path / f"seed-{seed}"
        argv = train_argv(manifest, out, "--epochs", "1", "--no-tensorboard",
                          "--max-steps-per-epoch", "1", "--cv", "2", "--seed", str(seed),
                          "--view", "R-CC")
        assert cli_main(["train", *argv]) == 0
        runs.append(out)
    entry = tmp_path / "entry"
    assert cli_main(["export", "--run", str(runs[0]), "--run", str(runs[1]), "--out",
                     str(entry), "--name", "seeds", "--not-for-clinical-use"]) == 0
    m = read_manifest(entry)
    assert m.architecture["members"] == 4 and m.architecture["runs"] == 2
    assert "4 cross-validation fold models of 2 training runs" in \
        (entry / "MODEL_CARD.md").read_text()
    size = m.input_size
    x = np.random.default_rng(3).random((2, 1, size, size), dtype=np.float32)
    expected = np.zeros((2, 4))
    for run in runs:
        for fold in ("fold-0", "fold-1"):
            model, ckpt = load_checkpoint_models(run / fold)["R-CC"]
            mean, std = ckpt["normalisation"]["mean"], ckpt["normalisation"]["std"]
            with torch.no_grad():
                logits = model(torch.from_numpy((x - mean) / std)) / ckpt.get("temperature", 1.0)
            expected += torch.softmax(logits, 1).numpy() / 4
    got = ort.InferenceSession(str(entry / m.views["R-CC"])).run(None, {"image": x})[0]
    assert np.abs(got - expected).max() < 1e-4
    # the summary of benchmarks/real_cv.py over several split seeds is no table of these
    # folds: refused, with the file to give instead
    report = tmp_path / "real_cv.json"
    report.write_text(json.dumps({"split_seed": [0, 1], "summary": {}, "splits": {}}))
    assert cli_main(["export", "--run", str(runs[0]), "--out", str(tmp_path / "sum"),
                     "--name", "x", "--cv-report", str(report)]) == 1
    assert "split-N/real_cv.json" in capsys.readouterr().err
    assert not (tmp_path / "sum").exists()
    # a plain run cannot join CV runs
    assert cli_main(["export", "--run", str(runs[0]), "--run", str(runs[0] / "fold-0"),
                     "--out", str(tmp_path / "bad"), "--name", "x"]) == 1
