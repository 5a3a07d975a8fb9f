"""`mammo-density classify` on synthetic folders (in-process CLI and one real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from mammo_density.cli import main
from mammo_density.commands.classify import collect_jobs
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
    assert len(lines) == 2 and records[0].study_instance_uid in lines[1]
    assert "partial, missing" in lines[1]
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
