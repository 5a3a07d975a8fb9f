"""Celery with a REAL redis-server and REAL `mammo-density worker` processes.

- A study received through the listener's ingest path is submitted to the broker, a
  worker classifies it: state ``done``, result stored, SR in the outbox.
- A study whose every image is unreadable is failed once with a reason (not retried).
- SIGKILL of the whole worker process group in the middle of a task, another worker
  started: the study is delivered again (visibility timeout) and completes exactly once.
- SIGKILL of the pool process only (what the OOM killer does): Celery hands the message
  back at once, while the dead task's claim is fresh; the message belongs to the
  submission that holds the claim, so the new delivery takes it again at once and
  completes the study (it was left in ``processing`` before claims had owners). A task
  retried after a transient error does the same.
  The worker is held mid-task deterministically: one spooled image is replaced by a
  FIFO, so reading it blocks until the test puts the real file back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from mammo_density.commands.compose import node_pipeline
from mammo_density.config import load_settings
from mammo_density.job import StudyJob
from mammo_density.plugin.outbox import Outbox
from mammo_density.plugin.state import StateDB
from mammo_density.spool_layout import instance_path
from mammo_density.worker import tasks
from mammo_density.worker.celery_app import celery_config
from tests.models import cached_registry_entry
from tests.services import REPO, require_binary
from tests.studies import receive, study_files, synth_studies

# A redelivered message finds the killed task's claim stale only once the claim is older
# than the task limit; the claim is made after the victim loads its model (about 0.6 s
# idle, over 1 s on a busy machine), so the visibility timeout leaves 5 s for that.
VISIBILITY_S = 10.0
TASK_LIMIT_S = 5.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return synth_studies(tmp_path_factory.mktemp("synth"), studies=3, seed=31,
                         transfer_syntax="jpeg2000")


def _env(redis_url: str, data_dir: Path, model_dir: Path, *,
         visibility: float = VISIBILITY_S, limit: float = TASK_LIMIT_S) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MAMMO_DENSITY_BROKER_URL": redis_url,
        "MAMMO_DENSITY_DATA_DIR": str(data_dir),
        "MAMMO_DENSITY_MODEL_DIR": str(model_dir),
        "MAMMO_DENSITY_ORT_THREADS": "1",
        "MAMMO_DENSITY_VISIBILITY_TIMEOUT": str(visibility),
        "MAMMO_DENSITY_TASK_TIME_LIMIT": str(limit),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("MAMMO_DENSITY_CONFIG", None)
    return env


def start_worker(env: dict[str, str], log_path: Path, name: str,
                 queues: str = "cpu,gpu") -> subprocess.Popen:
    """`mammo-density worker` in its own process group (killable as a whole)."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(
        [sys.executable, "-m", "mammo_density.cli", "worker", "--concurrency", "1",
         "--hostname", f"{name}@test", "--queues", queues],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def stop_worker(proc: subprocess.Popen) -> None:
    kill_group(proc, signal.SIGTERM)


