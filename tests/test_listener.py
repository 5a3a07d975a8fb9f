"""The DICOM listener in-process, against real peers: dcmtk storescu/echoscu and pynetdicom."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from mammo_density.config import Settings, load_settings
from mammo_density.job import StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.plugin.listener import Listener
from mammo_density.plugin.state import StateDB
from mammo_density.spool_layout import SpoolImages
from tests.mgdata import MG_PRES, MG_PROC, RDSR, SECONDARY_CAPTURE, mg, rdsr, study, write
from tests.services import echoscu, free_port, require_testdata, storescu

SLOTS4 = {"R-CC", "L-CC", "R-MLO", "L-MLO"}


@dataclass
class Node:
    settings: Settings
    db: StateDB
    listener: Listener
    jobs: list[StudyJob] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.address[1]

    def wait(self, pred: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError("condition not met in time")

    def jobs_for(self, study_uid: str) -> list[StudyJob]:
        return [j for j in self.jobs if j.study_instance_uid == study_uid]


@pytest.fixture
def node_factory(tmp_path: Path):
    nodes: list[Node] = []

    def make(**overrides) -> Node:
        values = {"data_dir": tmp_path / f"data{len(nodes)}", "listen_host": "127.0.0.1",
                  "listen_port": free_port(), "stable_seconds": 1.0, "min_free_disk_mb": 0}
        values.update(overrides)
        settings = load_settings(None, **values)
        db = StateDB(settings.state_db)
        node = Node(settings, db, None)  # type: ignore[arg-type]
        node.listener = Listener(settings, db, node.jobs.append).start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.listener.stop()
        node.db.close()


@pytest.fixture
def node(node_factory) -> Node:
    return node_factory()


def client(aet: str = "TESTSCU", syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian),
           classes=(MG_PRES, MG_PROC, RDSR)) -> AE:
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    for sop_class in classes:
        ae.add_requested_context(sop_class, list(syntaxes))
    return ae


def send(node: Node, datasets, ae: AE | None = None, called: str | None = None) -> list[int]:
    ae = ae or client()
    assoc = ae.associate("127.0.0.1", node.port, ae_title=called or node.settings.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


# --- real dcmtk peers ---------------------------------------------------------------------


@pytest.mark.services
def test_dcmtk_echo_and_store_complete_study(node, tmp_path):
    assert echoscu(node.port).returncode == 0
    sent = study()
    folder = tmp_path / "send"
    for ds in sent:
        write(ds, folder)
    proc = storescu([folder], node.port)
    assert proc.returncode == 0, proc.stderr
    node.wait(lambda: len(node.jobs) == 1)
    job = node.jobs[0]
    assert {im.slot for im in job.images} == SLOTS4 and not job.partial
    assert job.calling_aet == "STORESCU" and job.peer_host == "127.0.0.1"
    assert node.db.study(sent[0].StudyInstanceUID)["status"] == "queued"
    for im in job.images:
        spooled = pydicom.dcmread(SpoolImages(node.settings.spool_dir).locate(
            job.study_instance_uid, im.sop_instance_uid))
        original = next(ds for ds in sent if ds.SOPInstanceUID == im.sop_instance_uid)
        assert spooled.PixelData == original.PixelData
        assert spooled.PatientID == original.PatientID
    assert not list((node.settings.spool_dir).glob("*/.*.part"))


def test_pynetdicom_echo(node):
    assoc = client().associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


# --- assembly over the network ------------------------------------------------------------


@pytest.mark.parametrize("coding", ["sct", "srt"])
def test_view_code_sequence_only_studies(node, coding):
    sent = study(coding=coding)
    assert send(node, sent) == [0] * 4
    node.wait(lambda: len(node.jobs) == 1)
    assert {im.slot for im in node.jobs[0].images} == SLOTS4


def test_study_completed_across_two_associations_with_duplicates(node):
    sent = study()
    assert send(node, [*sent[:2], sent[0]]) == [0, 0, 0]  # duplicate inside one association
    time.sleep(0.2)
    assert node.jobs == []
    assert send(node, sent[1:]) == [0, 0, 0]  # one more duplicate, then the rest
    node.wait(lambda: len(node.jobs) == 1)
    assert len(node.db.instances(sent[0].StudyInstanceUID)) == 4
    time.sleep(1.5)  # past the stable time: still exactly one submission
    assert len(node.jobs) == 1


def test_retake_extra_views_rdsr_and_partial(node):
    uid = generate_uid()
    first = mg(uid, "R", "CC", acquired="20240101100000", instance_number=1)
    retake = mg(uid, "R", "CC", acquired="20240101101000", instance_number=2)
    spot = mg(uid, "R", "CC", modifier=("399055006", "SCT", "Spot Compression"))
    xccl = mg(uid, "L", "XCCL")
    nolat = mg(uid, None, "MLO")
    dose = rdsr(uid)
    assert send(node, [retake, first, spot, xccl, nolat, dose]) == [0] * 6
    node.wait(lambda: len(node.jobs) == 1)  # after the stable time
    job = node.jobs[0]
    assert job.partial and job.missing_views == ["L-CC", "R-MLO", "L-MLO"]
    assert job.image_for("R-CC").sop_instance_uid == retake.SOPInstanceUID
    assert len(job.other_sop_uids) == 5
    notes = {r.sop_uid: r.note for r in node.db.instances(uid)}
    assert notes[spot.SOPInstanceUID].startswith("spot_compression@R-CC")
    assert notes[nolat.SOPInstanceUID].startswith("no_laterality@?-MLO")
    # every image not used is in the job, with its coded reason
    reasons = {u.image: (u.reason.value, u.slot) for u in job.unused_images}
    assert reasons == {
        uid_hash(first.SOPInstanceUID): ("retake_superseded", "R-CC"),
        uid_hash(spot.SOPInstanceUID): ("spot_compression", "R-CC"),
        uid_hash(xccl.SOPInstanceUID): ("non_standard_view", None),
        uid_hash(nolat.SOPInstanceUID): ("no_laterality", None),
    }


def test_not_assessable_after_stable_time(node):
    uid = generate_uid()
    flat_field = mg(uid, None, None)
    flat_field.ViewPosition, flat_field.SeriesDescription = "FLATFIELD", "Flat Field Tomo"
    assert send(node, [flat_field, rdsr(uid)]) == [0, 0]
    node.wait(lambda: node.db.study(uid)["status"] == "failed")
    assert "not assessable" in node.db.study(uid)["last_error"]
    assert "quality_control" in node.db.study(uid)["last_error"]
    assert node.jobs == []


def test_no_usable_image_still_goes_to_the_pipeline_with_reasons(node):
    uid = generate_uid()
    xccl, stub = mg(uid, "L", "XCCL"), mg(uid, "R", "CC", rows=4, cols=4)
    assert send(node, [xccl, stub, rdsr(uid)]) == [0, 0, 0]
    node.wait(lambda: len(node.jobs) == 1)
    (job,) = node.jobs
    assert job.images == [] and len(job.other_sop_uids) == 3
    assert {(u.image, u.reason.value) for u in job.unused_images} == {
        (uid_hash(xccl.SOPInstanceUID), "non_standard_view"),
        (uid_hash(stub.SOPInstanceUID), "too_small")}


def test_new_image_for_done_study_is_reassessed(node):
    sent = study()
    uid = sent[0].StudyInstanceUID
    send(node, sent)
    node.wait(lambda: len(node.jobs) == 1)
    node.db.mark_processing(uid, 1)
    node.db.mark_done(uid, 1, '{"revision": 1}')
    retake = mg(uid, "L", "MLO", acquired="20991231235959", instance_number=9)
    assert send(node, [retake]) == [0]
    node.wait(lambda: len(node.jobs) == 2)
    assert node.jobs[1].revision == 2
    assert node.jobs[1].image_for("L-MLO").sop_instance_uid == retake.SOPInstanceUID


# --- transfer syntaxes --------------------------------------------------------------------


def _encoded(ts: str):
    ds = mg(generate_uid(), "R", "CC", rows=160, cols=128)
    arr = ds.pixel_array
    if ts in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        ds.compress(ts)
    elif ts == HTJ2KLossless:
        ds.PixelData = encapsulate([imagecodecs.htj2k_encode(arr)])
        ds.file_meta.TransferSyntaxUID = ts
    elif ts == JPEGBaseline8Bit:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode((arr % 256).astype(np.uint8))])
        ds.file_meta.TransferSyntaxUID = ts
    else:
        ds.file_meta.TransferSyntaxUID = ts
    return ds


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                RLELossless, JPEG2000Lossless, JPEGLSLossless, HTJ2KLossless,
                                JPEGBaseline8Bit])
def test_transfer_syntaxes_stored_as_sent(node, ts):
    ds = _encoded(ts)
    assert send(node, [ds], client(syntaxes=[ts], classes=[MG_PRES])) == [0]
    rows = node.db.instances(ds.StudyInstanceUID)
    assert len(rows) == 1 and rows[0].transfer_syntax == ts and rows[0].slot == "R-CC"
    stored = pydicom.dcmread(rows[0].path)
    assert stored.file_meta.TransferSyntaxUID == ts
    if ts not in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        assert stored.PixelData == ds.PixelData  # the compressed bytes, untouched


@pytest.mark.parametrize("ts", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_compressed_pixel_data_in_the_wrong_codec_refused(node, ts):
    ds = _encoded(ts)
    good = _encoded(ts)
    ds.PixelData = encapsulate([b"\x89PNG\r\n\x1a\n" + bytes(200)])  # not that codec
    statuses = send(node, [ds, good], client(syntaxes=[ts], classes=[MG_PRES]))
    assert statuses == [0xA900, 0x0000]


# --- real vendor headers ------------------------------------------------------------------


def test_real_vendor_files_accepted_and_slotted(node):
    # file -> (slot, reason the screening-image gate keeps it out)
    names = {
        "fo-dicom/GH133.dcm": ("R-MLO", ""),
        # Siemens stereotactic biopsy image, 67 x 112 mm
        "fo-dicom/OutOfBoundsOverlay.dcm": (None, "stereotactic@L-CC"),
        # GE stubs of 1 x 2 (ProtocolName STEREO) and 4 x 4 pixels
        "openrem/MG-Im-GE_Seno_1_ForPresentation.dcm": (None, "stereotactic@L-CC"),
        "openrem/MG-Im-GE_Seno_1_ForProcessing.dcm": (None, "stereotactic@L-CC"),
        "openrem/MG-Im-GE_Seno_2_ForPresentation.dcm": (None, "stereotactic@L-CC"),
        "openrem/MG-Im-GE-SenDS-scaled.dcm": (None, "too_small@L-CC: 4 x 4 pixels"),
        "openrem/MG-RDSR-GEPristina-2D.dcm": (None, ""),
        "openrem/MG-RDSR-Hologic_mix.dcm": (None, ""),
        "openrem/MG-RDSR-Giotto-DBT.dcm": (None, ""),
    }
    datasets = [pydicom.dcmread(require_testdata("real-mg", *n.split("/"))) for n in names]
    ae = AE(ae_title="VENDOR")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    statuses = send(node, datasets, ae)
    assert statuses == [0] * len(datasets)
    for (name, (slot, reason)), ds in zip(names.items(), datasets, strict=True):
        rows = [r for r in node.db.instances(ds.StudyInstanceUID) if r.sop_uid == ds.SOPInstanceUID]
        assert len(rows) == 1, name
        assert rows[0].slot == slot, name
        assert rows[0].note.startswith(reason), (name, rows[0].note)
        if "Seno" in name:  # the size is said too
            assert "1 x 2 pixels, under 128" in rows[0].note
        assert Path(rows[0].path).stat().st_size > 0


def test_secondary_capture_only_with_the_digitised_film_setting(node_factory):
    film = mg(generate_uid(), "L", "CC", sop_class=SECONDARY_CAPTURE)
    # a QA flat field written as Hologic does (the real header has no pixel data)
    flat_field = mg(generate_uid(), None, None, sop_class=SECONDARY_CAPTURE)
    flat_field.ViewPosition, flat_field.SeriesDescription = "FLATFIELD", "Flat Field Tomo"
    off = node_factory()
    ae = client(classes=[SECONDARY_CAPTURE])
    assoc = ae.associate("127.0.0.1", off.port, ae_title=off.settings.ae_title)
    try:  # refused at association: no presentation context for Secondary Capture
        assert assoc.is_established
        assert SECONDARY_CAPTURE not in {c.abstract_syntax for c in assoc.accepted_contexts}
    finally:
        if assoc.is_established:
            assoc.release()
    on = node_factory(digitised_film=True)
    assert send(on, [film, flat_field], ae) == [0, 0]
    row = on.db.instances(film.StudyInstanceUID)[0]
    assert (row.slot, row.kind, row.for_presentation) == ("L-CC", "image", True)
    row = on.db.instances(flat_field.StudyInstanceUID)[0]
    assert row.slot is None and row.note.startswith("quality_control")


# --- bad input over the network -----------------------------------------------------------


def test_bad_datasets_refused_association_goes_on(node, caplog):
    uid = generate_uid()
    no_study = mg(uid, "R", "CC")
    del no_study.StudyInstanceUID
    huge = mg(uid, "R", "CC")
    huge.Rows = 30000
    zero = mg(uid, "R", "CC")
    zero.Columns = 0
    short = mg(uid, "R", "CC")
    short.PixelData = short.PixelData[:10]
    no_pixels = mg(uid, "R", "CC")
    del no_pixels.PixelData
    good = mg(uid, "L", "CC")
    statuses = send(node, [no_study, huge, zero, short, no_pixels, good])
    assert statuses[0] == 0xC001
    assert statuses[1:5] == [0xA900] * 4
    assert statuses[5] == 0x0000
    assert [r.sop_uid for r in node.db.instances(uid)] == [good.SOPInstanceUID]
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "PAT-SECRET" not in text and "Secret" not in text and uid not in text
    assert len(node.db.last_errors(10)) == 5


def raw_file(folder: Path, body: bytes, *, sop_class: str = MG_PRES,
             ts: str = ExplicitVRLittleEndian, sop_uid: str | None = None) -> Path:
    """A file whose meta announces ``sop_class`` and whose data set is ``body``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ts
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{meta.MediaStorageSOPInstanceUID}.dcm"
    path.write_bytes(buf.getvalue() + body)
    return path


