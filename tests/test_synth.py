"""Synthetic screening studies: DICOM validity, decoding, geometry, ground truth, CLI, send."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammo_density.cli import main
from mammo_density.synth import MANIFEST_COLUMNS, generate
from mammo_density.synth.baseline import mean_intensity_baseline
from mammo_density.synth.dose import exposure
from mammo_density.synth.generate import (
    CLASSES,
    SynthOptions,
    draw_ground_truth,
)
from mammo_density.synth.phantom import chest_wall_on_right
from mammo_density.synth.profiles import PROFILES, VENDORS
from mammo_density.synth.readback import display_image
from tests.services import dciodvfy, free_port, require_binary, stop_process, wait_for_port

SYNTAXES = ("explicit", "jpeg2000", "jpegls", "jpeg-lossless", "rle")
SCT = {"CC": "399162004", "MLO": "399368009", "XCCL": "399192008"}
SRT = {"CC": "R-10242", "MLO": "R-10226"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    """Decoded pixels of one uncompressed study per vendor (seed 3, with For Processing)."""
    out = {}
    for vendor in VENDORS:
        (rec,) = generate(tmp_path_factory.mktemp(f"ref-{vendor}"), studies=1, seed=3,
                          vendor=vendor, extras=("for-processing",), size=16)
        out[vendor] = [pydicom.dcmread(p).pixel_array for p in rec.paths]
    return out


@pytest.mark.services
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("vendor", VENDORS)
def test_valid_and_lossless(tmp_path: Path, vendor: str, syntax: str,
                            reference: dict[str, list[np.ndarray]]) -> None:
    (rec,) = generate(tmp_path, studies=1, seed=3, vendor=vendor, transfer_syntax=syntax,
                      extras=("for-processing",), size=16)
    presentation = rec.images[0].path
    processing = next(im.path for im in rec.images if im.extra == "for-processing")
    for path in (presentation, processing):
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
    for path, expected in zip(rec.paths, reference[vendor], strict=True):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID.is_compressed == (syntax != "explicit")
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        np.testing.assert_array_equal(arr, expected)


def test_vendor_profiles(tmp_path: Path) -> None:
    recs = {v: generate(tmp_path / v, studies=1, seed=4, vendor=v)[0] for v in VENDORS}
    photometrics = set()
    for vendor, rec in recs.items():
        prof = PROFILES[vendor]
        ds = pydicom.dcmread(rec.images[0].path)
        assert ds.Manufacturer == prof.manufacturer
        assert ds.ManufacturerModelName == prof.model
        assert ds.BitsStored == prof.bits_stored
        assert (ds.Rows, ds.Columns) == prof.shape(8)
        assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(prof.spacing_mm * 8, rel=0.02)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert "WindowCenter" in ds and "WindowWidth" in ds
        photometrics.add(ds.PhotometricInterpretation)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    (full,) = generate(tmp_path / "scaled", studies=1, seed=4, vendor="ge", size=4)
    ds = pydicom.dcmread(full.images[0].path)
    assert (ds.Rows, ds.Columns) == PROFILES["ge"].shape(4)


@pytest.mark.parametrize("style", ["default", "codes_only", "legacy"])
def test_laterality_and_view_tags(tmp_path: Path, style: str) -> None:
    (rec,) = generate(tmp_path, studies=1, seed=5, codes_only=style == "codes_only",
                      legacy_codes=style == "legacy")
    slots = set()
    for im in rec.images:
        ds = pydicom.dcmread(im.path, stop_before_pixels=True)
        assert ds.ImageLaterality == im.laterality
        code = ds.ViewCodeSequence[0]
        assert "ViewModifierCodeSequence" in code and len(code.ViewModifierCodeSequence) == 0
        if style == "legacy":
            assert (code.CodingSchemeDesignator, code.CodeValue) == ("SRT", SRT[im.view])
        else:
            assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", SCT[im.view])
        if style == "codes_only":
            assert "ViewPosition" not in ds
        else:
            assert ds.ViewPosition == im.view
        slots.add((ds.ImageLaterality, im.view))
    assert slots == {("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")}


@pytest.mark.parametrize("vendor", VENDORS)
def test_geometry_chest_wall_pectoral_background(tmp_path: Path, vendor: str) -> None:
    recs = generate(tmp_path, studies=1, seed=6, vendor=vendor)
    for rec in recs:
        for im in rec.images:
            ds = pydicom.dcmread(im.path)
            stored = ds.pixel_array
            maxv = (1 << ds.BitsStored) - 1
            background = maxv if ds.PhotometricInterpretation == "MONOCHROME1" else 0
            img = display_image(im.path)
            mask = img > 0
            assert np.array_equal(mask, stored != background)
            assert 0.15 < mask.mean() < 0.9
            assert img[~mask].max(initial=0.0) == 0.0  # background exactly zero
            cols = stored.shape[1]
            centre = float(np.nonzero(mask)[1].mean())
            right = chest_wall_on_right(ds.PatientOrientation[0])
            assert right == (im.laterality == "R")  # conventional hanging
            assert (centre > cols / 2) == right, f"{im.path.name}: mass not at chest wall"
            wall = mask[:, -1] if right else mask[:, 0]
            nipple_side = mask[:, 0] if right else mask[:, -1]
            assert wall.mean() > 0.4 and nipple_side.mean() == 0.0
            # pectoral muscle: bright triangle in the top chest-wall corner of MLO views
            rows = stored.shape[0]
            corner = (img[: rows // 8, -cols // 10:] if right else img[: rows // 8, : cols // 10])
            lower = (img[rows // 2: rows * 3 // 4, -cols // 10:] if right
                     else img[rows // 2: rows * 3 // 4, : cols // 10])
            if im.view == "MLO":
                assert ds.PatientOrientation[1] == "F"
                assert (corner > 0).all() and corner.mean() > np.median(img[mask])
                assert np.std(corner) < np.std(lower) + 0.02  # smooth muscle vs. textured tissue
            else:
                assert ds.PatientOrientation[1] == ("L" if im.laterality == "R" else "R")
                assert not (corner > 0).all()


def test_class_mix_breasts_and_label_noise() -> None:
    opts = SynthOptions(label_noise=0.03, breast_differ=0.10)
    rng = np.random.default_rng(0)
    draws = [draw_ground_truth(rng, opts) for _ in range(4000)]
    exam = np.array([CLASSES.index(max(b.values())) for b, _ in draws])
    shares = np.bincount(exam, minlength=4) / len(exam)
    np.testing.assert_allclose(shares, [0.13, 0.31, 0.45, 0.10], atol=0.025)
    differ = np.mean([b["R"] != b["L"] for b, _ in draws])
    assert 0.06 < differ < 0.12  # 10% of the non-A women
    noisy = np.mean([b[s] != r[s] for b, r in draws for s in "RL"])
    assert 0.015 < noisy < 0.045
    off_by = {abs(CLASSES.index(b[s]) - CLASSES.index(r[s])) for b, r in draws for s in "RL"}
    assert off_by <= {0, 1}
    custom = SynthOptions(class_mix=(0.0, 0.0, 1.0, 0.0), breast_differ=0.0, label_noise=0.0)
    assert {max(draw_ground_truth(rng, custom)[0].values()) for _ in range(50)} == {"C"}


def test_class_balance_of_written_studies(tmp_path: Path) -> None:
    recs = generate(tmp_path, studies=16, seed=7, size=16)
    counts = {c: sum(r.exam_density == c for r in recs) for c in CLASSES}
    assert counts["C"] >= 4 and counts["B"] >= 2 and counts["C"] > counts["D"]
    for rec in recs:
        for im in rec.images:
            assert im.true_density == rec.breast_density[im.laterality]
            assert im.density == rec.reader_density[im.laterality]
            lo, hi = {"A": (0, .25), "B": (.2, .5), "C": (.45, .75), "D": (.7, 1)}[
                im.true_density]
            assert lo <= im.glandular_fraction <= hi


def test_determinism_and_seeds(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", studies=2, seed=42, vendor="mixed", transfer_syntax="rle")
    b = generate(tmp_path / "b", studies=2, seed=42, vendor="mixed", transfer_syntax="rle")
    c = generate(tmp_path / "c", studies=2, seed=43, vendor="mixed", transfer_syntax="rle")
    for ra, rb in zip(a, b, strict=True):
        assert ra.study_instance_uid == rb.study_instance_uid
        for pa, pb in zip(ra.paths, rb.paths, strict=True):
            assert pa.read_bytes() == pb.read_bytes()
    assert (tmp_path / "a/manifest.csv").read_bytes() == (tmp_path / "b/manifest.csv").read_bytes()
    uids_a = {im.sop_instance_uid for r in a for im in r.images} | {r.study_instance_uid for r in a}
    uids_c = {im.sop_instance_uid for r in c for im in r.images} | {r.study_instance_uid for r in c}
    assert not uids_a & uids_c
    assert a[0].paths[0].read_bytes() != c[0].paths[0].read_bytes()
    series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in a[0].paths}
    assert len(uids_a) == 10 and a[0].study_instance_uid not in series


def test_dose_attributes(tmp_path: Path) -> None:
    recs = generate(tmp_path, studies=3, seed=8, vendor="mixed")
    for rec in recs:
        for im in rec.images:
            ds = pydicom.dcmread(im.path, stop_before_pixels=True)
            assert 24 <= float(ds.KVP) <= 35
            assert 20 <= float(ds.BodyPartThickness) <= 90
            assert 0.005 <= float(ds.OrganDose) <= 0.04  # 0.5-4 mGy in dGy
            assert float(ds.EntranceDoseInmGy) > float(ds.OrganDose) * 100
            assert 30 <= float(ds.CompressionForce) <= 250
            assert int(ds.ExposureInuAs) == pytest.approx(int(ds.Exposure) * 1000, abs=500)
            assert int(ds.ExposureInuAs) == pytest.approx(
                int(ds.XRayTubeCurrent) * int(ds.ExposureTime), rel=0.05)
            assert ds.AnodeTargetMaterial and ds.FilterMaterial and ds.ExposureControlMode
            assert any(ch.isdigit() for ch in ds.CommentsOnRadiationDose)
            assert ds.PatientSex == "F" and int(ds.PatientAge[:3]) >= 40
    ge = pydicom.dcmread(generate(tmp_path / "ge", studies=1, seed=8, vendor="ge")[0].paths[0])
    assert ge.CommentsOnRadiationDose.startswith("%GLANDULAR=")
    # denser and thicker breasts get more dose (same random stream for a fair comparison)
    prof = PROFILES["hologic"]

    def agd(thick: float, g: float) -> float:
        return exposure(np.random.default_rng(1), prof, thick, g).agd_mgy

    assert agd(50, 0.9) > agd(50, 0.1)
    assert agd(75, 0.3) > agd(40, 0.3)


def test_manifest(tmp_path: Path) -> None:
    recs = generate(tmp_path, studies=3, seed=9, extras=("xccl",))
    with open(tmp_path / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert len(body) == sum(len(r.images) for r in recs) == 15
    for row in body:
        path = tmp_path / row["path"]
        assert not Path(row["path"]).is_absolute() and path.exists()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert ds.StudyInstanceUID == row["study_instance_uid"]
        assert ds.PatientID == row["patient_id"]
        assert row["laterality"] == ds.ImageLaterality
        assert row["density"] in CLASSES and row["true_density"] in CLASSES
        assert row["split"] == "" and row["vendor"] == "hologic"
        assert row["extra"] == ("xccl" if row["view"] == "XCCL" else "")


@pytest.mark.services
def test_extras(tmp_path: Path) -> None:
    (rec,) = generate(tmp_path, studies=1, seed=10,
                      extras=("retake", "xccl", "spot", "missing", "for-processing"))
    standard = rec.standard_images()
    assert len(standard) == 3 and len(rec.missing) == 1
    assert rec.missing[0] not in {im.slot for im in standard}
    by_extra: dict[str, list] = {}
    for im in rec.images:
        by_extra.setdefault(im.extra, []).append(im)
    (old,) = by_extra["retake-superseded"]
    (new,) = [im for im in standard if im.slot == old.slot]
    ds_old = pydicom.dcmread(old.path, stop_before_pixels=True)
    ds_new = pydicom.dcmread(new.path, stop_before_pixels=True)
    assert ds_new.AcquisitionTime > ds_old.AcquisitionTime
    assert ds_new.ContentTime > ds_old.ContentTime
    assert ds_new.SOPInstanceUID != ds_old.SOPInstanceUID
    (xccl,) = by_extra["xccl"]
    code = pydicom.dcmread(xccl.path, stop_before_pixels=True).ViewCodeSequence[0]
    assert code.CodeValue == SCT["XCCL"]
    (spot,) = by_extra["spot"]
    sds = pydicom.dcmread(spot.path, stop_before_pixels=True)
    assert sds.ViewCodeSequence[0].ViewModifierCodeSequence[0].CodeValue == "399055006"
    processing = by_extra["for-processing"]
    assert len(processing) == 3
    for im in processing:
        ds = pydicom.dcmread(im.path, stop_before_pixels=True)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1"
        assert ds.PresentationIntentType == "FOR PROCESSING"
        assert ds.SeriesInstanceUID != ds_new.SeriesInstanceUID
        assert ds.StudyInstanceUID == rec.study_instance_uid
    for im in rec.images:
        assert dciodvfy(im.path)[0] == []
    (fp,) = generate(tmp_path / "fp", studies=1, seed=10, for_processing=True)
    assert {pydicom.dcmread(p, stop_before_pixels=True).PresentationIntentType
            for p in fp.paths} == {"FOR PROCESSING"}
    assert all(im.extra == "" for im in fp.images)


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vendor"):
        generate(tmp_path, studies=1, vendor="agfa")
    with pytest.raises(ValueError, match="extras"):
        generate(tmp_path, studies=1, extras=("nonsense",))
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, studies=1, size="huge")
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path), "--class-mix", "1,2"])
    assert exc.value.code == 2
    assert main(["synth", str(tmp_path), "--send", "nohost"]) == 2


@pytest.mark.services
def test_cli_send_to_storescp_and_preview(tmp_path: Path) -> None:
    exe = require_binary("storescp")
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    proc = subprocess.Popen([exe, "+xa", "-od", str(received), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        preview = tmp_path / "preview.png"
        rc = main(["synth", str(tmp_path / "out"), "--studies", "2", "--seed", "11", "--size", "16",
                   "--transfer-syntax", "jpegls", "--extras", "for-processing",
                   "--send", f"127.0.0.1:{port}", "--aet", "STORESCP",
                   "--preview", str(preview)])
        assert rc == 0
        sent = sorted(p.name for p in (tmp_path / "out").rglob("*.dcm"))
        assert len(sent) == 16
        got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
               for p in received.iterdir()}
        want = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                for p in (tmp_path / "out").rglob("*.dcm")}
        assert got == want
        assert preview.stat().st_size > 10_000 and preview.read_bytes()[:4] == b"\x89PNG"
    finally:
        stop_process(proc)
    # nothing listens any more: every study fails, the exit status says so
    rc = main(["synth", str(tmp_path / "out2"), "--studies", "1", "--seed", "12",
               "--send", f"127.0.0.1:{port}"])
    assert rc == 1


def test_mean_intensity_baseline_runs(tmp_path: Path) -> None:
    recs = generate(tmp_path, studies=12, seed=13, size=16,
                    class_mix=(0.25, 0.25, 0.25, 0.25))
    results = mean_intensity_baseline(recs)
    assert [r.n_test for r in results] == [6, 6, 6]
    assert all(0.0 <= r.accuracy <= 1.0 for r in results)