def wait_status(db: StateDB, study_uid: str, wanted: set[str], timeout: float,
                proc: subprocess.Popen | None = None, log_path: Path | None = None) -> dict:
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = db.study(study_uid)
        if row and row["status"] in wanted:
            return row
        if proc is not None and proc.poll() is not None:
            text = log_path.read_text(errors="replace") if log_path else ""
            pytest.fail(f"worker exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.02)
    text = log_path.read_text(errors="replace")[-3000:] if log_path else ""
    pytest.fail(f"study status {row and row['status']!r}, wanted {wanted} within "
                f"{timeout} s\n{text}")


def test_config_matches_the_runtime_facts(tmp_path):
    settings = load_settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"]
    opts = conf["broker_transport_options"]
    assert opts["visibility_timeout"] > conf["task_time_limit"]
    assert opts["unacked_restore_interval"] == 1 and opts["unacked_restore_throttle"] == 1
    with pytest.raises(Exception, match="must exceed"):
        celery_config(load_settings(broker_url="redis://x/0", data_dir=tmp_path,
                                    visibility_timeout=10, task_time_limit=20))


@pytest.mark.services
def test_worker_classifies_received_study(tmp_path, redis_url, model_dir, records):
    require_binary("redis-server")
    data = tmp_path / "data"
    settings = load_settings(broker_url=redis_url, data_dir=data, model_dir=model_dir,
                             visibility_timeout=VISIBILITY_S, task_time_limit=TASK_LIMIT_S,
                             sr_destinations=["PACS@127.0.0.1:1"])
    env = _env(redis_url, data, model_dir)
    # a worker started with another SR destination than serve's: it must not matter
    env["MAMMO_DENSITY_SR_DESTINATIONS"] = "WORKERPACS@127.0.0.1:2"
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path, "w1")
    try:
        ids: list[str] = []
        statuses = receive(settings, study_files(records[0]),
                           lambda job: ids.append(tasks.submit(job, settings)))
        assert statuses == [0, 0, 0, 0] and len(ids) == 1
        db = StateDB(settings.state_db)
        row = wait_status(db, records[0].study_instance_uid, {"done", "failed"}, 60,
                          worker, log_path)
        assert row["status"] == "done", row["last_error"]
        result = row["result"]
        assert result["exam"]["category"] in "ABCD"
        assert len(result["views"]) == 4 and result["sr"]["sop_instance_uid"]
        assert Path(result["sr"]["path"]).is_file()
        assert result["timings_ms"]["inference"] > 0
        # the worker stored the SR; serve (the outbox's owner) decides where it goes
        sr_uid = result["sr"]["sop_instance_uid"]
        outbox = Outbox(settings, owner=True)
        assert outbox.deliveries(sr_uid) == []
        assert outbox.route_new() == 2  # the SR and the summary image
        assert [d["destination"] for d in outbox.deliveries(sr_uid)] == ["PACS@127.0.0.1:1"]

        # poison: every spooled image unreadable -> failed once, with the reason
        jobs: list[StudyJob] = []
        receive(settings, study_files(records[1]), jobs.append)
        for im in jobs[0].images:
            instance_path(settings.spool_dir, jobs[0].study_instance_uid,
                          im.sop_instance_uid).write_bytes(b"not dicom" * 50)
        tasks.submit(jobs[0], settings)
        row = wait_status(db, records[1].study_instance_uid, {"done", "failed"}, 60,
                          worker, log_path)
        assert row["status"] == "failed" and "not assessable" in row["last_error"]
        time.sleep(1.0)  # a retry, if there were one, would log a second failure
        errors = [e for e in db.last_errors(50)
                  if e.get("study_uid") == records[1].study_instance_uid]
        assert len(errors) == 1, errors
    finally:
        stop_worker(worker)
    # privacy: no study UID in the worker's log (only hashed), no task return values
    text = log_path.read_text(errors="replace")
    assert records[0].study_instance_uid not in text
    assert "succeeded in" not in text


def _received_with_fifo(settings, study) -> tuple[StudyJob, Path, Path]:
    """Receive ``study`` and replace its second spooled image by a FIFO, so that a worker
    reading it blocks mid-task until the test moves the real file (returned) back."""
    jobs: list[StudyJob] = []
    receive(settings, study_files(study), jobs.append)
    job = jobs[0]
    held = instance_path(settings.spool_dir, job.study_instance_uid,
                         job.images[1].sop_instance_uid)
    real = held.with_suffix(".real")
    shutil.move(held, real)
    os.mkfifo(held)
    return job, held, real


