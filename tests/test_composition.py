"""The composed pipeline: UIDs in a job, images from the node's own spool only, SR
destinations decided by the outbox's owner, the same stage names in both modes.

No service is needed: the spool, state database and outbox are real files and SQLite
databases in ``tmp_path``; the models are the small test networks (ONNX Runtime).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pydicom
import pytest

from mammo_density.commands.compose import node_pipeline
from mammo_density.config import load_settings
from mammo_density.job import StudyJob
from mammo_density.plugin.outbox import PENDING, Outbox
from mammo_density.spool_layout import NotInSpool, SpoolImages, instance_path
from mammo_density.worker import tasks
from mammo_density.worker.celery_app import celery_config
from mammo_density.worker.pipeline import Pipeline
from mammo_density.worker.sr import build_density_sr
from tests import srdata
from tests.models import cached_registry_entry
from tests.studies import receive, study_files, synth_studies


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    return synth_studies(tmp_path_factory.mktemp("synth"), studies=1, seed=57,
                         transfer_syntax="explicit")[0]


def _settings(tmp_path: Path, model_dir: Path, **kw):
    return load_settings(data_dir=tmp_path / "data", model_dir=model_dir, ort_threads=1, **kw)


def test_job_json_has_no_paths_and_ignores_one(tmp_path, model_dir, record):
    """A job names UIDs; a ``path`` slipped into a task is ignored, and the file it names
    (a perfectly good image of the same study, outside the spool) is never read."""
    settings = _settings(tmp_path, model_dir)
    settings.spool_dir.mkdir(parents=True)
    images = [{"slot": f"{im.laterality}-{im.view}", "sop_instance_uid": im.sop_instance_uid,
               "path": str(im.path)} for im in record.images if not im.extra]
    job = StudyJob.model_validate({"study_instance_uid": record.study_instance_uid,
                                   "images": images,
                                   "other_paths": ["/etc/passwd"],
                                   "other_sop_uids": ["../../../../etc/passwd"]})
    dumped = job.model_dump()
    assert "other_paths" not in dumped and all("path" not in im for im in dumped["images"])
    result = node_pipeline(settings, owns_outbox=True).run(job)
    assert not result.assessable and result.exam is None
    for slot in ("R-CC", "L-CC", "R-MLO", "L-MLO"):
        assert f"{slot}: image not used: image not found: not in the spool" in \
            result.warnings


def test_spool_images_refuse_what_lies_outside(tmp_path, record):
    spool = tmp_path / "spool"
    images = SpoolImages(spool)
    with pytest.raises(NotInSpool):  # no spool at all yet
        images.locate("1.2.3", "1.2.3.4")
    im = next(im for im in record.images if not im.extra)
    study, sop = record.study_instance_uid, im.sop_instance_uid
    # a link planted in the spool, pointing at a file outside it
    link = instance_path(spool, study, sop)
    link.parent.mkdir(parents=True)
    os.symlink(im.path, link)
    with pytest.raises(NotInSpool, match="outside the spool"):
        images.locate(study, sop)
    # a study folder that is itself a link to somewhere else
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "1.2.3.dcm").write_bytes(Path(im.path).read_bytes())
    os.symlink(other, spool / "1.2.99")
    with pytest.raises(NotInSpool, match="outside the spool"):
        images.locate("1.2.99", "1.2.3")
    # hostile UIDs are hashed into names inside the spool: nothing to find
    for uid in ("../../etc/passwd", "/etc/passwd", "1.2/../../x"):
        with pytest.raises(NotInSpool, match="not in the spool"):
            images.locate(uid, uid)
    # the real thing
    link.unlink()
    link.write_bytes(Path(im.path).read_bytes())
    assert images.locate(study, sop) == link.resolve()


def test_received_study_is_read_from_the_spool(tmp_path, model_dir, record):
    """The files given to the listener are gone after ingest: the pipeline reads the
    spooled copies, found by UID."""
    settings = _settings(tmp_path, model_dir)
    copies = tmp_path / "sent"
    copies.mkdir()
    files = []
    for path in study_files(record):
        files.append(copies / path.name)
        files[-1].write_bytes(path.read_bytes())
    jobs: list[StudyJob] = []
    receive(settings, files, jobs.append)
    for f in files:
        f.unlink()
    result = node_pipeline(settings, owns_outbox=True).run(jobs[0])
    assert result.assessable and not result.partial and result.sr is not None


def _sr():
    sources = srdata.mg_study(srdata.SLOTS)
    man = srdata.manifest()
    return build_density_sr(srdata.result_for(sources, man=man), sources, man)


def test_sr_destinations_are_decided_by_the_outbox_owner(tmp_path):
    """A worker started without (or with other) SR destinations stores the SR; serve,
    which owns the outbox, gives it serve's destinations. Before, the worker's own
    environment decided and 0 destinations passed silently."""
    data = tmp_path / "data"
    serve = load_settings(data_dir=data, sr_destinations=["PACS@127.0.0.1:11999"])
    worker_env = load_settings(data_dir=data, sr_destinations=[])
    elsewhere = load_settings(data_dir=data, sr_destinations=["EVIL@10.0.0.1:104"])
    owner = Outbox(serve, owner=True)
    sr = _sr()
    Outbox(worker_env, owner=False).enqueue(sr, study_uid=str(sr.StudyInstanceUID))
    Outbox(elsewhere, owner=False).enqueue(sr, study_uid=str(sr.StudyInstanceUID))
    assert owner.deliveries(str(sr.SOPInstanceUID)) == []  # not routed by a worker
    assert Outbox(elsewhere, owner=False).route_new() == 0  # a non-owner never routes
    assert owner.route_new() == 1
    rows = owner.deliveries(str(sr.SOPInstanceUID))
    assert [(r["destination"], r["status"]) for r in rows] == \
        [("PACS@127.0.0.1:11999", PENDING)]
    assert owner.route_new() == 0  # once
    assert (data / "outbox" / f"{sr.SOPInstanceUID}.dcm").is_file()


def test_no_destination_is_a_warning_naming_the_outbox(tmp_path, caplog):
    settings = load_settings(data_dir=tmp_path / "data", sr_destinations=[])
    sr = _sr()
    with caplog.at_level("INFO"):
        path = Outbox(settings).enqueue(sr, study_uid=str(sr.StudyInstanceUID))
    assert pydicom.dcmread(path).SOPInstanceUID == sr.SOPInstanceUID
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("no SR destination" in r.getMessage() and str(settings.outbox_dir) in
               r.getMessage() for r in warnings)


def test_older_outbox_databases_are_treated_as_routed(tmp_path):
    """An outbox.sqlite3 from before routing by the owner gets the column, its SRs
    count as routed (they already have their delivery rows)."""
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "outbox.sqlite3")
    db.executescript("CREATE TABLE srs (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,"
                     " series_uid TEXT NOT NULL DEFAULT '', revision INTEGER NOT NULL"
                     " DEFAULT 1, path TEXT NOT NULL, calling_aet TEXT NOT NULL DEFAULT '',"
                     " peer_host TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);"
                     "INSERT INTO srs VALUES ('1.2.3', '1.2', '', 1, '/x', '', '', 0);")
    db.close()
    outbox = Outbox(load_settings(data_dir=data, sr_destinations=["A@127.0.0.1:1"]))
    assert outbox.route_new() == 0


def test_one_sentence_in_both_modes(tmp_path):
    """Embedded and Celery run the same stages, under the same names, in one order."""
    sentence = ["prepare", "infer", "decide", "report"]
    assert [fn.__name__ for fn in tasks.STAGES] == sentence
    for name in sentence:
        assert callable(getattr(Pipeline, name))
    run_source = inspect.getsource(Pipeline.run)
    positions = [run_source.index(f"self.{name}(") for name in sentence]
    assert positions == sorted(positions)
    conf = celery_config(load_settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path))
    routes = {name.split(".")[-1]: r["queue"] for name, r in conf["task_routes"].items()}
    assert routes == {"prepare": "cpu", "infer": "gpu", "decide": "cpu", "report": "cpu",
                      "run": "cpu"}
    # the old verbs are gone
    for old in ("assess", "assess_with_sources", "finish", "complete"):
        assert not hasattr(Pipeline, old)


def test_inference_only_worker_has_no_sinks(tmp_path, model_dir):
    settings = _settings(tmp_path, model_dir)
    pipe = node_pipeline(settings, owns_outbox=False, sinks=False)
    assert pipe.states is None and pipe.outbox is None and pipe.hooks is None
    assert not settings.data_dir.exists()


def test_a_task_naming_a_file_cannot_make_a_worker_read_it(tmp_path, model_dir, record):
    """The Celery task bodies, as a worker runs them, given messages written by someone
    with access to the broker: image paths, and UIDs that try to climb out of the spool.
    Nothing outside the worker's spool is read, and no SR comes of it."""
    settings = _settings(tmp_path, model_dir)
    jobs: list[StudyJob] = []
    receive(settings, study_files(record), jobs.append)  # a real study, queued
    planted = tmp_path / "elsewhere.dcm"  # a readable mammogram outside the spool
    planted.write_bytes(next(im.path for im in record.images if not im.extra).read_bytes())
    forged = {"study_instance_uid": record.study_instance_uid, "revision": jobs[0].revision,
              "images": [{"slot": "R-CC", "path": str(planted),
                          "sop_instance_uid": str(planted.with_suffix(""))},
                         {"slot": "L-CC", "sop_instance_uid": "../../../" + str(planted)}],
              "other_paths": [str(planted)]}
    unknown = dict(forged, study_instance_uid="../..")
    tasks.configure(lambda: node_pipeline(settings, owns_outbox=False))
    try:
        # a study the node never received is not even started
        assert tasks.prepare(unknown)["skipped"] is True
        payload = tasks.prepare(forged)
        assert payload["arrays"] == {}
        assert set(payload["failed"]) == {"R-CC", "L-CC"}
        assert all(r == "image not found: not in the spool" for r in payload["failed"].values())
        result = tasks.report(tasks.decide(tasks.infer(payload), forged), forged)
        assert result["assessable"] is False and result["sr"] is None
    finally:
        tasks.configure(lambda: Pipeline(settings))
    states = node_pipeline(settings, owns_outbox=True).states
    assert states.study("../..") is None
    assert states.study(record.study_instance_uid)["status"] == "failed"
    assert list(settings.outbox_dir.glob("*.dcm")) == []
