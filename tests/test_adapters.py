"""Dataset adapters on small fixture files laid out like each public dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo_density.train import adapters
from mammo_density.train.adapters.common import AdapterError
from mammo_density.train.data import check_patient_disjoint, read_manifest_csv

FIX = Path(__file__).parent / "fixtures" / "adapters"


def convert(name: str, tmp_path: Path, **kw):
    out = tmp_path / f"{name}.csv"
    recs = adapters.get(name).convert(FIX / name, out, **kw)
    back = read_manifest_csv(out)  # the written manifest reads back in our format
    assert [(r.exam_id, r.slot, r.density) for r in back] == \
        [(r.exam_id, r.slot, r.density) for r in recs]
    return recs, back


def test_vindr(tmp_path):
    recs, back = convert("vindr", tmp_path)
    assert len(recs) == 8
    by_id = {r.path.name: r for r in recs}
    assert by_id["i1.dicom"].density == "C" and by_id["i1.dicom"].split == "train"
    assert by_id["i7.dicom"].density == "B" and by_id["i7.dicom"].split == "test"
    assert by_id["i5.dicom"].path == FIX / "vindr" / "images" / "s2" / "i5.dicom"
    assert back[0].path == recs[0].path


def test_cbis_ddsm_both_column_spellings(tmp_path):
    recs, _ = convert("cbis-ddsm", tmp_path)
    dens = {(r.patient_id, r.slot, r.split): r.density for r in recs}
    # mass CSV: breast_density; calc CSV: "breast density"; duplicate abnormality rows once
    assert dens[("P_00038", "L-CC", "test")] == "B"
    # P_00004 is in the test set too: kept in test only (no woman in two splits)
    assert ("P_00004", "R-MLO", "train") not in dens
    assert dens[("P_00004", "L-CC", "test")] == "D"
    assert dens[("P_00001", "L-CC", "train")] == "C"
    assert len(recs) == 4
    check_patient_disjoint(recs)


def test_rsna_only_labelled_sites(tmp_path):
    recs, _ = convert("rsna", tmp_path)
    assert {r.patient_id for r in recs} == {"10011"}
    assert len(recs) == 4  # the ML view is not a screening view
    assert all(r.density == "C" for r in recs)
    assert recs[0].path == FIX / "rsna" / "train_images" / "10011" / "220375232.dcm"
    assert recs[0].fields["site_id"] == "1"


def test_embed_join_by_accession_and_side(tmp_path):
    recs, _ = convert("embed", tmp_path, path_prefix="/mnt/NAS2/mammo/anon_dicom/")
    got = {(r.exam_id, r.slot): r.density for r in recs}
    # B applies to both sides; male (5) excluded; C-view and spot views dropped
    assert got == {("9001", "L-CC"): "B", ("9001", "R-MLO"): "B",
                   ("9003", "R-CC"): "D", ("9003", "L-MLO"): "C"}
    r = next(r for r in recs if r.slot == "R-CC")
    assert r.path == FIX / "embed" / "cohort_1" / "333" / "9003" / "f.dcm"
    assert r.patient_id == "333"


def test_inbreast_semicolon_acr(tmp_path):
    recs, _ = convert("inbreast", tmp_path)
    got = {(r.patient_id, r.slot): r.density for r in recs}
    assert got == {("aaaa0000aaaa0000", "R-CC"): "A", ("aaaa0000aaaa0000", "R-MLO"): "A",
                   ("bbbb0000bbbb0000", "L-CC"): "D", ("bbbb0000bbbb0000", "L-MLO"): "D"}


def test_mias_three_classes_to_dicom(tmp_path):
    from mammo_density.worker.preprocess import load_model_input

    recs, _ = convert("mias", tmp_path)
    got = {r.path.name: (r.slot, r.density, r.fields["mias_tissue"], r.patient_id)
           for r in recs}
    assert got == {"mdb001.dcm": ("R-MLO", "B", "G", "mias001"),
                   "mdb002.dcm": ("L-MLO", "B", "G", "mias001"),
                   "mdb005.dcm": ("R-MLO", "A", "F", "mias003")}
    # the wrapped DICOM goes through the shared preprocessing
    x = load_model_input(recs[0].path, 32)
    assert x.shape == (32, 32) and x.max() > 0


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        adapters.get("vindr").convert(tmp_path, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="unknown dataset"):
        adapters.get("nope")


def test_module_entry_point(tmp_path, capsys):
    from mammo_density.train.adapters.__main__ import main

    assert main(["rsna", str(FIX / "rsna"), "--out", str(tmp_path / "m.csv")]) == 0
    assert "4 images, 1 exams" in capsys.readouterr().out
    assert main(["vindr", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2


def _inbreast_png_fixture(root: Path) -> Path:
    """A tiny INbreast PNG copy: two women, one exam each (synthetic pixels)."""
    import cv2
    import numpy as np

    img_dir = root / "public" / "images" / "inbreast"
    img_dir.mkdir(parents=True)
    rows = [("R", "CC", "11", "aaaa", "1"), ("R", "MLO", "12", "aaaa", "2"),
            ("L", "CC", "21", "bbbb", "4"), ("L", "MLO", "22", "bbbb", "4"),
            ("L", "MLO", "23", "bbbb", "")]  # unlabelled: skipped
    yy, xx = np.mgrid[0:80, 0:65]
    for lat, view, fid, pid, _ in rows:
        breast = ((xx - (64 if lat == "R" else 0)) ** 2 / 40.0 ** 2
                  + (yy - 40) ** 2 / 35.0 ** 2) < 1  # chest wall on the display side
        img = np.where(breast, 150 + (yy % 50), 3).astype(np.uint8)
        cv2.imwrite(str(img_dir / f"{fid}_{pid}_MG_{lat}_{view[:2]}_ANON.png"), img)
    lines = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    lines += [f"removed;removed;{lat};{view};201001;{fid};{acr};1"
              for lat, view, fid, _, acr in rows]
    (root / "INbreast.csv").write_text("\n".join(lines) + "\n")
    return root


def test_inbreast_png_copy_wrapped_into_dicom(tmp_path):
    import pydicom

    from mammo_density.worker.preprocess import load_model_input

    root = _inbreast_png_fixture(tmp_path / "inbreast")
    out = tmp_path / "m.csv"
    recs = adapters.get("inbreast").convert(root, out)
    back = read_manifest_csv(out)
    got = {(r.patient_id, r.exam_id, r.slot): r.density for r in back}
    assert got == {("aaaa", "aaaa-201001", "R-CC"): "A", ("aaaa", "aaaa-201001", "R-MLO"): "B",
                   ("bbbb", "bbbb-201001", "L-CC"): "D", ("bbbb", "bbbb-201001", "L-MLO"): "D"}
    ds = pydicom.dcmread(recs[0].path)
    assert recs[0].path.parent == tmp_path / "inbreast-dicom"
    assert (ds.Modality, ds.ImageLaterality, ds.ViewPosition) == ("MG", "R", "CC")
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.pixel_array.shape == (80, 65)
    # 80 x 65 has the 4084 x 3328 detector's aspect: 70 um x 4084 / 80 rows
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.07 * 4084 / 80)
    # the shared preprocessing puts the chest wall on the left for both breasts
    for r in recs:
        x = load_model_input(r.path, 32)
        assert x[:, :8].mean() > x[:, -8:].mean()
    # a second run reuses the wrapped files (same UIDs, files not rewritten)
    mtime = recs[0].path.stat().st_mtime_ns
    again = adapters.get("inbreast").convert(root, out)
    assert again[0].path.stat().st_mtime_ns == mtime