@pytest.mark.services
def test_killed_worker_study_completes_once(tmp_path, redis_url, model_dir, records):
    data = tmp_path / "data"
    settings = load_settings(broker_url=redis_url, data_dir=data, model_dir=model_dir,
                             visibility_timeout=VISIBILITY_S, task_time_limit=TASK_LIMIT_S)
    study = records[2]
    job, held, real = _received_with_fifo(settings, study)
    env = _env(redis_url, data, model_dir)
    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
    w1 = start_worker(env, log1, "victim")
    w2 = None
    try:
        task_id = tasks.submit(job, settings)
        assert task_id
        db = StateDB(settings.state_db)
        wait_status(db, study.study_instance_uid, {"processing"}, 60, w1, log1)
        time.sleep(0.3)  # it is blocked reading the FIFO: mid-task
        assert db.study(study.study_instance_uid)["status"] == "processing"
        killed_at = time.monotonic()
        kill_group(w1)  # SIGKILL, the whole process group
        assert w1.returncode is not None
        os.replace(real, held)  # the file is back; the next delivery can read it
        w2 = start_worker(env, log2, "rescuer")
        row = wait_status(db, study.study_instance_uid, {"done", "failed"}, 60, w2, log2)
        redelivered_after = time.monotonic() - killed_at
        print(f"redelivered and completed {redelivered_after:.1f} s after the kill")
        assert row["status"] == "done", row["last_error"]
        assert row["result_revision"] == job.revision
        written = sorted(settings.outbox_dir.rglob("*.dcm"))
        kinds = [pydicom.dcmread(p, stop_before_pixels=True).Modality for p in written]
        assert sorted(kinds) == ["OT", "SR"], written  # one SR, one summary image
        srs = [p for p, kind in zip(written, kinds, strict=True) if kind == "SR"]
        assert json.loads(json.dumps(row["result"]))["sr"]["sop_instance_uid"] in srs[0].name
        # redelivered within seconds (visibility timeout + restore sweep), not an hour
        assert redelivered_after < VISIBILITY_S + 30
        # nothing left in the queues: no second delivery waiting
        import redis

        client = redis.Redis.from_url(redis_url)
        time.sleep(0.5)
        assert client.llen("cpu") == 0 and client.llen("gpu") == 0
        assert client.hlen("unacked") == 0
        client.close()
    finally:
        if w2 is not None:
            stop_worker(w2)
        kill_group(w1)


@pytest.mark.services
def test_killed_pool_process_study_completes(tmp_path, redis_url, model_dir, records):
    import psutil

    limit, visibility = 12.0, 20.0  # the claim is still fresh when the message is back
    data = tmp_path / "data"
    settings = load_settings(broker_url=redis_url, data_dir=data, model_dir=model_dir,
                             visibility_timeout=visibility, task_time_limit=limit)
    study = records[1]
    job, held, real = _received_with_fifo(settings, study)
    env = _env(redis_url, data, model_dir, visibility=visibility, limit=limit)
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path, "oom")
    try:
        tasks.submit(job, settings)
        db = StateDB(settings.state_db)
        wait_status(db, study.study_instance_uid, {"processing"}, 60, worker, log_path)
        time.sleep(0.3)  # blocked on the FIFO: mid-task, claim held
        os.replace(real, held)  # the blocked open() keeps the FIFO; a new one reads the file
        children = psutil.Process(worker.pid).children()
        assert len(children) == 1
        killed_at = time.monotonic()
        children[0].kill()  # the pool process only; the worker's main process lives on
        row = wait_status(db, study.study_instance_uid, {"done", "failed"}, limit + 40,
                          worker, log_path)
        print(f"done {time.monotonic() - killed_at:.1f} s after the kill")
        assert row["status"] == "done", row["last_error"]
        text = log_path.read_text(errors="replace")
        # the message is back with its submission: the claim is taken again at once,
        # not after waiting for it to go stale
        assert "this submission's message came back" in text
        assert "looking again" not in text
        written = sorted(settings.outbox_dir.rglob("*.dcm"))
        kinds = [pydicom.dcmread(p, stop_before_pixels=True).Modality for p in written]
        assert sorted(kinds) == ["OT", "SR"], written
    finally:
        kill_group(worker)


