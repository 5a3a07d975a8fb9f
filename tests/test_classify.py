"""`mammo-density classify` on synthetic folders (in-process CLI and one real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from mammo_density.cli import main
from mammo_density.commands.classify import collect_jobs
from mammo_density.logsetup import uid_hash
from mammo_density.result import StudyResult
from tests.models import cached_registry_entry
from tests.services import REPO
from tests.studies import synth_studies


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    records = synth_studies(root, studies=2, seed=51, transfer_syntax="jpeg-lossless",
                            extras=("retake", "missing"))
    (root / "broken.dcm").write_bytes(b"DICM? no." * 40)
    (root / "notes.txt").write_text("not DICOM, not named .dcm: ignored in folders")
    return root, records


def test_collect_groups_studies_and_picks_latest_retake(folder):
    root, records = folder
    collected = collect_jobs([root])
    assert [Path(p).name for p, _ in collected.unreadable] == ["broken.dcm"]
    by_uid = {j.study_instance_uid: j for j in collected.jobs}
    assert set(by_uid) == {r.study_instance_uid for r in records}
    for rec in records:
        job = by_uid[rec.study_instance_uid]
        used = {im.sop_instance_uid for im in job.images}
        expected = {im.sop_instance_uid for im in rec.images if not im.extra}
        assert used == expected  # the superseded retake is not used
        assert job.missing_views == list(rec.missing) and job.partial == bool(rec.missing)
        superseded = [im for im in rec.images if im.extra == "retake-superseded"]
        assert all(im.sop_instance_uid in job.other_sop_uids for im in superseded)
        assert all(collected.files[im.sop_instance_uid] == str(Path(im.path).resolve())
                   for im in rec.images)
        # each image not used says why
        assert {(u.image, u.reason.value) for u in job.unused_images} == {
            (uid_hash(im.sop_instance_uid), "retake_superseded") for im in superseded}


def test_classify_json_and_sr_out(folder, model_dir, tmp_path, capsys):
    root, records = folder
    out = tmp_path / "srs"
    rc = main(["-q", "classify", str(root), "--json", "--model-dir", str(model_dir),
               "--sr-out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    lines = [ln for ln in captured.out.splitlines() if ln.strip()]
    results = [StudyResult.model_validate_json(ln) for ln in lines]
    assert {r.study_instance_uid for r in results} == {r.study_instance_uid for r in records}
    for r in results:
        assert r.assessable and r.exam is not None and r.sr is not None
        assert r.partial and len(r.missing_views) == 1
        # offline wording: no stable timeout in classify
        assert not any("stable timeout" in w for w in r.warnings), r.warnings
        assert f"partial study: views missing ({r.missing_views[0]})" in r.warnings
        assert all(v.quality is not None and v.quality.breast_fraction > 0 for v in r.views)
    assert "broken.dcm" in captured.err
    srs = sorted(out.glob("*.dcm"))
    assert len(srs) == 2
    for path in srs:
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SR"
        assert str(ds.StudyInstanceUID) in {r.study_instance_uid for r in records}


def test_classify_table_of_a_file_list(folder, model_dir, capsys):
    root, records = folder
    files = [str(im.path) for im in records[0].images] + [str(root / "broken.dcm")]
    rc = main(["-q", "classify", *files, "--model-dir", str(model_dir)])
    captured = capsys.readouterr()
    assert rc == 0
    lines = captured.out.strip().splitlines()
    assert lines[0].split()[:3] == ["study", "exam", "dense"]
    assert records[0].study_instance_uid in lines[1]
    assert "partial, missing" in lines[1]
    superseded = [im for im in records[0].images if im.extra == "retake-superseded"]
    assert superseded and f"{len(superseded)} not used" in lines[1]
    assert lines[2:4] == ["", "images not used:"]
    assert len(lines) == 4 + len(superseded)
    for im, line in zip(superseded, lines[4:], strict=True):
        assert uid_hash(im.sop_instance_uid) in line and "retake_superseded: an earlier" in line
    assert "skipped" in captured.err and "broken.dcm" in captured.err


def test_classify_without_model_says_how_to_get_one(folder, tmp_path):
    root, _ = folder
    proc = subprocess.run(
        [sys.executable, "-m", "mammo_density.cli", "classify", str(root), "--model-dir",
         str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no model at" in proc.stderr and "train" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_classify_nothing_found(tmp_path, model_dir, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["-q", "classify", str(tmp_path / "empty"), "--model-dir", str(model_dir)])
    assert rc == 1
    assert "no DICOM studies" in capsys.readouterr().err


def _study_folder(folder: Path, make) -> str:
    """Four views of one study, each image made by ``make(slot, study_uid)``."""
    from pydicom.uid import generate_uid

    from mammo_density.views import SLOTS
    from tests.mg_images import write

    study = generate_uid()
    for slot in SLOTS:
        write(make(slot, study), folder / f"{slot}.dcm")
    return study


def _mg(slot: str, study: str, pixels):
    from tests.mg_images import mg_dataset

    side, view = slot.split("-")
    ds = mg_dataset(pixels, laterality=side, view=view, study_uid=study,
                    orientation=("A", "R") if side == "L" else ("A", "L"))
    ds.ImagerPixelSpacing = [0.5, 0.5]
    return ds


def test_classify_exits_1_when_nothing_is_assessable(tmp_path, model_dir, capsys):
    """Every image of the study is undecodable (JPEG 2000 of another size than the
    header's): not assessable, the reason names the real sizes, exit status 1."""
    from tests.mg_images import breast_image, encode

    def mislabelled(slot, study):
        ds = encode(_mg(slot, study, breast_image(256, 208, seed=3)), "j2k")
        ds.Rows, ds.Columns = 300, 260  # large enough for the gate
        return ds

    study = _study_folder(tmp_path, mislabelled)
    rc = main(["-q", "classify", str(tmp_path), "--model-dir", str(model_dir)])
    captured = capsys.readouterr()
    assert rc == 1
    row = next(ln for ln in captured.out.splitlines() if study in ln)
    assert "NOT ASSESSABLE" in row and "256x208" in row and "300x260" in row
    assert "nothing assessable" in captured.err


def test_classify_flags_low_confidence(tmp_path, model_dir, capsys):
    """A study whose breasts span a handful of grey levels: assessed (exit 0), flagged
    low-confidence with the reason, per view and for the exam, in JSON and the table."""
    from tests.mg_images import breast_image

    flat = (breast_image(256, 208, seed=4) // 200).astype("uint16")
    _study_folder(tmp_path, lambda slot, study: _mg(slot, study, flat))
    rc = main(["-q", "classify", str(tmp_path), "--json", "--model-dir", str(model_dir)])
    assert rc == 0
    result = StudyResult.model_validate_json(capsys.readouterr().out.strip())
    assert result.assessable and result.low_confidence
    assert any("out-of-distribution intensity" in r for r in result.low_confidence_reasons)
    assert all(v.quality.low_confidence for v in result.views)
    rc = main(["-q", "classify", str(tmp_path), "--model-dir", str(model_dir)])
    assert rc == 0 and "LOW CONFIDENCE" in capsys.readouterr().out


def test_classify_says_why_images_are_not_used(model_dir, tmp_path, capsys, monkeypatch):
    """Real vendor stubs and a biopsy image are not used, with reasons in the JSON, the
    table and the SR; digitised film is assessed only with the setting."""
    import shutil

    from mammo_density.worker.sr import read_density_sr
    from tests import mgdata
    from tests.services import require_testdata

    folder = tmp_path / "in"
    folder.mkdir()
    names = {"fo-dicom/OutOfBoundsOverlay.dcm": "stereotactic",
             "openrem/MG-Im-GE-SenDS-scaled.dcm": "too_small",
             "openrem/MG-Im-GE_Seno_2_ForPresentation.dcm": "stereotactic"}
    for name in names:
        shutil.copy(require_testdata("real-mg", *name.split("/")), folder / Path(name).name)
    film = mgdata.mg(pydicom.uid.generate_uid(), "L", "CC", sop_class=mgdata.SECONDARY_CAPTURE,
                     rows=256, cols=208)
    mgdata.write(film, folder, "film.dcm")
    srs = tmp_path / "srs"

    main(["-q", "classify", str(folder), "--json", "--model-dir", str(model_dir),
          "--sr-out", str(srs)])
    results = {r.study_instance_uid: r for r in map(
        StudyResult.model_validate_json, capsys.readouterr().out.splitlines())}
    assert len(results) == 4
    reasons = {}
    for name, reason in names.items():
        ds = pydicom.dcmread(folder / Path(name).name, stop_before_pixels=True)
        r = results[str(ds.StudyInstanceUID)]
        assert not r.assessable and r.exam is None
        assert [(u.image, u.slot, u.reason.value) for u in r.unused_images] == [
            (uid_hash(str(ds.SOPInstanceUID)), "L-CC", reason)]
        assert any(w.startswith("not assessable") for w in r.warnings)
        reasons[str(ds.StudyInstanceUID)] = reason
    film_result = results[str(film.StudyInstanceUID)]
    assert [u.reason.value for u in film_result.unused_images] == ["digitised_film_off"]
    # the SR of a study with nothing usable still says why
    for r in results.values():
        assert r.sr is not None, r.warnings
        text = read_density_sr(pydicom.dcmread(r.sr.path))["text"]
        assert "not assessable" in text
        assert r.unused_images[0].reason.value in text

    main(["-q", "classify", str(folder), "--model-dir", str(model_dir)])
    table = capsys.readouterr().out
    assert "images not used:" in table
    for reason in names.values():
        assert f"L-CC  {reason}: " in table

    main(["-q", "classify", str(folder / "film.dcm"), "--json", "--model-dir", str(model_dir),
          "--digitised-film"])
    (film_result,) = map(StudyResult.model_validate_json, capsys.readouterr().out.splitlines())
    assert film_result.assessable and [v.view for v in film_result.views] == ["CC"]
    assert film_result.unused_images == []
    monkeypatch.setenv("MAMMO_DENSITY_DIGITISED_FILM", "true")  # the setting does the same
    main(["-q", "classify", str(folder / "film.dcm"), "--json", "--model-dir", str(model_dir)])
    (film_result,) = map(StudyResult.model_validate_json, capsys.readouterr().out.splitlines())
    assert film_result.assessable and film_result.unused_images == []


def test_classify_flags_implants_and_leaves_out_implant_displaced_views(model_dir, tmp_path,
                                                                         capsys):
    from tests import mgdata

    images = mgdata.study(rows=256, cols=208)
    for ds in images:
        ds.BreastImplantPresent = "YES"
    displaced = mgdata.mg(images[0].StudyInstanceUID, "R", "CC", rows=256, cols=208,
                          modifier=mgdata.IMPLANT_DISPLACED, instance_number=9)
    displaced.BreastImplantPresent = "YES"
    for ds in [*images, displaced]:
        mgdata.write(ds, tmp_path / "in")
    main(["-q", "classify", str(tmp_path / "in"), "--json", "--model-dir", str(model_dir)])
    (result,) = map(StudyResult.model_validate_json, capsys.readouterr().out.splitlines())
    assert result.assessable and len(result.views) == 4 and result.implant_present
    assert any("implants present" in w for w in result.warnings)
    assert [(u.image, u.slot, u.reason.value) for u in result.unused_images] == [
        (uid_hash(displaced.SOPInstanceUID), "R-CC", "implant_displaced")]
