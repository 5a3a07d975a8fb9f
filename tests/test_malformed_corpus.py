"""The malformed C-STORE corpus, sent through the real listener by real peers.

Every case is a data set a sender could really produce (a re-sent UID with other content,
two patients in one study, a header that lies about its pixels, hostile UIDs, ...). The
rule: no 0x0000 for an image that cannot be assessed correctly, and every study that
still gets assessed yields an SR that dciodvfy accepts. The corpus ends with the
studies queued by what was accepted being run through the real pipeline (ONNX Runtime)
and their SRs checked with dciodvfy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config

from mammo_density.config import load_settings
from mammo_density.job import StudyJob
from mammo_density.plugin.listener import Listener
from mammo_density.plugin.state import StateDB
from tests.mgdata import MG_PRES, RDSR, mg, write
from tests.services import dciodvfy, free_port, storescu

pytestmark = pytest.mark.services

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SUCCESS = {0x0000}
PIXELS = {0xA900}
UID_BAD = {0xC004}
RESEND = {0xC003}
PATIENT = {0xC005}
MISSING = {0xC001}
ROWS, COLS = 160, 128  # the gate keeps images under 128 px out of the slots


def image(study_uid: str, lat: str | None = "R", view: str | None = "CC", **kw) -> Dataset:
    ds = mg(study_uid, lat, view, rows=ROWS, cols=COLS, **kw)
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.IssuerOfPatientID = "HOSP"
    ds.StudyDate, ds.StudyTime = "20240101", "100000"
    rng = np.random.default_rng(abs(hash(ds.SOPInstanceUID)) % 2**32)
    ds.PixelData = rng.integers(0, 4096, ROWS * COLS, dtype=np.uint16).tobytes()
    return ds


def copy(ds: Dataset) -> Dataset:
    return deepcopy(ds)


def j2k(ds: Dataset, codestream: bytes | None = None) -> Dataset:
    out = copy(ds)
    arr = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ROWS, COLS)
    out.PixelData = encapsulate([codestream if codestream is not None else
                                 imagecodecs.jpeg2k_encode(arr, level=0)])
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return out


@dataclass
class Case:
    """Setup instances (must be accepted), then the probe and the statuses it may get."""

    setup: list[Dataset]
    probe: Dataset
    expected: set[int]
    raw: bool = False  # send the file as written (pynetdicom would not encode it)
    syntax: str = ExplicitVRLittleEndian
    check: Callable[[StateDB, str], None] | None = None
    notes: list[str] = field(default_factory=list)


def _conflicting(db: StateDB, study_uid: str) -> None:
    row = db.study(study_uid)
    assert row["status"] == "conflicting", row
    assert "different patients" in row["last_error"]
    assert row["result"]["conflicting"] is True and row["result"]["assessable"] is False


def _kept_first(db: StateDB, study_uid: str) -> None:
    rows = db.instances(study_uid)
    assert len(rows) == 1 and rows[0].times_received == 1


def case_same_uid_other_patient() -> Case:
    a = image(generate_uid())
    b = copy(a)
    b.PatientID, b.PatientName = "OTHER-42", "Roe^Mary"
    return Case([a], b, RESEND, check=_kept_first)


def case_same_uid_inverted_pixels() -> Case:
    a = image(generate_uid())
    b = copy(a)
    b.PixelData = (4095 - np.frombuffer(a.PixelData, dtype=np.uint16)).astype(np.uint16).tobytes()
    return Case([a], b, RESEND, check=_kept_first)


def case_same_uid_other_study() -> Case:
    a = image(generate_uid())
    b = copy(a)
    b.StudyInstanceUID = generate_uid()

    def check(db: StateDB, study_uid: str) -> None:
        assert db.instances(study_uid) == []
        _kept_first(db, a.StudyInstanceUID)

    return Case([a], b, RESEND, check=check)


def case_same_uid_other_codec() -> Case:
    a = image(generate_uid())
    return Case([a], j2k(a), RESEND, syntax=JPEG2000Lossless, check=_kept_first)


def case_same_uid_other_birth_date() -> Case:
    a = image(generate_uid())
    b = copy(a)
    b.PatientBirthDate = "19800202"
    return Case([a], b, RESEND, check=_kept_first)


def case_two_patients_one_study() -> Case:
    uid = generate_uid()
    cc = [image(uid, "R", "CC"), image(uid, "L", "CC")]
    mlo = image(uid, "R", "MLO", patient_id="PAT-B")
    mlo.PatientName = "Roe^Mary"
    return Case(cc, mlo, PATIENT, check=_conflicting)


def case_two_patients_name_only() -> Case:
    uid = generate_uid()
    b = image(uid, "L", "MLO")
    b.PatientName = "Roe^Mary"
    return Case([image(uid)], b, PATIENT, check=_conflicting)


def case_two_patients_issuer() -> Case:
    uid = generate_uid()
    b = image(uid, "L", "MLO")
    b.IssuerOfPatientID = "OTHER-HOSPITAL"
    return Case([image(uid)], b, PATIENT, check=_conflicting)


def case_two_patients_dose_report() -> Case:
    uid = generate_uid()
    dose = _rdsr(uid)
    dose.PatientID = "PAT-B"
    return Case([image(uid)], dose, PATIENT, check=_conflicting)


def _rdsr(uid: str) -> Dataset:
    from tests.mgdata import rdsr

    return rdsr(uid)


def case_same_uid_dose_report_changed() -> Case:
    uid = generate_uid()
    dose = _rdsr(uid)
    dose.PatientID = "PAT-SECRET-1"
    changed = copy(dose)
    changed.ValueType = "TEXT"
    return Case([image(uid), dose], changed, RESEND)


def case_identical_dose_report_resend() -> Case:
    """Control: an object without pixel data sent again unchanged is fine."""
    uid = generate_uid()
    dose = _rdsr(uid)
    return Case([image(uid), dose], copy(dose), SUCCESS)


def case_bits_allocated_8_holding_16() -> Case:
    ds = image(generate_uid())
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds["PixelData"].VR = "OB"
    return Case([], ds, PIXELS)


def case_bits_allocated_16_holding_8() -> Case:
    ds = image(generate_uid())
    ds.PixelData = ds.PixelData[: ROWS * COLS]
    return Case([], ds, PIXELS)


def case_rows_larger_than_data() -> Case:
    ds = image(generate_uid())
    ds.Rows = ROWS * 2
    return Case([], ds, PIXELS)


def case_columns_smaller_than_data() -> Case:
    ds = image(generate_uid())
    ds.Columns = COLS // 2
    return Case([], ds, PIXELS)


def case_two_frames_declared() -> Case:
    ds = image(generate_uid())
    ds.NumberOfFrames = 2
    return Case([], ds, PIXELS)


def case_rgb_declared() -> Case:
    ds = image(generate_uid())
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    return Case([], ds, PIXELS)


def case_bits_allocated_12() -> Case:
    ds = image(generate_uid())
    ds.BitsAllocated = 12
    return Case([], ds, PIXELS)


def case_empty_pixel_data() -> Case:
    ds = image(generate_uid())
    ds.PixelData = b""
    return Case([], ds, PIXELS)


def case_no_pixel_data() -> Case:
    ds = image(generate_uid())
    del ds.PixelData
    return Case([], ds, PIXELS)


def case_zero_rows() -> Case:
    ds = image(generate_uid())
    ds.Rows = 0
    return Case([], ds, PIXELS)


def case_random_j2k_bytes() -> Case:
    ds = image(generate_uid())
    noise = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return Case([], j2k(ds, noise), PIXELS, syntax=JPEG2000Lossless)


def case_j2k_of_another_size() -> Case:
    ds = image(generate_uid())
    other = np.zeros((ROWS // 2, COLS), dtype=np.uint16)
    return Case([], j2k(ds, imagecodecs.jpeg2k_encode(other, level=0)), PIXELS,
                syntax=JPEG2000Lossless)


def case_j2k_16_bit_in_8_bit_header() -> Case:
    ds = image(generate_uid())
    arr = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ROWS, COLS) * 16
    out = j2k(ds, imagecodecs.jpeg2k_encode(arr, level=0))
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    return Case([], out, PIXELS, syntax=JPEG2000Lossless)


def case_random_jpeg_ls_bytes() -> Case:
    ds = image(generate_uid())
    out = j2k(ds, b"\x00\x11" * 500)
    out.file_meta.TransferSyntaxUID = JPEGLSLossless
    return Case([], out, PIXELS, syntax=JPEGLSLossless)


def case_rle_bad_header() -> Case:
    ds = image(generate_uid())
    out = j2k(ds, (99).to_bytes(4, "little") + bytes(60) + b"\x01" * 100)
    out.file_meta.TransferSyntaxUID = RLELossless
    return Case([], out, PIXELS, syntax=RLELossless)


def case_encapsulated_under_native_syntax() -> Case:
    ds = image(generate_uid())
    out = j2k(ds)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return Case([], out, PIXELS, raw=True)


def case_path_traversal_study_uid() -> Case:
    ds = image("../../../../etc/cron.d")
    return Case([], ds, UID_BAD, raw=True)


def case_path_traversal_sop_uid() -> Case:
    ds = image(generate_uid(), sop_uid="1.2.3/../../../x")
    return Case([], ds, UID_BAD, raw=True)


def case_letters_in_series_uid() -> Case:
    ds = image(generate_uid())
    ds.SeriesInstanceUID = "1.2.840.abc.1"
    return Case([], ds, UID_BAD, raw=True)


def case_uid_longer_than_64() -> Case:
    ds = image("1." + "2" * 70)
    return Case([], ds, UID_BAD, raw=True)


def case_uid_with_empty_component() -> Case:
    ds = image("1.2..3")
    return Case([], ds, UID_BAD, raw=True)


def case_name_of_311_characters() -> Case:
    ds = image(generate_uid())
    ds.PatientName = "A" * 311
    return Case([], ds, UID_BAD)


def case_patient_id_of_100_characters() -> Case:
    ds = image(generate_uid())
    ds.PatientID = "9" * 100
    return Case([], ds, UID_BAD)


def case_wrong_sop_class() -> Case:
    ds = image(generate_uid())
    ds.SOPClassUID = CT_IMAGE  # the request (file meta) still says MG For Presentation
    return Case([], ds, PIXELS, raw=True)


def case_missing_study_uid() -> Case:
    ds = image(generate_uid())
    del ds.StudyInstanceUID
    return Case([], ds, MISSING)


def case_missing_series_uid() -> Case:
    ds = image(generate_uid())
    del ds.SeriesInstanceUID
    return Case([], ds, MISSING)


def case_truncated_pixel_data() -> Case:
    ds = image(generate_uid())
    return Case([], ds, {0xC000, 0xA900}, raw=True, notes=["truncate"])


def case_missing_laterality() -> Case:
    """Stored (a real object of the study) but fills no slot: never assessed as a view."""
    ds = image(generate_uid(), None, "MLO")

    def check(db: StateDB, study_uid: str) -> None:
        rows = db.instances(study_uid)
        assert rows[0].slot is None and "laterality" in rows[0].note

    return Case([], ds, SUCCESS, check=check)


def case_identical_resend() -> Case:
    """The control: the same instance again, even transcoded to implicit VR, is fine."""
    a = image(generate_uid())
    b = copy(a)
    b.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    def check(db: StateDB, study_uid: str) -> None:
        rows = db.instances(study_uid)
        assert len(rows) == 1 and rows[0].times_received == 2

    return Case([a], b, SUCCESS, syntax=ImplicitVRLittleEndian, check=check)


CASES = {name[5:]: fn for name, fn in sorted(globals().items())
         if name.startswith("case_") and callable(fn)}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    settings = load_settings(None, data_dir=root / "data", listen_host="127.0.0.1",
                             listen_port=free_port(), stable_seconds=3600,
                             min_free_disk_mb=0)
    db = StateDB(settings.state_db)
    jobs: list[StudyJob] = []
    listener = Listener(settings, db, jobs.append).start()
    yield settings, db, listener, jobs, root
    listener.stop()
    db.close()


def _send(port: int, datasets: list[Dataset], syntax: str) -> list[int]:
    ae = AE(ae_title="CORPUS")
    for sop in (MG_PRES, RDSR):
        for ts in dict.fromkeys((syntax, ExplicitVRLittleEndian)):
            ae.add_requested_context(sop, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMODENSITY")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _write_raw(ds: Dataset, path: Path) -> None:
    """The file as a peer would send it: meta naming MG For Presentation and the probe's
    SOP Instance UID, then the data set exactly as built (no consistency fixes)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_PRES
    meta.MediaStorageSOPInstanceUID = str(ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=False)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    ds = deepcopy(ds)
    del ds.file_meta
    write_dataset(body, ds)
    path.write_bytes(buf.getvalue() + body.getvalue())