@pytest.mark.services
def test_cpu_and_gpu_queues_on_separate_workers(tmp_path, redis_url, model_dir, records):
    """The cpu worker has the spool and state; the gpu worker only the models and broker
    (its data dir is elsewhere, empty): a study still completes."""
    data = tmp_path / "data"
    settings = load_settings(broker_url=redis_url, data_dir=data, model_dir=model_dir,
                             visibility_timeout=VISIBILITY_S, task_time_limit=TASK_LIMIT_S)
    jobs: list[StudyJob] = []
    receive(settings, study_files(records[0]), jobs.append)
    cpu_log, gpu_log = tmp_path / "cpu.log", tmp_path / "gpu.log"
    cpu = start_worker(_env(redis_url, data, model_dir), cpu_log, "cpu", queues="cpu")
    gpu = start_worker(_env(redis_url, tmp_path / "elsewhere", model_dir), gpu_log, "gpu",
                       queues="gpu")
    try:
        tasks.submit(jobs[0], settings)
        row = wait_status(StateDB(settings.state_db), records[0].study_instance_uid,
                          {"done", "failed"}, 60, cpu, cpu_log)
        assert row["status"] == "done", row["last_error"]
        assert "Task mammo_density.infer[" in gpu_log.read_text()
        assert "Task mammo_density.infer[" not in cpu_log.read_text()
        assert "Task mammo_density.prepare[" in cpu_log.read_text()
        assert "Task mammo_density.decide[" in cpu_log.read_text()
        assert "Task mammo_density.report[" in cpu_log.read_text()
        assert not (tmp_path / "elsewhere" / "state.sqlite3").exists()
    finally:
        stop_worker(cpu)
        stop_worker(gpu)


@pytest.mark.services
def test_single_task_mode_runs_the_study_in_one_task(tmp_path, redis_url, model_dir, records):
    """``celery_single_task``: one ``run`` task on the cpu queue, the same result and SR
    as the chain (no model-ready arrays through Redis)."""
    data = tmp_path / "data"
    settings = load_settings(broker_url=redis_url, data_dir=data, model_dir=model_dir,
                             visibility_timeout=VISIBILITY_S, task_time_limit=TASK_LIMIT_S,
                             celery_single_task=True)
    jobs: list[StudyJob] = []
    receive(settings, study_files(records[2]), jobs.append)
    log_path = tmp_path / "worker.log"
    worker = start_worker(_env(redis_url, data, model_dir), log_path, "single")
    try:
        tasks.submit(jobs[0], settings)
        row = wait_status(StateDB(settings.state_db), records[2].study_instance_uid,
                          {"done", "failed"}, 60, worker, log_path)
        assert row["status"] == "done", row["last_error"]
        result = row["result"]
        assert len(result["views"]) == 4 and Path(result["sr"]["path"]).is_file()
        text = log_path.read_text()
        assert "Task mammo_density.run[" in text
        assert "Task mammo_density.prepare[" not in text
        assert "Task mammo_density.infer[" not in text
    finally:
        stop_worker(worker)


@pytest.mark.services
def test_task_messages_carry_json_text_not_base64(tmp_path, redis_url):
    """kombu's Redis transport base64-encodes message bodies unless told otherwise; the
    bodies are JSON text already, so the node has it keep them as they are (one pass
    less over the model-ready arrays each way, a quarter less Redis memory)."""
    import redis

    settings = load_settings(broker_url=redis_url, data_dir=tmp_path)
    client = redis.Redis.from_url(redis_url)
    client.delete("cpu")
    try:
        job = StudyJob(study_instance_uid="1.2.826.0.1.3680043.8.498.1", images=[])
        tasks.submit(job, settings)
        raw = client.lrange("cpu", 0, -1)
        assert len(raw) == 1
        message = json.loads(raw[0])
        assert message["properties"]["body_encoding"] == "utf-8"
        args = json.loads(message["body"])[0]  # [args, kwargs, embed]: the body as sent
        assert args[0]["study_instance_uid"] == job.study_instance_uid
    finally:
        client.delete("cpu")
        client.close()


