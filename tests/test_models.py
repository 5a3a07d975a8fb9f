"""ModelSet: verification at load time, ONNX Runtime sessions, normalisation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mammo_density.views import SLOTS
from mammo_density.worker.models import (
    ModelError,
    ModelNotInstalled,
    ModelSet,
    choose_providers,
    default_model_dir,
)
from mammo_density.worker.preprocess import PREPROCESSING_VERSION, load_model_input
from tests.mg_images import breast_image, mg_dataset
from tests.models import TEST_INPUT_SIZE, cached_registry_entry, rewrite_manifest


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.stack([load_model_input(mg_dataset(breast_image(256, 208, seed=s,
                                                              density=s / 3)),
                                      TEST_INPUT_SIZE) for s in range(4)])


def test_load_and_predict(entry, inputs):
    ms = ModelSet.load(entry, threads=1)
    assert set(ms.sessions) == set(SLOTS)
    assert ms.input_size == TEST_INPUT_SIZE and ms.task == "birads4"
    assert ms.providers[-1] == "CPUExecutionProvider"
    ref = ms.ref()
    assert ref.name == "test-model" and len(ref.sha256) == 64 and ref.not_for_clinical_use
    for slot in SLOTS:
        out = ms.predict(slot, inputs)
        assert out.shape == (4, 4)
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    # fixed random weights, but the output depends on the image
    out = ms.predict("L-CC", inputs)
    assert np.abs(out[0] - out[-1]).max() > 0.01
    # (N, 1, S, S) accepted too; wrong size refused
    assert ms.predict("R-CC", inputs[:, None]).shape == (4, 4)
    with pytest.raises(ValueError, match="batch must be"):
        ms.predict("R-CC", np.zeros((1, 32, 32), np.float32))
    with pytest.raises(KeyError):
        ms.predict("R-XCCL", inputs)


def test_normalisation_from_manifest(entry, inputs, tmp_path):
    copy = tmp_path / "norm"
    shutil.copytree(entry, copy)
    rewrite_manifest(copy, normalisation={"mean": 0.5, "std": 0.25})
    plain = ModelSet.load(entry, threads=1).predict("R-MLO", inputs)
    normed_set = ModelSet.load(copy, threads=1)
    normed = normed_set.predict("R-MLO", inputs)
    assert np.abs(plain - normed).max() > 1e-3
    assert np.allclose(normed_set.normalise(inputs[:1])[0, 0], (inputs[0] - 0.5) / 0.25)


def test_sha256_mismatch_is_a_clear_error(entry, tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(entry, copy)
    target = copy / "L-MLO.onnx"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 mismatch for L-MLO\.onnx"):
        ModelSet.load(copy)
    (copy / "L-MLO.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        ModelSet.load(copy)


def test_preprocessing_version_mismatch_is_a_clear_error(entry, tmp_path):
    copy = tmp_path / "oldprep"
    shutil.copytree(entry, copy)
    rewrite_manifest(copy, preprocessing_version="mdp-0.1")
    with pytest.raises(ModelError, match=r"preprocessing version 'mdp-0\.1'.*"
                       + PREPROCESSING_VERSION.replace(".", r"\.")):
        ModelSet.load(copy)


def test_missing_model_says_how_to_install(tmp_path):
    with pytest.raises(ModelNotInstalled, match="--model-dir"):
        ModelSet.load(tmp_path / "nothing-here")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="invalid model manifest"):
        ModelSet.load(tmp_path / "bad")


def test_default_model_dir_is_the_bundled_demo():
    """The repository ships the demo model: it is the default, and it loads."""
    import mammo_density.onnx_models as registry

    folder = default_model_dir()
    assert folder.name == registry.DEFAULT_MODEL
    assert (folder / "manifest.json").is_file()
    assert ModelSet.load(folder, threads=1).task == "birads4"


def test_missing_bundled_model_says_how_to_get_one(monkeypatch):
    """An install whose bundled entry is gone: a clear error with the way out."""
    import mammo_density.onnx_models as registry

    monkeypatch.setattr(registry, "DEFAULT_MODEL", "no-such-entry")
    with pytest.raises(ModelNotInstalled, match="no-such-entry") as err:
        default_model_dir()
    assert "--model-dir" in str(err.value) or "train" in str(err.value)


def test_provider_choice():
    assert choose_providers()[-1] == "CPUExecutionProvider"
    assert choose_providers(["NoSuchExecutionProvider"]) == ["CPUExecutionProvider"]
