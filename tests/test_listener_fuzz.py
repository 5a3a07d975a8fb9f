"""Property-based fuzzing of the C-STORE handler body with malformed data sets.

Whatever arrives, :meth:`Ingestor.store` returns a DICOM status (never raises), stores
only what it accepted, and a valid data set sent after the garbage is still accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammo_density.plugin.assembly import StudyAssembler
from mammo_density.plugin.ingest import Incoming, Ingestor
from mammo_density.plugin.state import StateDB
from tests.mgdata import MG_PRES, mg

VALID = {0x0000, 0xA700, 0xA900} | set(range(0xC000, 0xD000))


@pytest.fixture(scope="module")
def ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    db = StateDB(root / "state.sqlite3")
    ingestor = Ingestor(root / "spool", StudyAssembler(db, lambda job: None, stable_seconds=60),
                        move=False)
    yield ingestor, root
    db.close()


def _encode(ds, *, meta_sop: str, meta_uid: str) -> bytes:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_sop
    meta.MediaStorageSOPInstanceUID = meta_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return buf.getvalue() + body.getvalue()


latin1 = st.characters(max_codepoint=255)
mutations = st.fixed_dictionaries({
    "drop": st.lists(st.sampled_from(["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID",
                                      "Rows", "Columns", "PixelData", "BitsAllocated",
                                      "ImageLaterality", "ViewPosition", "ViewCodeSequence"]),
                     max_size=3),
    "rows": st.one_of(st.none(), st.integers(0, 65535)),
    "cols": st.one_of(st.none(), st.integers(0, 65535)),
    "bits": st.one_of(st.none(), st.sampled_from([0, 1, 7, 8, 12, 16, 32, 99])),
    "frames": st.one_of(st.none(), st.text(latin1, max_size=4)),
    "laterality": st.one_of(st.none(), st.text(latin1, max_size=3)),
    "date": st.one_of(st.none(), st.text(latin1, max_size=20)),
    "cut": st.one_of(st.none(), st.integers(0, 600)),
    "flip": st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    "junk": st.one_of(st.none(), st.binary(max_size=300)),
})


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=mutations)
def test_malformed_datasets_get_a_status_never_an_exception(ingest, m):
    ingestor, root = ingest
    ds = mg(generate_uid(), "R", "CC", rows=8, cols=8)
    sop_uid = ds.SOPInstanceUID
    for kw in m["drop"]:
        if kw in ds:
            delattr(ds, kw)
    if m["rows"] is not None:
        ds.Rows = m["rows"]
    if m["cols"] is not None:
        ds.Columns = m["cols"]
    if m["bits"] is not None:
        ds.BitsAllocated = m["bits"]
    if m["frames"] is not None:
        ds.add_new(0x00280008, "IS", None)
        ds[0x00280008]._value = m["frames"]  # raw, possibly invalid IS
    if m["laterality"] is not None:
        ds.ImageLaterality = m["laterality"]
    if m["date"] is not None:
        ds.add_new(0x0008002A, "DT", m["date"])
    data = bytearray(_encode(ds, meta_sop=MG_PRES, meta_uid=sop_uid))
    if m["junk"] is not None:
        data[200:200] = m["junk"]
    for pos, value in m["flip"]:
        if pos < len(data):
            data[pos] = value
    if m["cut"] is not None:
        data = data[: max(0, len(data) - m["cut"])]
    path = root / f"{generate_uid()}.dcm"
    path.write_bytes(bytes(data))
    before = ingestor.assembler.db.instance_count()
    status = ingestor.store(Incoming(path=path, sop_class_uid=MG_PRES, sop_instance_uid=sop_uid,
                                     calling_aet="FUZZ", peer_host="127.0.0.1"))
    assert status in VALID
    after = ingestor.assembler.db.instance_count()
    assert after == before + (1 if status == 0 else 0) or status == 0  # duplicates allowed
    if status == 0:
        assert Path(ingestor.assembler.db.instance(sop_uid).path).exists()
    # The handler still works for a good data set afterwards.
    good = mg(generate_uid(), "L", "MLO", rows=4, cols=4)
    good_path = root / f"{good.SOPInstanceUID}.dcm"
    good_path.write_bytes(_encode(good, meta_sop=MG_PRES, meta_uid=good.SOPInstanceUID))
    assert ingestor.store(Incoming(path=good_path, sop_class_uid=MG_PRES,
                                   sop_instance_uid=good.SOPInstanceUID)) == 0