def _send_raw(port: int, path: Path, monkeypatch) -> int:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="CORPUS")
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae.add_requested_context(MG_PRES, [str(meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMODENSITY")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(str(path)).Status)
    finally:
        assoc.release()


def test_corpus_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_malformed_case(node, name, tmp_path, monkeypatch):
    settings, db, listener, _jobs, _root = node
    case = CASES[name]()
    port = listener.address[1]
    if case.setup:
        assert _send(port, case.setup, ExplicitVRLittleEndian) == [0] * len(case.setup)
    if case.raw:
        path = tmp_path / "probe.dcm"
        _write_raw(case.probe, path)
        if "truncate" in case.notes:
            path.write_bytes(path.read_bytes()[:-500])
        status = _send_raw(port, path, monkeypatch)
    else:
        status = _send(port, [case.probe], case.syntax)[0]
    assert status in case.expected, f"{name}: 0x{status:04X}"
    study_uid = str(case.probe.get("StudyInstanceUID", ""))
    if case.check is not None:
        case.check(db, study_uid)
    if status != 0:  # nothing of a refused probe is recorded or left in the spool
        sop = str(case.probe.SOPInstanceUID)
        row = db.instance(sop)
        assert row is None or case.setup, name
        assert not list(settings.spool_dir.glob(".incoming/*"))


def test_dcmtk_peer_gets_the_same_refusals(node, tmp_path):
    """dcmtk's storescu (another toolkit's encoder) on three cases: the refusal holds."""
    _settings, db, listener, _jobs, _root = node
    port = listener.address[1]
    folder = tmp_path / "dcmtk"
    base = image(generate_uid())
    write(base, folder / "1")
    assert storescu([folder / "1"], port).returncode == 0
    swapped = copy(base)
    swapped.PatientID = "OTHER-7"
    bad_bits = image(generate_uid())
    bad_bits.BitsAllocated, bad_bits.BitsStored, bad_bits.HighBit = 8, 8, 7
    other = image(base.StudyInstanceUID, "L", "CC", patient_id="PAT-C")
    for i, ds in enumerate((swapped, bad_bits, other)):
        write(ds, folder / f"bad{i}")
        proc = storescu([folder / f"bad{i}"], port)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 or "Error" in text or "0xc0" in text.lower() or \
            "0xa9" in text.lower(), text
    assert db.instance(base.SOPInstanceUID).times_received == 1
    assert db.instance(bad_bits.SOPInstanceUID) is None
    assert db.instance(other.SOPInstanceUID) is None
    assert db.study(base.StudyInstanceUID)["status"] == "conflicting"


def test_accepted_corpus_studies_give_valid_srs(node, tmp_path):
    """Everything the corpus left in the node is assessed by the real pipeline: held
    studies produce no job; every SR produced passes dciodvfy."""
    from mammo_density.commands.compose import node_pipeline
    from tests.models import cached_registry_entry

    settings, db, listener, jobs, _root = node
    listener.assembler.check_stable(now=time.time() + 10**6)  # queue what is left
    held = {s["study_uid"] for s in db.studies("conflicting")}
    assert held, "the corpus holds conflicting studies"
    assert not held & {j.study_instance_uid for j in jobs}
    model = cached_registry_entry(tmp_path / "models", seed=3)
    run_settings = settings.model_copy(update={"model_dir": model, "sr_destinations": []})
    pipeline = node_pipeline(run_settings, owns_outbox=True)
    srs = []
    for job in jobs:
        result = pipeline.run(job)
        if result.sr is not None:
            srs.append(Path(result.sr.path))
    assert srs, "some corpus studies are assessable"
    for path in srs:
        errors, _warnings = dciodvfy(path)
        assert errors == [], (path.name, errors)
        sr = pydicom.dcmread(path)
        assert sr.PatientID == "PAT-SECRET-1"
    for uid in held:
        assert db.study(uid)["status"] == "conflicting"
    print(json.dumps({"jobs": len(jobs), "srs": len(srs), "held": len(held)}))


@pytest.mark.parametrize("valid", [True, False])
def test_large_compressed_image_checked_without_loading_it(tmp_path, valid):
    """A 40 MB JPEG 2000 image: the first-fragment check reads only its first bytes from
    the file (peak Python memory stays far under the image's size), and random bytes are
    refused."""
    import tracemalloc

    from mammo_density.plugin.assembly import StudyAssembler
    from mammo_density.plugin.ingest import Incoming, Ingestor

    rows, cols = 4096, 3328
    ds = mg(generate_uid(), "R", "CC", rows=rows, cols=cols)
    if valid:
        head = imagecodecs.jpeg2k_encode(np.zeros((rows, cols), np.uint16), level=0,
                                         codecformat="J2K")
    else:
        head = b""
    filler = np.random.default_rng(1).integers(0, 256, 40 * 2**20, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([head + filler])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    path = write(ds, tmp_path / "in")
    del ds, filler
    db = StateDB(tmp_path / "state.sqlite3")
    ingestor = Ingestor(tmp_path / "spool", StudyAssembler(db, lambda job: None,
                                                           stable_seconds=60), move=False)
    tracemalloc.start()
    try:
        status = ingestor.store(Incoming(path=path, sop_class_uid=MG_PRES,
                                         sop_instance_uid=pydicom.dcmread(
                                             path, stop_before_pixels=True).SOPInstanceUID,
                                         transfer_syntax=JPEG2000Lossless))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        db.close()
    assert status == (0x0000 if valid else 0xA900)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
