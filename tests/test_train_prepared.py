"""Prepared model inputs: the same arrays as the DICOM path, refused when they do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammo_density.train import prepared
from mammo_density.train.data import read_manifest_csv
from mammo_density.train.dataset import ArrayCache
from mammo_density.train.train import get_args_parser, main
from mammo_density.worker.preprocess import PREPROCESSING_VERSION
from tests.train_helpers import tiny_manifest, train_argv


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return tiny_manifest(tmp_path_factory.mktemp("synth"), studies=4)


@pytest.mark.parametrize("bits", [8, 16])
def test_prepared_inputs_equal_the_dicom_path(manifest, tmp_path, bits):
    records = read_manifest_csv(manifest)
    out = tmp_path / "pack"
    assert prepared.main([str(manifest), "--size", "32", "--out", str(out),
                          "--bits", str(bits)]) == 0
    packed = read_manifest_csv(out / "manifest.csv")
    assert [(r.exam_id, r.patient_id, r.slot, r.density) for r in packed] == \
        [(r.exam_id, r.patient_id, r.slot, r.density) for r in records]
    # no source file name (they can carry identifiers) survives into the folder
    names = {p.name for p in (out / "inputs").iterdir()}
    assert names == {prepared.DESCRIPTOR} | {f"{i:05d}.png" for i in range(len(records))}
    meta = json.loads((out / "inputs" / prepared.DESCRIPTOR).read_text())
    assert meta == {"size": 32, "preprocessing": PREPROCESSING_VERSION, "bits": bits,
                    "images": len(records)}
    dicom, pack = ArrayCache(None, 32), ArrayCache(None, 32)
    step = 1 / (255 if bits == 8 else 65535)
    for src, dst in zip(records, packed, strict=True):
        a, b = dicom.load(src.path), pack.load(dst.path)
        assert b.dtype == np.float32 and b.shape == (32, 32)
        assert np.abs(a - b).max() <= step / 2 + 1e-6
    # the pack is read in place: nothing is copied into a disk cache
    cache_dir = tmp_path / "cache"
    ArrayCache(cache_dir, 32).load(packed[0].path)
    assert list(cache_dir.iterdir()) == []


def test_prepared_inputs_of_another_size_or_version_are_refused(manifest, tmp_path):
    out = tmp_path / "pack"
    records = prepared.prepare(read_manifest_csv(manifest)[:2], 32, out, progress=False)
    with pytest.raises(prepared.PreparedInputError, match="prepared at 32 px"):
        ArrayCache(None, 64).load(records[0].path)
    desc = out / "inputs" / prepared.DESCRIPTOR
    meta = json.loads(desc.read_text())
    desc.write_text(json.dumps({**meta, "preprocessing": "mdp-0"}))
    with pytest.raises(prepared.PreparedInputError, match="preprocessing mdp-0"):
        ArrayCache(None, 32).load(records[0].path)
    desc.write_text(json.dumps({**meta, "bits": 8}))  # the files hold 16 bits
    with pytest.raises(prepared.PreparedInputError, match="8-bit grey PNG"):
        ArrayCache(None, 32).load(records[1].path)


def test_training_runs_on_prepared_inputs(manifest, tmp_path):
    out = tmp_path / "pack"
    prepared.prepare(read_manifest_csv(manifest), 32, out, bits=8, progress=False)
    argv = train_argv(out / "manifest.csv", tmp_path / "run", "--view", "R-CC",
                      "--epochs", "1", "--no-tensorboard")
    assert main(get_args_parser().parse_args(argv)) == 0
    assert (tmp_path / "run" / "R-CC" / "best.pth").exists()