def send_raw(node: Node, paths: list[Path], monkeypatch) -> list[int]:
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    return send(node, [str(p) for p in paths], client(syntaxes=[ExplicitVRLittleEndian]))


def test_sop_class_mismatch_and_garbage(node, tmp_path, monkeypatch):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = mg(generate_uid(), "R", "CC", rows=16, cols=12)  # small: read whole, not deferred
    ds.SOPClassUID = MG_PROC  # the data set says For Processing, the request For Presentation
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    mismatch = raw_file(tmp_path, buf.getvalue(), sop_uid=ds.SOPInstanceUID)
    garbage = raw_file(tmp_path, b"\x00\x01garbage" * 7)
    ds.SOPClassUID = MG_PRES
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    ds.SOPInstanceUID = generate_uid()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    truncated = raw_file(tmp_path, buf.getvalue()[:-100], sop_uid=ds.SOPInstanceUID)
    good = mg(ds.StudyInstanceUID, "L", "CC")
    statuses = send_raw(node, [mismatch, garbage, truncated, write(good, tmp_path)], monkeypatch)
    assert statuses[0] == 0xA900
    assert 0xC000 <= statuses[1] <= 0xCFFF
    assert statuses[2] == 0xC000
    assert statuses[3] == 0
    assert [r.sop_uid for r in node.db.instances(ds.StudyInstanceUID)] == [good.SOPInstanceUID]


