"""Restart semantics and lost broker messages, against the real node.

- ``serve`` SIGKILLed in the middle of a study, down longer than ``stable_seconds``,
  restarted; the sender sends the rest a moment later: one complete assessment, no
  partial result and no partial SR (the downtime is not quiet time).
- A study queued on Redis whose message is lost (Redis restarted without persistence):
  the listener's sweep submits it again, with the same task ids; a real worker assesses
  it exactly once, whatever number of copies of the message it finds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mammo_density.config import load_settings
from mammo_density.plugin.listener import Listener
from mammo_density.plugin.state import StateDB
from mammo_density.worker import tasks
from tests.models import cached_registry_entry
from tests.services import RedisServer, free_port, require_binary, storescu
from tests.studies import study_files, synth_studies
from tests.test_celery import _env, start_worker, stop_worker, wait_status
from tests.test_listener_serve import Serve, _wait

pytestmark = pytest.mark.services


def density_srs(outbox: Path) -> list[Path]:
    """The density SRs in an outbox (beside them: the summary images, Modality OT)."""
    import pydicom

    return sorted(p for p in outbox.rglob("*.dcm")
                  if str(pydicom.dcmread(p, stop_before_pixels=True).Modality) == "SR")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return cached_registry_entry(tmp_path_factory.mktemp("models"), seed=3)


def test_sigkill_mid_study_downtime_is_not_quiet_time(tmp_path, model_dir):
    stable = 4.0
    record = synth_studies(tmp_path / "synth", studies=1, seed=41)[0]
    files = study_files(record)
    dead_port = free_port()  # SR destination nobody listens on: the SRs wait in the outbox
    data = tmp_path / "data"

    def serve() -> Serve:
        node = Serve(data, stable=stable)
        node.env.update({"MAMMO_DENSITY_MODEL_DIR": str(model_dir), "OMP_NUM_THREADS": "1",
                         "MAMMO_DENSITY_SR_DESTINATIONS": f"NOBODY@127.0.0.1:{dead_port}"})
        return node.start()

    node = serve()
    assert storescu(files[:2], node.port).returncode == 0
    _wait(lambda: node.counts()["collecting"] == 1)
    node.kill()
    time.sleep(2 * stable)  # down for twice the stable time
    node = serve()
    try:
        time.sleep(stable / 2)  # the modality reconnects a moment after the node is back
        assert storescu(files[2:], node.port).returncode == 0
        _wait(lambda: node.counts()["done"] == 1, timeout=120)
        time.sleep(stable + 1)  # nothing else happens afterwards
        status = node.status()
        done = status["studies"]["done"]
        assert len(done) == 1 and done[0]["revision"] == 1, done
        assert done[0]["result"]["partial"] is False
        assert len(density_srs(data / "outbox")) == 1
    finally:
        node.stop()
    db = StateDB(data / "state.sqlite3")
    try:
        row = db.study(record.study_instance_uid)
        assert row["submissions"] == 1 and not row["partial"]
    finally:
        db.close()


def test_lost_broker_message_resubmitted_and_assessed_once(tmp_path, model_dir):
    require_binary("redis-server")
    redis_srv = RedisServer(tmp_path / "redis").start()
    record = synth_studies(tmp_path / "synth", studies=1, seed=43)[0]
    data = tmp_path / "data"
    settings = load_settings(None, broker_url=redis_srv.url, data_dir=data,
                             model_dir=model_dir, listen_host="127.0.0.1",
                             listen_port=free_port(), stable_seconds=2, min_free_disk_mb=0,
                             visibility_timeout=6, task_time_limit=5)
    db = StateDB(settings.state_db)
    listener = Listener(settings, db, lambda job: tasks.submit(job, settings))
    listener.assembler.resubmit_after = 3.0
    listener.start()
    worker = None
    import redis

    try:
        assert storescu(study_files(record), listener.address[1]).returncode == 0
        uid = record.study_instance_uid
        _wait(lambda: (db.study(uid) or {}).get("status") == "queued")
        client = redis.Redis.from_url(redis_srv.url)
        _wait(lambda: client.llen("cpu") == 1)
        client.close()
        redis_srv.stop()  # restarted without persistence: the message is gone
        redis_srv.start()
        client = redis.Redis.from_url(redis_srv.url)
        assert client.llen("cpu") == 0
        # the sweep re-submits it, and again while nobody picks it up: several copies
        _wait(lambda: client.llen("cpu") >= 2, timeout=30)
        log_path = tmp_path / "worker.log"
        worker = start_worker(_env(redis_srv.url, data, model_dir), log_path, "sweep")
        row = wait_status(db, uid, {"done", "failed"}, 90, worker, log_path)
        assert row["status"] == "done", row["last_error"]
        _wait(lambda: client.llen("cpu") == 0 and client.llen("gpu") == 0, timeout=60)
        time.sleep(2)
        srs = density_srs(settings.outbox_dir)
        assert len(srs) == 1, srs
        row = db.study(uid)
        assert row["status"] == "done" and row["result_revision"] == 1
        assert "already done: skipped" in log_path.read_text() or \
            "md-" in log_path.read_text()
        client.close()
    finally:
        if worker is not None:
            stop_worker(worker)
        listener.stop()
        db.close()
        redis_srv.stop()
