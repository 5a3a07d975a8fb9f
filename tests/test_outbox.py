"""The SR outbox against a real Orthanc: C-STORE into the same study, retries while the
PACS is down (also across a restart of the outbox), idempotence and supersession."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from mammo_density.config import Settings, load_settings
from mammo_density.plugin.outbox import Outbox
from mammo_density.worker.sr import build_density_sr
from tests import srdata
from tests.services import HERE, OrthancServer, free_port, storescu

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _settings(tmp_path: Path, destinations: list[str], **kw) -> Settings:
    return load_settings(data_dir=tmp_path / "data", sr_destinations=destinations,
                         sr_retry_base_seconds=0.2, sr_retry_max_seconds=1.0,
                         sr_timeout_seconds=5.0, **kw)


def _study_sr(slots=srdata.SLOTS, *, revision: int = 1, sources=None):
    sources = sources or srdata.mg_study(slots)
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man).model_copy(update={"revision": revision})
    return sources, build_density_sr(result, sources, man)


def _wait(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _store_images(orthanc: OrthancServer, sources, folder: Path) -> None:
    proc = storescu(srdata.save_all(sources, folder), orthanc.dicom_port, aet=orthanc.aet)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sr_instances(orthanc: OrthancServer, study_uid: str) -> list[dict]:
    return [i for i in orthanc.study_instances(study_uid) if i.get("Modality") == "SR"]


def test_no_destination_keeps_sr_in_local_outbox(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [])
    outbox = Outbox(settings)
    _, sr = _study_sr()
    path = outbox.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert path == settings.outbox_dir / f"{sr.SOPInstanceUID}.dcm"
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == sr.SOPInstanceUID and back.SOPClassUID == COMPREHENSIVE_SR
    assert [p.name for p in settings.outbox_dir.iterdir() if p.name.startswith(".")] == []
    assert outbox.pending() == [] and outbox.deliver_due() == 0
    with pytest.raises(ValueError, match="study_uid"):
        outbox.enqueue(sr, study_uid="1.2.3")


def test_failures_back_off_and_newer_revision_supersedes(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    settings = _settings(tmp_path, [f"PACS@127.0.0.1:{closed}"])
    outbox = Outbox(settings)
    sources, sr1 = _study_sr()
    outbox.enqueue(sr1, study_uid=sr1.StudyInstanceUID)
    outbox.enqueue(sr1, study_uid=sr1.StudyInstanceUID)  # same SR twice: one delivery
    assert len(outbox.deliveries(sr1.SOPInstanceUID)) == 1

    before = time.time()
    assert outbox.deliver_due() == 0
    [row] = outbox.deliveries(sr1.SOPInstanceUID)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert "no association" in row["last_error"]
    assert before + 0.1 - 1 <= row["next_try"] <= time.time() + 0.2 + 0.5
    [shown] = outbox.pending()
    assert shown["attempts"] == 1 and shown["destination"] == f"PACS@127.0.0.1:{closed}"
    assert sr1.StudyInstanceUID not in str(shown)  # only hashed UIDs
    assert _wait(lambda: outbox.deliver_due() == 0
                 and outbox.deliveries(sr1.SOPInstanceUID)[0]["attempts"] >= 3, 20)
    assert all(outbox._backoff(n) <= settings.sr_retry_max_seconds for n in range(1, 40))

    # Revision 2 of the study (one more image): the old SR is not sent any more.
    extra = srdata.mg_image(sr1.StudyInstanceUID, "R-CC")
    _, sr2 = _study_sr(revision=2, sources=[*sources, extra])
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID
    assert sr2.SeriesInstanceUID == sr1.SeriesInstanceUID
    outbox.enqueue(sr2, study_uid=sr2.StudyInstanceUID)
    assert outbox.deliveries(sr1.SOPInstanceUID)[0]["status"] == "superseded"
    assert outbox.deliveries(sr2.SOPInstanceUID)[0]["status"] == "pending"
    # A late SR of an older revision arrives after the newer one: recorded, not sent.
    _, late = _study_sr(revision=1, sources=sources[:3])
    path = outbox.enqueue(late, study_uid=late.StudyInstanceUID)
    assert path.exists()
    assert outbox.deliveries(late.SOPInstanceUID)[0]["status"] == "superseded"
    from mammo_density.logsetup import uid_hash
    assert [p["sr"] for p in outbox.pending()] == [uid_hash(sr2.SOPInstanceUID)]


def test_caller_without_port_is_skipped_with_reason(tmp_path: Path) -> None:
    outbox = Outbox(_settings(tmp_path, ["@caller"]))
    _, sr = _study_sr()
    outbox.enqueue(sr, study_uid=sr.StudyInstanceUID, calling_aet="MODALITY",
                   peer_host="127.0.0.1")
    [shown] = outbox.pending()
    assert shown["status"] == "skipped"
    assert "caller_port" in shown["last_error"]
    assert outbox.deliver_due() == 0


@pytest.mark.services
def test_cstore_into_orthanc_lands_in_the_same_study(tmp_path: Path,
                                                     orthanc: OrthancServer) -> None:
    sources, sr = _study_sr()
    study_uid = sr.StudyInstanceUID
    _store_images(orthanc, sources, tmp_path / "images")
    settings = _settings(tmp_path, [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", "@caller"],
                         caller_port=orthanc.dicom_port)
    outbox = Outbox(settings)
    outbox.enqueue(sr, study_uid=study_uid, calling_aet=orthanc.aet, peer_host="127.0.0.1")
    assert outbox.deliver_due() == 2
    assert outbox.pending() == []
    assert {r["status"] for r in outbox.deliveries(sr.SOPInstanceUID)} == {"delivered"}

    instances = orthanc.study_instances(study_uid)
    assert sorted(i["SOPInstanceUID"] for i in instances if i["Modality"] == "MG") == \
        sorted(s.SOPInstanceUID for s in sources)
    [stored] = [i for i in instances if i["Modality"] == "SR"]
    assert stored["SOPInstanceUID"] == sr.SOPInstanceUID
    assert stored["SOPClassUID"] == COMPREHENSIVE_SR
    # Delivered everywhere: the file moved to sent/.
    assert (settings.outbox_dir / "sent" / f"{sr.SOPInstanceUID}.dcm").exists()
    assert not (settings.outbox_dir / f"{sr.SOPInstanceUID}.dcm").exists()
    # Enqueued again (a re-run): nothing new is sent.
    outbox.enqueue(sr, study_uid=study_uid)
    assert outbox.deliver_due() == 0 and len(outbox.deliveries(sr.SOPInstanceUID)) == 2

    # The Comprehensive 3D SR option is accepted by the PACS too.
    sources3d = srdata.mg_study()
    man = srdata.manifest()
    sr3d = build_density_sr(srdata.result_for(sources3d, man=man), sources3d, man,
                            comprehensive_3d=True)
    outbox.enqueue(sr3d, study_uid=sr3d.StudyInstanceUID)
    assert outbox.deliver_due() == 1  # @caller skipped: no calling AE for this one
    [stored3d] = _sr_instances(orthanc, sr3d.StudyInstanceUID)
    assert stored3d["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.mark.services
def test_retried_until_orthanc_returns_across_outbox_restart(
        tmp_path: Path, orthanc: OrthancServer) -> None:
    sources, sr = _study_sr()
    study_uid = sr.StudyInstanceUID
    _store_images(orthanc, sources, tmp_path / "images")
    settings = _settings(tmp_path, [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"])

    orthanc.stop()
    first = Outbox(settings)
    first.enqueue(sr, study_uid=study_uid)
    assert first.deliver_due() == 0
    [row] = first.deliveries(sr.SOPInstanceUID)
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"]
    del first  # "serve" stops; everything it knew is on disk

    second = Outbox(settings)  # a new serve on the same data directory
    stop = threading.Event()
    loop = threading.Thread(target=second.run_forever, args=(stop, 0.2), daemon=True)
    loop.start()
    try:
        assert _wait(lambda: second.deliveries(sr.SOPInstanceUID)[0]["attempts"] >= 2, 30)
        orthanc.start()  # same ports, same storage
        assert _wait(lambda: second.deliveries(sr.SOPInstanceUID)[0]["status"] == "delivered",
                     60), second.deliveries(sr.SOPInstanceUID)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    instances = orthanc.study_instances(study_uid)
    assert len([i for i in instances if i["Modality"] == "MG"]) == 4
    assert [i["SOPInstanceUID"] for i in _sr_instances(orthanc, study_uid)] == \
        [sr.SOPInstanceUID]
    # The same study and model built again gives the same UIDs: no second SR in the PACS.
    _, again = _study_sr(sources=sources)
    assert again.SOPInstanceUID == sr.SOPInstanceUID
    second.enqueue(again, study_uid=study_uid)
    assert second.deliver_due() == 0
    assert len(_sr_instances(orthanc, study_uid)) == 1


@pytest.mark.services
def test_stow_rs_into_orthanc(tmp_path: Path, orthanc_factory) -> None:
    server = orthanc_factory(script=HERE / "orthanc_stow.py", name="stow")
    sources, sr = _study_sr()
    _store_images(server, sources, tmp_path / "images")
    closed = f"http://user:secret@127.0.0.1:{free_port()}/dicom-web"
    outbox = Outbox(_settings(tmp_path, [f"{server.url}/dicom-web", closed]))
    outbox.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert outbox.deliver_due() == 1
    [stored] = _sr_instances(server, sr.StudyInstanceUID)
    assert stored["SOPInstanceUID"] == sr.SOPInstanceUID
    assert len(server.study_instances(sr.StudyInstanceUID)) == 5
    [left] = outbox.pending()
    assert left["attempts"] == 1 and "STOW-RS" in left["last_error"]
    assert "secret" not in left["destination"] and "secret" not in left["last_error"]


@pytest.mark.filterwarnings("ignore:A value of type")
def test_unwritable_sr_records_no_delivery_and_leaves_no_temp_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [f"PACS@127.0.0.1:{free_port()}"])
    outbox = Outbox(settings)
    _, sr = _study_sr()
    sr.add_new(0x00091001, "LO", object())  # cannot be encoded: save_as raises
    with pytest.raises(Exception):  # noqa: B017 - whatever pydicom raises, it propagates
        outbox.enqueue(sr, study_uid=sr.StudyInstanceUID)
    assert list(settings.outbox_dir.iterdir()) == []
    assert outbox.deliveries(sr.SOPInstanceUID) == [] and outbox.pending() == []