# --- guarding the door --------------------------------------------------------------------


@pytest.mark.services
def test_calling_aet_allow_list(node_factory):
    node = node_factory(allowed_aets=["PACS"])
    assoc = client("INTRUDER").associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert assoc.is_rejected
    assert echoscu(node.port, calling="INTRUDER").returncode != 0
    assert echoscu(node.port, calling="PACS").returncode == 0


@pytest.mark.services
def test_source_address_allow_list(node_factory):
    node = node_factory(allowed_hosts=["10.0.0.0/8"])
    assoc = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert not assoc.is_established
    ok = node_factory(allowed_hosts=["127.0.0.1"])
    assert echoscu(ok.port).returncode == 0


def test_max_associations(node_factory):
    node = node_factory(max_associations=1)
    first = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert first.is_established
    second = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert second.is_rejected
    first.release()
    node.wait(lambda: not node.listener._ae.active_associations)
    third = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert third.is_established
    third.release()


def test_disk_watermark_answers_a700(node_factory):
    node = node_factory(min_free_disk_mb=10**9)
    ds = mg(generate_uid(), "R", "CC")
    assert send(node, [ds]) == [0xA700]
    assert node.db.instances(ds.StudyInstanceUID) == []
    assert not list(node.settings.spool_dir.glob("*/*.dcm"))


