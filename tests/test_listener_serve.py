"""`mammo-density serve` as a real subprocess: dcmtk peers, status, SIGKILL and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mgdata import study, write
from tests.services import (
    REPO,
    echoscu,
    free_port,
    require_binary,
    stop_process,
    storescu,
    wait_for_port,
)

pytestmark = pytest.mark.services


class Serve:
    """One `mammo-density serve` process on a free port."""

    def __init__(self, data_dir: Path, *extra: str, stable: float = 30.0) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra = extra
        self.env = {**os.environ, "MAMMO_DENSITY_LISTEN_HOST": "127.0.0.1",
                    "MAMMO_DENSITY_MIN_FREE_DISK_MB": "0",
                    "MAMMO_DENSITY_STABLE_SECONDS": str(stable)}
        self.env.pop("MAMMO_DENSITY_CONFIG", None)
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"serve-{self.port}.log"

    def start(self) -> Serve:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mammo_density.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        wait_for_port(self.port, 30)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        stop_process(self.proc, timeout=20)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def counts(self) -> dict[str, int]:
        """Studies per state, read from the state database directly (fast, for polling)."""
        from mammo_density.plugin.state import StateDB

        db = StateDB(self.data_dir / "state.sqlite3")
        try:
            return db.counts()
        finally:
            db.close()

    def status(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "mammo_density.cli", "status", "--json", "--data-dir",
             str(self.data_dir)], capture_output=True, text=True, env=self.env, cwd=REPO,
            timeout=60, check=True)
        return json.loads(out.stdout)


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_serve_dcmtk_echo_store_status_and_sigterm(tmp_path):
    serve = Serve(tmp_path / "data", "--receive-only").start()
    try:
        assert echoscu(serve.port).returncode == 0
        sent = study()
        for ds in sent:
            write(ds, tmp_path / "in")
        proc = storescu([tmp_path / "in"], serve.port)
        assert proc.returncode == 0, proc.stderr
        uid = sent[0].StudyInstanceUID
        _wait(lambda: serve.counts()["queued"] == 1)
        queued = serve.status()["studies"]["queued"]
        assert [s["study_uid"] for s in queued] == [uid]
        text = subprocess.run(
            [sys.executable, "-m", "mammo_density.cli", "status", "--data-dir",
             str(serve.data_dir)], capture_output=True, text=True, env=serve.env, cwd=REPO,
            timeout=60, check=True).stdout
        assert "queued 1" in text and f"queued     {uid}  rev 1" in text
        assert "oldest in flight" in text
        other = subprocess.run(  # a second node on the same port gives up cleanly
            [sys.executable, "-m", "mammo_density.cli", "serve", "--receive-only", "--port",
             str(serve.port), "--data-dir", str(tmp_path / "other")],
            capture_output=True, text=True, env=serve.env, cwd=REPO, timeout=60)
        assert other.returncode == 1 and "cannot listen" in other.stderr
    finally:
        assert serve.stop() == 0
    log = serve.log.read_text()
    assert f"listening on MAMMODENSITY@127.0.0.1:{serve.port}" in log
    assert "SIGTERM received" in log and "stopped" in log
    assert "PAT-SECRET" not in log and uid not in log


def test_sigkill_with_studies_half_received_then_restart(tmp_path):
    data = tmp_path / "data"
    # 3 studies; the first two views of each are big enough (8 MB) to be killed mid-transfer.
    studies = [study(rows=2000, cols=2000) for _ in range(3)]
    for i, s in enumerate(studies):
        for j, ds in enumerate(s):
            write(ds, tmp_path / ("first" if j < 2 else "second") / str(i))
    serve = Serve(data, "--receive-only").start()
    sender = subprocess.Popen(
        [require_binary("storescu"), "-aec", "MAMMODENSITY", "+sd", "+r", "127.0.0.1",
         str(serve.port), str(tmp_path / "first")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # a file committed to the spool (not pynetdicom's temporary file in .incoming/)
    _wait(lambda: len([p for p in (data / "spool").glob("*/*.dcm")
                       if not p.parent.name.startswith(".")]) >= 1, timeout=60)
    serve.kill()  # with an association (and maybe a data set) in flight
    sender.wait(60)
    assert not list((data / "spool").glob("*/.*.part"))
    serve = Serve(data, "--receive-only").start()
    try:
        assert list((data / "spool" / ".incoming").iterdir()) == []
        assert serve.counts()["collecting"] >= 1  # resumed with their stable timers
        # The sender's retry: everything again (duplicates are idempotent), then the rest.
        assert storescu([tmp_path / "first", tmp_path / "second"], serve.port).returncode == 0
        _wait(lambda: serve.counts()["queued"] == 3)
    finally:
        serve.stop()
    import sqlite3

    conn = sqlite3.connect(data / "state.sqlite3")
    rows = conn.execute("SELECT study_uid, submissions, revision FROM studies").fetchall()
    assert sorted(r[0] for r in rows) == sorted(s[0].StudyInstanceUID for s in studies)
    assert all(r[1] == 1 and r[2] == 1 for r in rows)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 12
    conn.close()
    assert len(list((data / "spool").glob("*/*.dcm"))) == 12


def test_serve_with_embedded_pipeline_status_shows_result(tmp_path):
    """The composed node: listener -> EmbeddedRunner (real Pipeline, ONNX Runtime) -> state;
    `status` shows the result, and the SR waits in the outbox for its destination."""
    from mammo_density.logsetup import uid_hash
    from mammo_density.synth import generate
    from tests.models import cached_registry_entry

    model = cached_registry_entry(tmp_path / "models", seed=3)
    record = generate(tmp_path / "synth", studies=1, seed=5, size="small", extras=("spot",))[0]
    spot = next(im for im in record.images if im.extra == "spot")
    dead_port = free_port()  # an SR destination nobody listens on: the SR stays pending
    serve = Serve(tmp_path / "data", stable=20.0)
    serve.env.update({"MAMMO_DENSITY_MODEL_DIR": str(model), "OMP_NUM_THREADS": "1",
                      "MAMMO_DENSITY_SR_DESTINATIONS": f"NOBODY@127.0.0.1:{dead_port}"})
    serve.start()
    try:
        # the spot view first, so that it belongs to the study's first revision
        paths = [Path(spot.path)] + [Path(p) for p in record.paths if Path(p) != Path(spot.path)]
        proc = storescu(paths, serve.port)
        assert proc.returncode == 0, proc.stderr
        _wait(lambda: serve.counts()["done"] == 1, timeout=120)
        status = serve.status()
        done = status["studies"]["done"][0]
        assert done["study_uid"] == record.study_instance_uid
        assert done["result"]["category"] in ("A", "B", "C", "D")
        assert isinstance(done["result"]["dense"], bool) and done["result"]["partial"] is False
        # the image not used is in the status, with its reason
        (unused,) = done["result"]["unused_images"]
        assert unused["image"] == uid_hash(spot.sop_instance_uid)
        assert unused["reason"] == "spot_compression" and "spot-compression" in unused["text"]
        text = subprocess.run(
            [sys.executable, "-m", "mammo_density.cli", "status", "--data-dir",
             str(serve.data_dir)], capture_output=True, text=True, env=serve.env, cwd=REPO,
            timeout=60, check=True).stdout
        assert f"not used: image {unused['image']} {unused['slot']} spot_compression" in text
        _wait(lambda: len(serve.status()["undelivered_srs"] or []) >= 1, timeout=60)
    finally:
        assert serve.stop() == 0
