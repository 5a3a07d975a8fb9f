"""Pipeline: prepare -> infer -> decide -> report, with the sinks its composition root
hands in; jobs carry UIDs, and images are found in the image source only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammo_density.commands.compose import node_pipeline
from mammo_density.config import load_settings
from mammo_density.job import JobImage, StudyJob
from mammo_density.spool_layout import FileImages, instance_path
from mammo_density.views import SLOTS
from mammo_density.worker.models import ModelNotInstalled
from mammo_density.worker.pipeline import Pipeline, Prepared
from tests.models import cached_registry_entry
from tests.studies import receive, study_files, synth_studies


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model_dir(models_root) -> Path:
    return cached_registry_entry(models_root)


@pytest.fixture(scope="module")
def dense_dir(models_root) -> Path:
    return cached_registry_entry(models_root, task="dense2", name="test-dense", seed=5)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return synth_studies(root, studies=1, seed=21, transfer_syntax="jpeg2000")[0]


def job_of(record, slots=SLOTS) -> StudyJob:
    images = [JobImage(slot=f"{im.laterality}-{im.view}",
                       sop_instance_uid=im.sop_instance_uid)
              for im in record.images if not im.extra and f"{im.laterality}-{im.view}" in slots]
    missing = [s for s in SLOTS if s not in {im.slot for im in images}]
    return StudyJob(study_instance_uid=record.study_instance_uid, images=images,
                    partial=bool(missing), missing_views=missing)


def files_of(record) -> FileImages:
    return FileImages({im.sop_instance_uid: im.path for im in record.images})


def settings_for(tmp_path, model_dir, **extra):
    return load_settings(model_dir=model_dir, data_dir=tmp_path / "data", ort_threads=1,
                         **extra)


def pipe_for(tmp_path, model_dir, record, **extra) -> Pipeline:
    """A pipeline over the record's files, without sinks (as ``classify`` has it)."""
    return Pipeline(settings_for(tmp_path, model_dir, **extra), images=files_of(record))


def test_assess_complete_study(tmp_path, model_dir, study):
    pipe = pipe_for(tmp_path, model_dir, study)
    result = pipe.run(job_of(study))
    assert result.assessable and not result.partial and result.missing_views == []
    assert [f"{v.laterality}-{v.view}" for v in result.views] == list(SLOTS)
    assert set(result.breasts) == {"R", "L"}
    exam = result.exam
    assert exam.category in "ABCD" and exam.dense_source == "birads4"
    denser = [b for b in result.breasts.values() if b.category == exam.category]
    assert exam.p_dense == pytest.approx(max(b.probabilities["C"] + b.probabilities["D"]
                                             for b in denser))
    assert exam.dense == (exam.category in "CD")
    # the rule: the exam takes the denser breast's class
    assert exam.category == max(b.category for b in result.breasts.values())
    assert result.model.name == "test-model" and len(result.model.sha256) == 64
    assert any("NOT FOR CLINICAL USE" in w for w in result.warnings)
    for key in ("read", "decode", "preprocess", "inference", "decide", "report", "total"):
        assert result.timings_ms[key] >= 0.0
    assert result.dose is not None
    assert result.study_date
    # deterministic: the same study gives the same probabilities
    again = pipe.run(job_of(study))
    assert again.exam.probabilities == exam.probabilities


def test_partial_study(tmp_path, model_dir, study):
    pipe = pipe_for(tmp_path, model_dir, study)
    result = pipe.run(job_of(study, slots=("R-CC", "L-CC", "L-MLO")))
    assert result.partial and result.missing_views == ["R-MLO"]
    assert result.breasts["R"].views == ["R-CC"]
    result = pipe.run(job_of(study, slots=("L-CC", "L-MLO")))
    assert set(result.breasts) == {"L"}


