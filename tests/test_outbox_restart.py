"""The SR outbox after a crash and after a PACS outage, against a real Orthanc: due rows are
sent at once after a restart, the SR being sent at the crash reaches the PACS once, a PACS
that is back gets its waiting SRs without their backoff, and `mammo-density retry`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from mammo_density.config import Settings, load_settings
from mammo_density.plugin.outbox import Outbox
from mammo_density.plugin.send import c_store
from tests.services import REPO, OrthancServer
from tests.test_outbox import _sr_instances, _store_images, _study_sr, _wait

pytestmark = pytest.mark.services


def _settings(tmp_path: Path, destinations: list[str], **kw) -> Settings:
    return load_settings(data_dir=tmp_path / "data", sr_destinations=destinations,
                         sr_timeout_seconds=5.0, **kw)


def _loop(outbox: Outbox) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=outbox.run_forever, args=(stop, 0.1), daemon=True)
    thread.start()
    return stop, thread


def _dest(orthanc: OrthancServer) -> str:
    return f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"


def test_sr_sent_at_the_crash_goes_out_at_once_after_restart_and_lands_once(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    """Before: a row claimed by a process that died mid-send waited 300 s after restart."""
    sources, sr = _study_sr()
    _store_images(orthanc, sources, tmp_path / "images")
    settings = _settings(tmp_path, [_dest(orthanc)], sr_retry_base_seconds=5.0,
                         sr_retry_max_seconds=60.0)
    crashed = Outbox(settings)
    crashed.enqueue(sr, study_uid=sr.StudyInstanceUID)
    # The crashed serve claimed the row and C-STOREd the SR; it died before recording it.
    [row] = crashed._claim_due()
    assert row["next_try"] <= time.time()
    assert c_store(pydicom.dcmread(row["path"]), ae_title=orthanc.aet, host="127.0.0.1",
                   port=orthanc.dicom_port, calling_aet="MAMMODENSITY") == "0x0000"
    [claimed] = crashed.deliveries(sr.SOPInstanceUID)
    assert claimed["status"] == "pending" and claimed["next_try"] > time.time() + 200
    del crashed

    restarted = Outbox(settings)
    started = time.monotonic()
    stop, thread = _loop(restarted)
    try:
        assert _wait(lambda: restarted.deliveries(sr.SOPInstanceUID)[0]["status"]
                     == "delivered", 20), restarted.deliveries(sr.SOPInstanceUID)
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        thread.join(30)
    # Sent twice, stored once: same SOP Instance UID, Orthanc keeps one copy.
    assert [i["SOPInstanceUID"] for i in _sr_instances(orthanc, sr.StudyInstanceUID)] == \
        [sr.SOPInstanceUID]


def _fail_twice(outbox: Outbox, uids: list[str]) -> None:
    """Attempt twice while the PACS is down (the second time as if its backoff were over)."""
    for _ in range(2):
        outbox.retry_now()
        assert outbox.deliver_due() == 0
    for uid in uids:
        [row] = outbox.deliveries(uid)
        assert row["attempts"] == 2 and row["next_try"] > time.time() + 2


def test_pacs_back_gets_waiting_srs_without_their_backoff(tmp_path: Path,
                                                          orthanc: OrthancServer) -> None:
    """Before: after an outage each SR sat out its own backoff (up to 600 s)."""
    settings = _settings(tmp_path, [_dest(orthanc)], sr_retry_base_seconds=30.0,
                         sr_retry_max_seconds=60.0)
    outbox = Outbox(settings)
    waiting = [_study_sr()[1] for _ in range(2)]
    orthanc.stop()
    for sr in waiting:
        outbox.enqueue(sr, study_uid=sr.StudyInstanceUID)
    _fail_twice(outbox, [sr.SOPInstanceUID for sr in waiting])
    orthanc.start()
    fresh = _study_sr()[1]  # a new SR, due at once, finds the PACS back
    outbox.enqueue(fresh, study_uid=fresh.StudyInstanceUID)
    assert outbox.deliver_due() == 1
    assert outbox.deliver_due() == 2  # the waiting ones, without their 30-60 s backoff
    assert outbox.pending() == []


def _retry_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_DENSITY_")}
    return subprocess.run([sys.executable, "-m", "mammo_density.cli", "retry", "--data-dir",
                           str(settings.data_dir), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def test_retry_command(tmp_path: Path, orthanc: OrthancServer) -> None:
    settings = _settings(tmp_path, [_dest(orthanc)], sr_retry_base_seconds=30.0,
                         sr_retry_max_seconds=60.0)
    outbox = Outbox(settings)
    srs = [_study_sr()[1] for _ in range(2)]
    orthanc.stop()
    for sr in srs:
        outbox.enqueue(sr, study_uid=sr.StudyInstanceUID)
    _fail_twice(outbox, [sr.SOPInstanceUID for sr in srs])
    orthanc.start()
    assert outbox.deliver_due() == 0  # still in their backoff
    other = _retry_cli(settings, "--destination", "NOBODY@10.0.0.1:104")
    assert other.returncode == 0 and other.stdout.startswith("0 ")
    out = _retry_cli(settings)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 undelivered SR deliveries due now")
    assert outbox.deliver_due() == 2
    missing = _retry_cli(load_empty := settings.model_copy(
        update={"data_dir": tmp_path / "nothing"}))
    assert missing.returncode == 1 and "no SR outbox" in missing.stderr
    assert not load_empty.data_dir.exists()


def test_default_backoff_is_capped_at_a_minute() -> None:
    assert Settings().sr_retry_max_seconds <= 60