def test_tls(node_factory, tmp_path):
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    node = node_factory(tls_cert=cert, tls_key=key)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    ctx.check_hostname = False
    ae = client()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="MAMMODENSITY",
                         tls_args=(ctx, None))
    assert assoc.is_established
    assert assoc.send_c_store(mg(generate_uid(), "R", "CC")).Status == 0
    assoc.release()
    plain = client().associate("127.0.0.1", node.port, ae_title="MAMMODENSITY")
    assert not plain.is_established


# --- load ---------------------------------------------------------------------------------


def test_twenty_concurrent_associations(node_factory):
    node = node_factory(max_associations=32, stable_seconds=30)
    studies = [study() for _ in range(20)]
    results: dict[int, list[int] | str] = {}

    def worker(i: int) -> None:
        ae = client()
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        try:
            results[i] = send(node, studies[i], ae)
        except Exception as err:  # reported below with the others
            results[i] = repr(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == {i: [0] * 4 for i in range(20)}
    node.wait(lambda: len(node.jobs) == 20)
    uids = [s[0].StudyInstanceUID for s in studies]
    assert sorted(j.study_instance_uid for j in node.jobs) == sorted(uids)
    for uid in uids:
        assert len(node.db.instances(uid)) == 4
        assert node.db.study(uid)["submissions"] == 1
    assert node.db.instance_count() == 80


def test_orphan_spool_file_recorded_at_start(node_factory, tmp_path):
    """A crash between the rename into the spool and the state commit leaves a file the
    database does not know: the next start records it (and assembles its study)."""
    from mammo_density.plugin.spool import instance_path

    data = tmp_path / "orphans"
    sent = study()
    for ds in sent:
        write(ds, instance_path(data / "spool", ds.StudyInstanceUID, ds.SOPInstanceUID).parent,
              instance_path(data / "spool", ds.StudyInstanceUID, ds.SOPInstanceUID).name)
    (data / "spool" / "x").mkdir()
    (data / "spool" / "x" / ".half.dcm.1234.part").write_bytes(b"partial")
    node = node_factory(data_dir=data)
    assert len(node.db.instances(sent[0].StudyInstanceUID)) == 4
    node.wait(lambda: len(node.jobs) == 1)
    time.sleep(0.3)
    assert len(node.jobs) == 1  # recorded and submitted once
    assert not (data / "spool" / "x" / ".half.dcm.1234.part").exists()


def test_our_own_sr_coming_back_is_stored_and_changes_nothing(node):
    from tests.mgdata import COMPREHENSIVE_SR

    sent = study()
    uid = sent[0].StudyInstanceUID
    send(node, sent)
    node.wait(lambda: len(node.jobs) == 1)
    node.db.mark_done(uid, 1, "{}")
    sr = rdsr(uid)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    assert send(node, [sr], client(classes=[COMPREHENSIVE_SR])) == [0]
    time.sleep(1.5)  # past the stable time
    assert node.db.study(uid)["status"] == "done" and len(node.jobs) == 1
    assert any(r.kind == "sr" for r in node.db.instances(uid))


def test_in_memory_receiving_fallback(node, monkeypatch):
    """Should something switch pynetdicom's chunked receiving off, data sets arrive in
    memory: they are written to a file and stored just the same."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    sent = study()
    assert send(node, sent) == [0] * 4
    node.wait(lambda: len(node.jobs) == 1)
    job = node.jobs[0]
    for im in job.images:
        spooled = SpoolImages(node.settings.spool_dir).locate(job.study_instance_uid,
                                                              im.sop_instance_uid)
        assert pydicom.dcmread(spooled).PixelData == next(
            ds.PixelData for ds in sent if ds.SOPInstanceUID == im.sop_instance_uid)