def test_single_task_signature(tmp_path) -> None:
    from mammo_density.worker.celery_app import make_app

    settings = load_settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    app = make_app(settings)
    job = StudyJob(study_instance_uid="1.2.3", images=[])
    single = tasks.signature_for(job, app, single_task=True)
    assert single.task == "mammo_density.run" and single.id.endswith("-run")
    assert app.amqp.router.route({}, single.task)["queue"].name == "cpu"
    chain = tasks.signature_for(job, app)
    assert [t.task for t in chain.tasks] == [f"mammo_density.{n}" for n in
                                             ("prepare", "infer", "decide", "report")]


def test_task_bodies_record_failures_instead_of_hanging(tmp_path, model_dir, records):
    """A study never stays 'processing': model unavailable, inference failure on the
    gpu host, all end as failed with the reason (the task bodies called directly)."""
    data = tmp_path / "data"
    settings = load_settings(data_dir=data, model_dir=tmp_path / "no-model")
    jobs: list[StudyJob] = []
    receive(settings, study_files(records[0]), jobs.append)
    job_json = jobs[0].model_dump(mode="json")
    db = StateDB(settings.state_db)
    uid = records[0].study_instance_uid
    tasks.configure(lambda: node_pipeline(settings, owns_outbox=False))
    try:
        out = tasks.prepare(job_json)
        assert out["skipped"] and "model unavailable" in out["failed"]
        assert db.study(uid)["status"] == "failed"
        # a good model, but the gpu side failed: report records it
        good = load_settings(data_dir=data, model_dir=model_dir)
        tasks.configure(lambda: node_pipeline(good, owns_outbox=False))
        with db.tx() as conn:  # the listener would queue the study again
            conn.execute("UPDATE studies SET status='queued' WHERE study_uid=?", (uid,))
        payload = tasks.prepare(job_json)
        assert "arrays" in payload and db.study(uid)["status"] == "processing"
        meta = dict(payload, arrays={})
        out = tasks.decide({"prepared": meta, "inferred": None,
                            "error": "inference failed: CUDA out of memory"}, job_json)
        assert tasks.report(out, job_json) == out  # a failure passes through
        assert out["failed"] == "inference failed: CUDA out of memory"
        row = db.study(uid)
        assert row["status"] == "failed" and "CUDA out of memory" in row["last_error"]
        # and the normal path through the same bodies
        with db.tx() as conn:
            conn.execute("UPDATE studies SET status='queued' WHERE study_uid=?", (uid,))
        decided = tasks.decide(tasks.infer(tasks.prepare(job_json)), job_json)
        assert db.study(uid)["status"] == "processing"  # decide writes nothing
        result = tasks.report(decided, job_json)
        assert result["exam"]["category"] in "ABCD" and db.study(uid)["status"] == "done"
        assert result["sr"]["sop_instance_uid"] and "report" in result["timings_ms"]
        assert tasks.prepare(job_json)["skipped"]  # done already: not redone
    finally:
        tasks.configure(lambda: node_pipeline(settings, owns_outbox=False))


def test_claim_belongs_to_its_submission(tmp_path, model_dir, records):
    """A claim is taken again at once by the same submission (its message redelivered,
    its task retried); another submission finds it held until it is stale."""
    settings = load_settings(data_dir=tmp_path / "data", model_dir=model_dir)
    jobs: list[StudyJob] = []
    receive(settings, study_files(records[0]), jobs.append)
    pipeline = node_pipeline(settings, owns_outbox=False)
    job, limit = jobs[0], 600.0
    assert pipeline.claim(job, stale_after=limit, owner="first")
    assert pipeline.claim(job, stale_after=limit, owner="first")  # the same submission
    assert not pipeline.claim(job, stale_after=limit, owner="sweep-copy")
    assert not pipeline.claim(job, stale_after=limit)  # no owner: never "the same"
    assert 590.0 < pipeline.claim_held_for(job, stale_after=limit) <= limit
    assert pipeline.claim(job, stale_after=0.0, owner="sweep-copy")  # stale: taken over
    assert not pipeline.claim(job, stale_after=limit, owner="first")  # now the copy's
    assert StateDB(settings.state_db).study(job.study_instance_uid)["status"] == \
        "processing"


