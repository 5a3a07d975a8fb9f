"""ONNX Runtime options of the node (OrtTuning) and one study's views in one call."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mammo_density.config import load_settings
from mammo_density.manifest import read_manifest, write_manifest
from mammo_density.views import SLOTS
from mammo_density.worker.models import ModelSet, OrtTuning, available_cores
from mammo_density.worker.preprocess import load_model_input
from tests.mg_images import breast_image, mg_dataset
from tests.models import TEST_INPUT_SIZE, cached_registry_entry


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {slot: load_model_input(mg_dataset(breast_image(256, 208, seed=i, density=i / 3)),
                                   TEST_INPUT_SIZE) for i, slot in enumerate(SLOTS)}


def shared_entry(entry: Path, out: Path) -> Path:
    """``entry`` with R-CC's network as the one file of all four views."""
    out.mkdir()
    manifest = read_manifest(entry)
    source = manifest.views["R-CC"]
    shutil.copyfile(entry / source, out / "all.onnx")
    manifest.views = dict.fromkeys(manifest.views, "all.onnx")
    manifest.files_sha256 = {"all.onnx": manifest.files_sha256[source]}
    write_manifest(out, manifest)
    return out


@pytest.mark.parametrize("tuning", [
    OrtTuning(), OrtTuning(parallel_views=1), OrtTuning(parallel_views=4, threads=1),
    OrtTuning(graph_optimization="basic", execution_mode="parallel", inter_threads=2),
    OrtTuning(threads=-1, spinning=True)])
def test_predict_views_matches_each_view_alone(entry, images, tuning):
    reference = ModelSet.load(entry, threads=1)
    ms = ModelSet.load(entry, tuning=tuning)
    out = ms.predict_views(images)
    assert set(out) == set(SLOTS)
    for slot in SLOTS:
        alone = reference.predict(slot, images[slot][None])[0]
        assert np.allclose(out[slot], alone, atol=1e-5), (slot, tuning)
    # a study with views missing: only those present come back
    part = ms.predict_views({"L-CC": images["L-CC"]})
    assert list(part) == ["L-CC"] and np.allclose(part["L-CC"], out["L-CC"], atol=1e-5)


def test_views_sharing_a_network_share_a_session_and_batch(entry, images, tmp_path):
    folder = shared_entry(entry, tmp_path / "shared")
    batched = ModelSet.load(folder, tuning=OrtTuning(batch_shared=True))
    assert len({id(s) for s in batched.sessions.values()}) == 1
    single = ModelSet.load(folder, tuning=OrtTuning(batch_shared=False))
    a, b = batched.predict_views(images), single.predict_views(images)
    per_view = ModelSet.load(entry, threads=1).predict("R-CC", np.stack(list(images.values())))
    for i, slot in enumerate(images):
        assert np.allclose(a[slot], b[slot], atol=1e-5)
        assert np.allclose(a[slot], per_view[i], atol=1e-5)
    # different images give different outputs through the one network
    assert np.abs(a["R-CC"] - a["L-MLO"]).max() > 1e-4


def test_tuning_values_and_settings(monkeypatch):
    assert OrtTuning(parallel_views=1).intra_threads() == available_cores()
    assert OrtTuning().intra_threads() == max(1, available_cores() // 2)
    assert OrtTuning(threads=3).intra_threads() == 3
    for bad in ({"graph_optimization": "max"}, {"execution_mode": "async"},
                {"parallel_views": 0}, {"threads": -2}):
        with pytest.raises(ValueError):
            OrtTuning(**bad)
    monkeypatch.setenv("MAMMO_DENSITY_ORT_PARALLEL_VIEWS", "2")
    monkeypatch.setenv("MAMMO_DENSITY_ORT_GRAPH_OPTIMIZATION", "extended")
    monkeypatch.setenv("MAMMO_DENSITY_ORT_SPINNING", "true")
    monkeypatch.setenv("MAMMO_DENSITY_MODEL_VARIANT", "int8")
    settings = load_settings(None)
    tuning = OrtTuning.from_settings(settings)
    assert (tuning.parallel_views, tuning.graph_optimization, tuning.spinning) == \
        (2, "extended", True)
    assert settings.model_variant == "int8"
    monkeypatch.setenv("MAMMO_DENSITY_MODEL_VARIANT", "int4")
    with pytest.raises(Exception, match="model_variant"):
        load_settings(None)