def test_poison_image_is_left_out(tmp_path, model_dir, study):
    job = job_of(study)
    pipe = pipe_for(tmp_path, model_dir, study)
    files = pipe.images.files
    first = job.images[0].sop_instance_uid
    bad = tmp_path / "bad.dcm"
    raw = bytearray(files[first].read_bytes())
    bad.write_bytes(bytes(raw[: len(raw) - len(raw) // 3]))  # truncated J2K pixel data
    files[first] = bad
    result = pipe.run(job)
    slot = job.images[0].slot
    assert result.assessable and result.partial and slot in result.missing_views
    assert any(w.startswith(f"{slot}: image not used") for w in result.warnings)
    # no usable image at all: not assessable, exam None
    notdicom = tmp_path / "junk.dcm"
    notdicom.write_text("junk")
    for im in job.images:
        files[im.sop_instance_uid] = notdicom
    result = pipe.run(job)
    assert not result.assessable and result.exam is None
    assert any("not assessable" in w for w in result.warnings)


def test_poison_image_is_an_unused_image(tmp_path, model_dir, study):
    job = job_of(study)
    bad = tmp_path / "bad.dcm"
    bad.write_text("junk")
    pipe = pipe_for(tmp_path, model_dir, study)
    pipe.images.files[job.images[0].sop_instance_uid] = bad
    result = pipe.run(job)
    (unused,) = result.unused_images
    assert (unused.slot, unused.reason.value) == (job.images[0].slot, "unreadable")


def test_nothing_usable_is_reported_with_the_reasons(tmp_path, model_dir):
    """A job with no usable image (the listener queues it so): the run marks the study
    not assessable with every image's reason, and the SR (evidence: the images looked at)
    says why."""
    from pydicom import dcmread

    from mammo_density.logsetup import uid_hash
    from mammo_density.plugin.assembly import StudyAssembler
    from mammo_density.plugin.state import StateDB
    from mammo_density.worker.sr import read_density_sr
    from tests.services import require_testdata

    settings = settings_for(tmp_path, model_dir)
    files = [require_testdata("real-mg", "fo-dicom", "OutOfBoundsOverlay.dcm")]
    received = []
    assert receive(settings, files, received.append) == [0]
    db = StateDB(settings.state_db)
    (row,) = db.instances("1.2.124.1")
    StudyAssembler(db, received.append, stable_seconds=0.0).check_stable(now=row.received_at + 1)
    (job,) = received
    assert job.images == [] and [u.reason.value for u in job.unused_images] == ["stereotactic"]
    result = node_pipeline(settings, owns_outbox=True).run(job)
    assert not result.assessable and result.unused_images == job.unused_images
    assert "stereotactic" in db.study("1.2.124.1")["last_error"]
    assert result.sr is not None, result.warnings
    text = read_density_sr(dcmread(result.sr.path))["text"]
    assert "not assessable" in text and "images not used: L-CC stereotactic" in text
    assert uid_hash(row.sop_uid) == job.unused_images[0].image
    db.close()


def test_dense2_set_when_installed(tmp_path, model_dir, dense_dir, study):
    pipe = pipe_for(tmp_path, model_dir, study, dense_model_dir=dense_dir)
    result = pipe.run(job_of(study))
    assert result.exam.dense_source == "dense2"
    p = [v.p_dense for v in result.views]
    assert all(x is not None and 0 <= x <= 1 for x in p)
    assert result.exam.p_dense == pytest.approx(float(np.mean(p)))
    assert result.model.dense_model.startswith("test-dense")


def test_networks_started_early_give_the_same_result(tmp_path, model_dir, dense_dir, study):
    """``run`` starts each view's networks as soon as its image is ready, beside the
    preparation of the others: the same probabilities, bit for bit, as the four stages
    one after the other (as the Celery tasks run them), dense2 set included."""
    pipe = pipe_for(tmp_path, model_dir, study, dense_model_dir=dense_dir)
    job = job_of(study)
    result = pipe.run(job)
    assert result.timings_ms["inferred_early"] == 4.0
    prepared = pipe.prepare(job)
    inferred = pipe.infer(prepared)
    assert "inferred_early" not in inferred.timings_ms
    staged = pipe.decide(job, prepared, inferred)
    assert result.exam == staged.exam and result.breasts == staged.breasts
    assert [v.model_dump() for v in result.views] == [v.model_dump() for v in staged.views]
    # a network serving several views that are batched runs after, with the others
    from mammo_density.worker.pipeline import EarlyInference

    models = pipe.models
    shared = next(iter(models.sessions.values()))
    original = dict(models.sessions)
    try:
        models.sessions.update({slot: shared for slot in models.sessions})
        assert not models.runs_alone("R-CC") or not models.tuning.batch_shared
        early = EarlyInference(models)
        early.ready("R-CC", prepared.inputs)
        assert bool(early.birads) == (not models.tuning.batch_shared)
    finally:
        models.sessions.clear()
        models.sessions.update(original)


def test_prepared_payload_roundtrip(tmp_path, model_dir, study):
    pipe = pipe_for(tmp_path, model_dir, study)
    job = job_of(study)
    prepared = pipe.prepare(job)
    payload = prepared.to_payload()
    back = Prepared.from_payload(payload)
    a = pipe.infer(prepared).probabilities
    b = pipe.infer(back).probabilities
    for slot in SLOTS:
        # the fixed-random test networks amplify input changes strongly (a 1.5e-5 input
        # step moved them by ~2e-3); float16 (5e-4 steps) moved them by 0.025
        assert np.abs(np.array(a[slot]) - np.array(b[slot])).max() < 5e-3
        assert np.abs(back.inputs[64][slot] - prepared.inputs[64][slot]).max() < 1e-5


def test_payload_of_the_previous_encoding_is_still_read(tmp_path, model_dir, study):
    """A message queued before an upgrade (zlib instead of zstd) gives the same arrays."""
    import base64
    import zlib

    prepared = pipe_for(tmp_path, model_dir, study).prepare(job_of(study))
    payload = prepared.to_payload()
    assert payload["encoding"] == "u16-fixed-zstd-b64" and prepared.thumbnails

    def zlib_text(data: bytes) -> str:
        return base64.b64encode(zlib.compress(data, 1)).decode("ascii")

    old = dict(payload, encoding="u16-fixed-zlib-b64")
    old["arrays"] = {
        str(size): {slot: zlib_text(np.round(np.clip(arr, 0.0, 1.0) * 65535.0)
                                    .astype("<u2").tobytes())
                    for slot, arr in per_slot.items()}
        for size, per_slot in prepared.inputs.items()}
    old["thumbnails"] = {slot: zlib_text(t.tobytes()) for slot, t in prepared.thumbnails.items()}
    new, back = Prepared.from_payload(payload), Prepared.from_payload(old)
    for size, per_slot in new.inputs.items():
        for slot, arr in per_slot.items():
            assert np.array_equal(arr, back.inputs[size][slot])
    assert new.thumbnails.keys() == back.thumbnails.keys()
    for slot, t in new.thumbnails.items():
        assert np.array_equal(t, back.thumbnails[slot])
    with pytest.raises(ValueError, match="encoding"):
        Prepared.from_payload(dict(payload, encoding="u16-fixed-lzma-b64"))


def test_missing_model_is_a_clear_error(tmp_path, study):
    pipe = pipe_for(tmp_path, tmp_path / "no-model", study)
    with pytest.raises(ModelNotInstalled, match="model"):
        pipe.run(job_of(study))


def test_run_writes_sr_and_state(tmp_path, model_dir, study):
    from mammo_density.plugin.outbox import Outbox
    from mammo_density.plugin.state import StateDB

    settings = settings_for(tmp_path, model_dir)
    jobs: list[StudyJob] = []
    statuses = receive(settings, study_files(study), jobs.append)
    assert statuses == [0] * len(statuses) and len(jobs) == 1
    pipe = node_pipeline(settings, owns_outbox=True)
    result = pipe.run(jobs[0])
    assert result.assessable and result.sr is not None
    assert Path(result.sr.path).is_file()
    row = StateDB(settings.state_db).study(study.study_instance_uid)
    assert row["status"] == "done"
    pending = Outbox(settings).pending()
    assert isinstance(pending, list)
    assert "report" in result.timings_ms
    # the summary image went into the outbox beside the SR, with the four thumbnails
    import pydicom

    written = [pydicom.dcmread(p) for p in settings.outbox_dir.rglob("*.dcm")]
    [summary] = [ds for ds in written if ds.Modality == "OT"]
    assert summary.StudyInstanceUID == study.study_instance_uid
    assert len(summary.SourceImageSequence) == 4
    assert "summary_image" in result.timings_ms


def test_run_marks_poison_study_failed(tmp_path, model_dir, study):
    from mammo_density.plugin.state import StateDB

    settings = settings_for(tmp_path, model_dir)
    jobs: list[StudyJob] = []
    receive(settings, study_files(study), jobs.append)
    job = jobs[0]
    for im in job.images:  # every spooled image corrupted after it was received
        instance_path(settings.spool_dir, job.study_instance_uid,
                      im.sop_instance_uid).write_bytes(b"\0" * 200)
    result = node_pipeline(settings, owns_outbox=True).run(job)
    assert not result.assessable
    row = StateDB(settings.state_db).study(study.study_instance_uid)
    assert row["status"] == "failed"
    assert "not assessable" in row["last_error"]



def test_embedded_runner_runs_received_studies(tmp_path, model_dir, tmp_path_factory):
    from mammo_density.plugin.state import StateDB
    from mammo_density.worker.embedded import EmbeddedRunner

    records = synth_studies(tmp_path_factory.mktemp("emb"), studies=2, seed=41,
                            transfer_syntax="rle")
    settings = settings_for(tmp_path, model_dir, embedded_workers=2)
    done = []
    runner = EmbeddedRunner(node_pipeline(settings, owns_outbox=True), on_done=done.append)
    for rec in records:
        receive(settings, study_files(rec), runner.submit)
    runner.close(wait=True)
    assert sorted(r.study_instance_uid for r in done) == \
        sorted(r.study_instance_uid for r in records)
    db = StateDB(settings.state_db)
    for rec in records:
        row = db.study(rec.study_instance_uid)
        assert row["status"] == "done" and row["result"]["exam"]["category"] in "ABCD"
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(StudyJob(study_instance_uid="1.2.3", images=[]))