def test_retry_after_a_transient_error_completes_at_once(tmp_path, model_dir, records,
                                                         monkeypatch):
    """A task retried after a transient error (SQLite busy) finds the claim its first
    attempt made and takes it again: the study is done by the retry, not left in
    ``processing`` until the claim is ``task_time_limit`` old (eager Celery: the same
    task id, submission and retry count as in a worker)."""
    import sqlite3

    from mammo_density.worker.celery_app import make_app
    from mammo_density.worker.pipeline import Pipeline

    settings = load_settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path / "data",
                             model_dir=model_dir, task_time_limit=600.0,
                             visibility_timeout=900.0)
    jobs: list[StudyJob] = []
    receive(settings, study_files(records[1]), jobs.append)
    uid = records[1].study_instance_uid
    attempts: list[int] = []
    real_run = Pipeline.run

    def busy_once(self, job):
        attempts.append(job.revision)
        if len(attempts) == 1:  # after the claim, as a locked database would
            raise sqlite3.OperationalError("database is locked")
        return real_run(self, job)

    monkeypatch.setattr(Pipeline, "run", busy_once)
    app = make_app(settings)
    tasks.configure(lambda: node_pipeline(settings, owns_outbox=False))
    try:
        job_json = jobs[0].model_dump(mode="json")
        started = time.monotonic()
        out = app.tasks["mammo_density.run"].apply(args=(job_json, "submission-1")).get()
        assert len(attempts) == 2 and not out.get("skipped"), out
        assert out["exam"]["category"] in "ABCD"
        assert StateDB(settings.state_db).study(uid)["status"] == "done"
        assert time.monotonic() - started < 60.0
        # a copy from another submission (the sweep's) is skipped: done already
        again = app.tasks["mammo_density.run"].apply(args=(job_json, "submission-2")).get()
        assert again["skipped"] and len(attempts) == 2
    finally:
        tasks.configure(lambda: node_pipeline(settings, owns_outbox=False))


def test_each_pool_process_gets_its_share_of_the_cores(tmp_path):
    """A worker's concurrent studies split the cores: threads within a study never add
    up to more than the cores (decoding threads, view networks at once, ONNX threads);
    an explicit ``ort_threads`` is kept, and ``ort_parallel_views`` is never raised."""
    from mammo_density.commands.worker import pool_share

    base = load_settings(data_dir=tmp_path)
    assert (base.ort_threads, base.ort_parallel_views) == (0, 2)
    cases = {  # (processes, cores) -> (decoding threads, views at once, ONNX threads)
        (2, 2): (1, 1, 1), (1, 2): (2, 2, 1), (2, 8): (4, 2, 2), (4, 2): (1, 1, 1),
        (1, 16): (16, 2, 8)}
    for (processes, cores), expected in cases.items():
        pooled, share = pool_share(base, processes, cores)
        assert (share, pooled.ort_parallel_views, pooled.ort_threads) == expected
        assert share * processes <= max(cores, processes)
    pinned, _ = pool_share(base.model_copy(update={"ort_threads": 3,
                                                   "ort_parallel_views": 1}), 1, 8)
    assert (pinned.ort_threads, pinned.ort_parallel_views) == (3, 1)
    assert base.ort_parallel_views == 2 and base.ort_threads == 0  # not changed in place


def test_pool_process_sizes_opencv_to_its_share() -> None:
    """OpenCV's thread pool follows the process's share like the decoding and ONNX
    threads (``limit_image_threads``, called in each pool process at start). Checked in
    a fresh interpreter: the setting is process-wide."""
    import subprocess
    import sys

    code = ("import cv2; from mammo_density.commands.worker import limit_image_threads; "
            "limit_image_threads(3); a = cv2.getNumThreads(); "
            "limit_image_threads(0); print(a, cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == ["3", "1"]
