"""The small-real-set recipe: each option on tiny synthetic data (32 px, 1-2 epochs)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from mammo_density.train.args import get_args_parser
from mammo_density.train.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from mammo_density.train.dataset import Augment, breast_crop, intensity
from mammo_density.train.engine import (
    balanced_class_weights,
    make_loss,
    recalibrate_batchnorm,
    train_one_epoch,
)
from mammo_density.train.evaluation import load_checkpoint_models
from mammo_density.train.export import export_run
from mammo_density.train.model import (
    DensityMapHead,
    DensityResNet,
    MobileNetV2,
    ResNet18,
    activation_name,
    build_network,
    count_residual_blocks,
    load_init_weights,
)
from mammo_density.train.recipes import RECIPES, apply_recipe
from mammo_density.train.train import main
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("synth"), studies=6, seed=6)


@pytest.fixture(scope="module")
def mlo_manifest(manifest, tmp_path_factory):
    """The same studies without their CC views (like mini-MIAS or an MLO-only archive)."""
    out = tmp_path_factory.mktemp("mlo") / "mlo.csv"
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            if r["view"] == "MLO":
                r["path"] = str(manifest.parent / r["path"])
                w.writerow(r)
    return out


def parse(*argv: str):
    return get_args_parser().parse_args(["--manifest", "m.csv", "--out", "o", *argv])


def test_recipe_fills_only_unset_options():
    a = apply_recipe(parse("--recipe", "small-real", "--epochs", "7"))
    assert (a.network, a.optimizer, a.loss, a.epochs) == ("shared", "adamw", "ordinal", 7)
    m = apply_recipe(parse())  # the default stays the method
    assert (m.network, m.optimizer, m.lr, m.epochs, m.select) == ("per-view", "sgd", 0.1,
                                                                  100, "acc")
    assert set(RECIPES["method"]) == set(RECIPES["small-real"])
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe(parse().__class__(recipe="nope"))


def test_ordinal_loss_and_class_weights():
    target = torch.tensor([[1.0, 0, 0, 0]])
    near = torch.tensor([[0.0, 4.0, 0, 0]])  # confident B for an A
    far = torch.tensor([[0.0, 0, 0, 4.0]])  # confident D for an A
    ce, ordinal = make_loss("ce"), make_loss("ordinal")
    assert ce(near, target) == pytest.approx(float(ce(far, target)))
    assert ordinal(far, target) > ordinal(near, target) > ce(near, target)
    w = balanced_class_weights([0, 0, 0, 1], 4)
    assert w.tolist() == pytest.approx([4 / 12, 1.0, 0.0, 0.0])
    weighted = make_loss("ce", class_weights=torch.tensor([1.0, 3.0, 1.0, 1.0]))
    logits = torch.zeros(2, 4)
    t = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    # equal per-image losses: the weighted mean equals the plain mean
    assert weighted(logits, t) == pytest.approx(float(ce(logits, t)))
    logits[1, 1] = 3.0  # the B image is now well classified: weighted loss drops more
    assert weighted(logits, t) < ce(logits, t)


def test_augmentation_never_mirrors_and_keeps_background():
    img = np.zeros((64, 64), np.float32)
    img[8:56, :30] = np.linspace(0.9, 0.3, 30, dtype=np.float32)  # chest wall on the left
    aug = Augment(rotation=10, scale=0.1, translate=0.05, gamma=0.3, contrast=0.2)
    for seed in range(20):
        out = aug(img, np.random.default_rng(seed))
        assert out[:, :32].sum() > 5 * out[:, 32:].sum()  # still on the left
        assert out.min() >= 0 and out.max() <= 1
    a1 = aug(img, np.random.default_rng(3))
    assert np.array_equal(a1, aug(img, np.random.default_rng(3)))  # repeatable
    g = intensity(img, gamma=2.0)
    assert (g[img == 0] == 0).all() and g[10, 0] == pytest.approx(0.81, abs=1e-5)


def test_training_patches_lie_on_the_breast():
    img = np.zeros((96, 96), np.float32)
    img[20:80, :30] = 0.6  # the breast: chest wall on the left, two thirds of the rows
    for seed in range(30):
        patch = breast_crop(img, 32, np.random.default_rng(seed))
        assert patch.shape == (32, 32) and patch.flags.c_contiguous
        assert (patch > 0).mean() >= 0.25  # centred on tissue, never all background
    assert breast_crop(np.zeros((40, 40), np.float32), 16,
                       np.random.default_rng(0)).shape == (16, 16)


def test_batchnorm_recalibration_uses_the_exact_data_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).eval()
    model[1].running_mean.fill_(50.0)  # stale statistics
    x = torch.randn(12, 1, 4, 4) * 3 + 1
    batches = [(x[:6], None, None), (x[6:], None, None)]  # equal batches: exact mean
    assert recalibrate_batchnorm(model, batches, torch.device("cpu")) == 12
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and model[1].momentum == 0.1


def test_frozen_batchnorm_keeps_its_statistics_while_the_rest_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    x = torch.randn(8, 1, 6, 6) * 2 + 3
    y = torch.nn.functional.one_hot(torch.arange(8) % 2, 2).float()
    loader = [(x[:4], y[:4], None), (x[4:], y[4:], None)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for freeze, stats_kept in ((True, True), (False, False)):
        train_one_epoch(model, loader, opt, torch.device("cpu"), freeze_bn=freeze)
        after = model.state_dict()
        assert torch.equal(after["1.running_mean"], before["1.running_mean"]) == stats_kept
        assert torch.equal(after["1.running_var"], before["1.running_var"]) == stats_kept
        assert not torch.equal(after["0.weight"], before["0.weight"])  # the rest trained
        assert not torch.equal(after["1.weight"], before["1.weight"])  # BN's scale too
        before = {k: v.clone() for k, v in after.items()}


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 3
    true_probs = apply_temperature(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2.5)
    y = np.array([rng.choice(4, p=p) for p in true_probs])
    over = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # over-confident by 2.5
    t = fit_temperature(over, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(apply_temperature(over, t), y) < \
        expected_calibration_error(over, y) / 2


def test_init_from_torchvision_state_dict_and_earlier_run(tmp_path):
    torch.manual_seed(0)
    # A torchvision-layout resnet18 state dict as a site brings it: RGB stem, 1000 classes.
    rgb = ResNet18(num_classes=1000, in_chans=3)
    sd = {f"module.{k}": v for k, v in rgb.state_dict().items()}
    torch.save(sd, tmp_path / "resnet18.pth")
    model = ResNet18(num_classes=4)
    counts = load_init_weights(model, tmp_path / "resnet18.pth")
    assert counts["skipped"] == 2  # fc.weight, fc.bias: other class count
    assert torch.equal(model.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    # an earlier run's checkpoint (dict with "model")
    earlier = DensityResNet(width=4)
    torch.save({"model": earlier.state_dict(), "epoch": 3}, tmp_path / "best.pth")
    again = DensityResNet(width=4)
    load_init_weights(again, tmp_path / "best.pth")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 earlier.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="another architecture"):
        load_init_weights(DensityResNet(width=4), tmp_path / "resnet18.pth")


def test_mobilenet_v2_has_torchvisions_layout_and_exports(tmp_path):
    """torchvision's ImageNet mobilenet_v2: 3,504,872 parameters, 314 state-dict entries
    (its documented figures), keys such as ``features.1.conv.0.0.weight``."""
    rgb = MobileNetV2(num_classes=1000, in_chans=3)
    sd = rgb.state_dict()
    assert sum(p.numel() for p in rgb.parameters()) == 3_504_872
    assert len(sd) == 314
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.2.bias",
            "features.2.conv.0.0.weight", "features.2.conv.3.running_var",
            "features.18.1.weight", "classifier.1.weight"} <= set(sd)
    torch.save(sd, tmp_path / "mobilenet_v2.pth")
    model = MobileNetV2(num_classes=4)
    counts = load_init_weights(model, tmp_path / "mobilenet_v2.pth")
    assert counts == {"loaded": 312, "skipped": 2, "model_tensors": 314}
    assert torch.equal(model.features[0][0].weight, rgb.features[0][0].weight.sum(1, True))
    assert count_residual_blocks(model) == 10 and activation_name(model) == "ReLU6"
    from mammo_density.train.export import export_onnx

    model.eval()
    assert export_onnx(model, tmp_path / "m.onnx", 96) < 1e-4  # ORT vs PyTorch


def test_density_map_head_orders_the_classes_by_dense_share(manifest, tmp_path):
    """--head density-map: the class probabilities are cumulative-logistic cuts of the
    dense share; a larger share never lowers the expected class; it trains, reloads and
    exports (ONNX parity) like the pooled head; other architectures refuse it."""
    head = DensityMapHead(8, 4)
    t = head.thresholds().detach()
    assert torch.all(t[1:] > t[:-1]) and t[0] > 0 and t[-1] < 1
    feats = torch.zeros(5, 8, 4, 4)
    expected = []
    with torch.no_grad():
        head.maps.weight.zero_()
        head.maps.bias[1] = 10.0  # breast map ~1 everywhere
        for share in (0.05, 0.3, 0.5, 0.7, 0.95):
            head.maps.bias[0] = float(np.log(share / (1 - share)))  # dense map = share
            assert head.share(feats)[0] == pytest.approx(share, abs=1e-3)
            p = torch.softmax(head(feats), 1)[0]
            assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
            expected.append(float((p * torch.arange(4)).sum()))
    assert expected == sorted(expected) and expected[-1] - expected[0] > 2
    with pytest.raises(ValueError, match="density-resnet only"):
        build_network("resnet18", head="density-map")
    # a fresh network's maps start in the sigmoid's working range, not saturated
    net = build_network(width=4, head="density-map").eval()
    with torch.no_grad():
        maps = torch.sigmoid(net.head.maps(net.forward_features(torch.randn(2, 1, 64, 64))))
    assert float(maps.min()) > 0.3 and float(maps.max()) < 0.7
    out = tmp_path / "dmap"
    argv = train_argv(manifest, out, "--recipe", "small-real", "--epochs", "1",
                      "--no-tensorboard", "--head", "density-map", "--bn-recalibrate", "0")
    assert main(get_args_parser().parse_args(argv)) == 0
    model = load_checkpoint_models(out)["R-CC"][0]
    assert isinstance(model.head, DensityMapHead)
    entry = export_run(out, tmp_path / "entry", name="dmap", version="0.0.1",
                       not_for_clinical_use=True, training_data="tiny synthetic")
    assert entry.architecture["head"] == "density-map"
    assert max(entry.metrics["export_parity_max_abs_diff"].values()) <= 1e-4


def test_fixed_schedule_trains_on_every_training_woman(manifest, tmp_path, caplog):
    """--val-fraction 0 with --select last --early-stop 0: no validation women, every
    training woman trained on, the last epoch kept, calibration skipped; with model
    selection or a plateau schedule the same split stops with the reason."""
    caplog.set_level(logging.INFO)  # every message formatted, as under the CLI
    out = tmp_path / "fixed"
    argv = train_argv(manifest, out, "--recipe", "small-real", "--epochs", "2",
                      "--no-tensorboard", "--val-fraction", "0", "--select", "last",
                      "--early-stop", "0", "--bn-recalibrate", "0")
    assert main(get_args_parser().parse_args(argv)) == 0
    summary = json.loads((out / "shared" / "summary.json").read_text())
    assert summary["val_images"] == 0 and summary["patients"]["val"] == 0
    assert summary["train_images"] == 24  # all 6 women x 4 views
    assert summary["best_val_acc"] is None and summary["calibration"] is None
    assert summary["best_epoch"] == 1
    best = torch.load(out / "shared" / "best.pth", map_location="cpu", weights_only=False)
    assert best["epoch"] == 1 and best["temperature"] == 1.0
    assert np.isnan(best["history"][-1]["val_loss"])
    assert "shared: last epoch 1 kept, no validation images" in caplog.text
    assert "no validation images: temperature scaling skipped" in caplog.text
    # the registry entry of such a run: no validation accuracy, strict JSON
    entry = export_run(out, tmp_path / "entry", name="fixed", version="0.0.1",
                       not_for_clinical_use=True, training_data="tiny synthetic")
    assert "validation_accuracy" not in entry.metrics
    json.loads((tmp_path / "entry" / "manifest.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in manifest.json"))
    card = (tmp_path / "entry" / "MODEL_CARD.md").read_text()
    assert "residual blocks, width 4, " in card and "Best validation accuracy" not in card
    for extra in (("--select", "kappa", "--early-stop", "0"),
                  ("--select", "last", "--early-stop", "0", "--scheduler", "plateau")):
        bad = train_argv(manifest, tmp_path / "bad", "--recipe", "small-real", "--epochs",
                         "1", "--no-tensorboard", "--val-fraction", "0", *extra)
        with pytest.raises(SystemExit, match="validation"):
            main(get_args_parser().parse_args(bad))


@pytest.mark.slow
def test_shared_network_on_mlo_only_with_every_option(mlo_manifest, tmp_path):
    init = tmp_path / "init.pth"
    torch.save(ResNet18(num_classes=1000, in_chans=3).state_dict(), init)
    out = tmp_path / "run"
    argv = train_argv(mlo_manifest, out, "--recipe", "small-real", "--epochs", "2",
                      "--no-tensorboard", "--arch", "resnet18", "--init-from", str(init),
                      "--sampler", "balanced", "--early-stop", "1", "--val-fraction", "0.34",
                      "--train-crop", "24")
    assert main(get_args_parser().parse_args(argv)) == 0
    summary = json.loads((out / "shared" / "summary.json").read_text())
    assert summary["slots"] == ["R-MLO", "L-MLO"] and summary["select"] == "kappa"
    cal = summary["calibration"]
    assert cal["temperature"] > 0 and 0 <= cal["ece_after"] <= 1
    ckpt = torch.load(out / "shared" / "best.pth", map_location="cpu", weights_only=False)
    assert ckpt["temperature"] == pytest.approx(cal["temperature"])
    assert {"val_kappa", "val_loss"} <= set(ckpt["history"][0])


@pytest.mark.slow
def test_cv_on_mlo_only_manifest_per_view_and_shared(mlo_manifest, tmp_path, capsys):
    """`train --cv` for a manifest without CC views (used to stop at R-CC)."""
    from mammo_density.cli import main as cli_main

    for network in ("per-view", "shared"):
        out = tmp_path / network
        argv = train_argv(mlo_manifest, out, "--epochs", "1", "--no-tensorboard",
                          "--max-steps-per-epoch", "1", "--cv", "2", "--network", network,
                          "--val-fraction", "0.5")
        assert cli_main(["train", *argv]) == 0
        cv = json.loads((out / "cv.json").read_text())
        assert set(cv["rows"]) == {"cnn", "majority", "features+LR", "cnn+LR"}
        img = cv["rows"]["features+LR"]["summary"]["image"]
        assert img["n"] == 12 and {"kappa_quadratic", "accuracy_std", "recall"} <= set(img)
        units = sorted(p.name for p in (out / "fold-0").iterdir()
                       if p.is_dir() and not p.name.startswith("eval"))
        assert units == (["L-MLO", "R-MLO"] if network == "per-view" else ["shared"])
        assert (out / "pooled-cnn" / "confusion_exam.png").exists()
    assert "features+LR" in capsys.readouterr().out
    # The K fold models exported together: each file = mean of the folds' probabilities.
    entry = tmp_path / "entry"
    assert cli_main(["export", "--run", str(tmp_path / "shared"), "--out", str(entry),
                     "--name", "cv-test", "--not-for-clinical-use"]) == 0
    check_cv_entry(tmp_path / "shared", entry)


def check_cv_entry(cv_dir, entry):
    import onnxruntime as ort

    from mammo_density.manifest import read_manifest
    from mammo_density.train.evaluation import load_checkpoint_models
    from mammo_density.worker.models import ModelSet

    m = read_manifest(entry)
    assert m.views == {"R-MLO": "shared.onnx", "L-MLO": "shared.onnx"}
    assert m.architecture["members"] == 2 and m.architecture["network"] == "shared"
    assert m.metrics["inference_ms_per_image"]["shared"] > 0
    assert set(m.metrics["cross_validation"]["rows"]) == {"cnn", "majority", "features+LR",
                                                          "cnn+LR"}
    card = (entry / "MODEL_CARD.md").read_text()
    assert "mean of the probabilities of the 2 cross-validation fold models" in card
    assert "| features+LR | exam |" in card and "| majority | image |" in card
    x = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    expected = np.zeros((3, 4))
    for fold in ("fold-0", "fold-1"):
        model, ckpt = load_checkpoint_models(cv_dir / fold)["R-MLO"]
        mean, std = ckpt["normalisation"]["mean"], ckpt["normalisation"]["std"]
        with torch.no_grad():
            logits = model(torch.from_numpy((x - mean) / std)) / ckpt["temperature"]
        expected += torch.softmax(logits, 1).numpy() / 2
    got = ort.InferenceSession(str(entry / "shared.onnx")).run(None, {"image": x})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert ModelSet.load(entry).predict("L-MLO", x).shape == (3, 4)


@pytest.mark.slow
def test_size_sweep_on_mlo_only_manifest(mlo_manifest, tmp_path):
    from mammo_density.cli import main as cli_main

    out = tmp_path / "sweep"
    argv = train_argv(mlo_manifest, out, "--epochs", "1", "--no-tensorboard",
                      "--max-steps-per-epoch", "1", "--sweep-sizes", "32", "--network",
                      "shared")
    argv[argv.index("--test-fraction") + 1] = "0.34"
    assert cli_main(["train", *argv]) == 0
    assert (out / "sweep.md").read_text().splitlines()[0] == "| input | 32 |"
    assert (out / "size-32" / "shared" / "best.pth").exists()
