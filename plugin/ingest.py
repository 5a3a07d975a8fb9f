"""Check one received data set, commit it to the spool, record it: the C-STORE handler's body.

:meth:`Ingestor.store` takes the received file (preamble, file meta, data set as sent,
pixel data never decoded) and returns the DICOM status to answer. Every failure is one
log line with the reason and hashed UIDs only, and one row in the state's error log.

Statuses (PS3.4 Annex B, Storage Service Class):

- ``0x0000`` Success: the file is durable in the spool and recorded.
- ``0xA700`` Refused, out of resources: free disk under the watermark, or the spool or
  state database could not be written.
- ``0xA900`` Data set does not match SOP class: SOP Class UID differs from the request,
  no pixel data in an image, zero or absurd Rows/Columns, native pixel data whose length
  is not Rows x Columns x SamplesPerPixel x frames x BitsAllocated / 8 (rounded up to an
  even length), encapsulated pixel data without a fragment, or whose first fragment is
  not in the codec of the transfer syntax or declares another image size than the header
  (its first bytes are read from the received file; full decoding is the worker's job,
  which marks the study failed with the reason if it cannot decode).
- ``0xC000`` Cannot understand: not a DICOM data set, truncated.
- ``0xC001`` Cannot understand: Study/Series/SOP Instance UID or SOP Class UID missing.
- ``0xC002`` Cannot understand: the data set's SOP Instance UID differs from the request.
- ``0xC003`` Conflicting re-send: this SOP Instance UID is already spooled with another
  patient, another study, another transfer syntax or other pixel data; the first copy is
  kept, nothing is replaced (:mod:`mammo_density.study.identity`). The same instance sent
  again unchanged is answered ``0x0000`` and changes nothing.
- ``0xC004`` Invalid UID: a Study/Series/SOP Instance UID or SOP Class UID that is not
  digits and dots (at most 64 characters), or a patient attribute longer than its VR allows.
- ``0xC005`` Patient conflict: the instance names another patient than the instances
  already received for its study; it is not stored, and the study is held as
  ``conflicting`` (never assessed as one exam, no SR) until an operator sorts it out.

The pixel checks read the header with ``stop_before_pixels`` and then only the first bytes
of the pixel data element from the file: a received image is never held in memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from mammo_density.logsetup import uid_hash
from mammo_density.plugin import spool
from mammo_density.plugin.assembly import NewInstance, StudyAssembler
from mammo_density.study import gate, sop
from mammo_density.study.identity import Identity, content_digest, differences
from mammo_density.study.selection import acquisition_key

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
MISSING_IDENTIFIERS = 0xC001
UID_MISMATCH = 0xC002
DUPLICATE_CONFLICT = 0xC003
INVALID_UID = 0xC004
INVALID_VALUE = INVALID_UID  # the same status for an over-long patient attribute
PATIENT_CONFLICT = 0xC005

MAX_DIMENSION = 20000
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float


_spooled_callbacks: list[Callable[[NewInstance], None]] = []


def on_spooled(callback: Callable[[NewInstance], None]) -> Callable[[], None]:
    """Call ``callback(instance)`` after each instance is durable in the spool and recorded
    (its ``path`` set); returns the function that removes it. Callbacks must be quick
    (they run in the C-STORE handler) and their errors are logged, never answered."""
    _spooled_callbacks.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _spooled_callbacks.remove(callback)

    return remove


def on_spooled_images(callback: Callable[[Path], None]) -> Callable[[], None]:
    """Like :func:`on_spooled`, for the screening images only: ``callback(path)`` with the
    spooled file of each instance that fills a slot (the preparation cache's feed)."""

    def spooled(inst: NewInstance) -> None:
        if inst.kind == sop.KIND_IMAGE and inst.slot and inst.path:
            callback(Path(inst.path))

    return on_spooled(spooled)


@dataclass(frozen=True)
class Incoming:
    """One received C-STORE data set, as a file, with the request's parameters.

    ``path`` holds preamble + file meta + the data set as the peer encoded it.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str = ""
    calling_aet: str = ""
    peer_host: str = ""


class Rejected(Exception):
    """A data set refused with ``status``; the message is the reason (no identifiers)."""

    def __init__(self, status: int, reason: str, study_uid: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.study_uid = study_uid


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().rstrip("\x00")


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Patient attributes and their VR's longest value (PN: per component group)
_PATIENT_LIMITS = (("PatientID", 64), ("IssuerOfPatientID", 64), ("PatientName", 64))


def check_uid(keyword: str, value: str) -> None:
    """Raise :class:`Rejected` (0xC004) unless ``value`` is a valid UID (digits and dots,
    no empty component, at most 64 characters)."""
    if len(value) > 64 or not _UID_RE.match(value):  # (its value is not logged)
        raise Rejected(INVALID_UID, f"invalid {keyword} ({len(value)} characters): a UID "
                       "is digits and dots, at most 64")


def _check_patient_values(ds: Dataset) -> None:
    for keyword, limit in _PATIENT_LIMITS:
        text = _text(ds, keyword)
        groups = text.split("=") if keyword == "PatientName" else [text]
        longest = max((len(g) for g in groups), default=0)
        if longest > limit:
            raise Rejected(INVALID_VALUE, f"{keyword} of {longest} characters: its VR "
                           f"allows {limit}")


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element of a file starts, and how it is encoded."""

    tag: int
    offset: int  # of the element's tag in the file
    value_offset: int  # of its value
    length: int  # 0xFFFFFFFF: undefined (encapsulated)
    file_size: int


def read_header(path: Path) -> tuple[Dataset, PixelElement | None]:
    """The data set without its pixel data, and where the pixel data element is.

    Only the header is parsed; the pixel data stays on disk. Deflated files are read
    whole (inflated in memory; they are rare and small) and give no position.
    """
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        ts = UID(_text(ds.file_meta, "TransferSyntaxUID") or "1.2.840.10008.1.2")
        if ts.is_deflated:
            return ds, None
        offset = fp.tell()
        head = fp.read(12)
        size = os.fstat(fp.fileno()).st_size
    if len(head) < 8:
        return ds, None
    little = ts.is_little_endian
    order = "little" if little else "big"
    group = int.from_bytes(head[0:2], order)
    elem = int.from_bytes(head[2:4], order)
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return ds, None
    if ts.is_implicit_VR:
        length = int.from_bytes(head[4:8], order)
        value_offset = offset + 8
    else:
        if len(head) < 12:
            raise Rejected(CANNOT_UNDERSTAND, "truncated in the pixel data element header")
        length = int.from_bytes(head[8:12], order)
        value_offset = offset + 12
    return ds, PixelElement(tag, offset, value_offset, length, size)


def _pixel_geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise Rejected(SOP_CLASS_MISMATCH, f"Rows/Columns missing or zero ({rows}x{cols})")
    if rows > MAX_DIMENSION or cols > MAX_DIMENSION:
        raise Rejected(SOP_CLASS_MISMATCH, f"absurd image size {rows}x{cols}")
    bits = _int(ds, "BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        raise Rejected(SOP_CLASS_MISMATCH, f"BitsAllocated {bits} not 1/8/16/32/64")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if samples < 1 or samples > 4 or frames < 1:
        raise Rejected(SOP_CLASS_MISMATCH, f"SamplesPerPixel {samples} / frames {frames}")
    return rows, cols, bits, samples, frames


def expected_length(rows: int, cols: int, bits: int, samples: int, frames: int) -> int:
    """Bytes of native pixel data the header declares (before the even-length pad)."""
    return (rows * cols * samples * frames * bits + 7) // 8


def _check_pixels(ds: Dataset, path: Path, transfer_syntax: UID,
                  elem: PixelElement | None) -> None:
    """Pixel module sanity without decoding: dimensions, a length that is exactly what
    they declare (native), a first fragment in the right codec (encapsulated)."""
    if elem is None and not any(t in ds for t in _PIXEL_TAGS):
        raise Rejected(SOP_CLASS_MISMATCH, "image without pixel data")
    rows, cols, bits, samples, frames = _pixel_geometry(ds)
    if elem is None:  # deflated: the whole (inflated) data set was read into memory
        item = next(ds.get_item(t) for t in _PIXEL_TAGS if t in ds)
        length = len(item.value or b"")
        undefined = bool(getattr(item, "is_undefined_length", False))
    else:
        length, undefined = elem.length, elem.length == 0xFFFFFFFF
    if transfer_syntax.is_compressed:
        if elem is None:
            return
        if not undefined and not _starts_with_item(path, elem.value_offset):
            # (a defined length around items is out of the standard, but some toolkits
            # write it; the items are checked like any others)
            raise Rejected(SOP_CLASS_MISMATCH, f"native pixel data under the compressed "
                           f"transfer syntax {transfer_syntax.name}")
        _check_first_fragment(path, elem.value_offset, transfer_syntax,
                              (rows, cols, samples, bits))
        return
    if undefined:
        raise Rejected(SOP_CLASS_MISMATCH, "encapsulated pixel data under a native "
                       "transfer syntax")
    expected = expected_length(rows, cols, bits, samples, frames)
    if length not in (expected, expected + (expected & 1)):
        raise Rejected(SOP_CLASS_MISMATCH,
                       f"pixel data {length} bytes, {rows}x{cols}x{samples}x{frames} at "
                       f"{bits} bit needs {expected}: the header does not describe the data")
    if elem is not None and elem.value_offset + length > elem.file_size:
        raise Rejected(CANNOT_UNDERSTAND, f"truncated: pixel data ends at "
                       f"{elem.value_offset + length}, file {elem.file_size}")


# What the first fragment of encapsulated pixel data starts with, per codec family.
_JPEG = (b"\xff\xd8",)  # SOI: JPEG baseline/extended/lossless and JPEG-LS
_J2K = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")  # codestream SOC+SIZ, or JP2
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                     "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), _JPEG),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                     "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                     "1.2.840.10008.1.2.4.203"), _J2K),
}
_ITEM = b"\xfe\xff\x00\xe0"
_HEAD_BYTES = 64 * 1024  # of the first fragment, enough for a JPEG's frame header


def _starts_with_item(path: Path, offset: int) -> bool:
    with open(path, "rb") as fp:
        fp.seek(offset)
        return fp.read(4) == _ITEM


def _check_first_fragment(path: Path, value_tell: int, transfer_syntax: UID,
                          geometry: tuple[int, int, int, int] | None = None) -> None:
    """Encapsulated pixel data must hold a first fragment in the codec the transfer syntax
    names, declaring the header's image size (a look at its first bytes, read from the
    file; decoding happens in the worker)."""
    with open(path, "rb") as fp:
        fp.seek(value_tell)
        head = fp.read(8)  # Basic Offset Table item
        if len(head) < 8 or head[:4] != _ITEM:
            raise Rejected(SOP_CLASS_MISMATCH, "encapsulated pixel data without items")
        fp.seek(int.from_bytes(head[4:], "little"), os.SEEK_CUR)
        head = fp.read(8)  # first fragment item
        size = int.from_bytes(head[4:], "little") if len(head) == 8 else 0
        if len(head) < 8 or head[:4] != _ITEM or size == 0:
            raise Rejected(SOP_CLASS_MISMATCH, "encapsulated pixel data without a fragment")
        start = fp.read(min(size, _HEAD_BYTES))
    expected = _SIGNATURES.get(str(transfer_syntax))
    if transfer_syntax == "1.2.840.10008.1.2.5":  # RLE: header with 1-15 segments
        segments = int.from_bytes(start[:4], "little") if len(start) >= 4 else 0
        if not 1 <= segments <= 15:
            raise Rejected(SOP_CLASS_MISMATCH, "RLE pixel data with a malformed header")
        return
    if expected and not any(start.startswith(sig) for sig in expected):
        raise Rejected(SOP_CLASS_MISMATCH,
                       f"pixel data does not start like {transfer_syntax.name}")
    if geometry is None:
        return
    declared = _codestream_size(start)
    if declared is not None:
        rows, cols, samples, bits = geometry
        height, width, components, precision = declared
        if (height, width) != (rows, cols) or components != samples or precision > bits:
            raise Rejected(SOP_CLASS_MISMATCH,
                           f"{transfer_syntax.name} codestream of {height}x{width}x"
                           f"{components} at {precision} bit, header says {rows}x{cols}x"
                           f"{samples} in {bits} bit")


def _codestream_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, components, precision) from a JPEG 2000 SIZ or a JPEG / JPEG-LS
    frame header at the start of ``data``; None when not found in these bytes."""
    if data.startswith(b"\x00\x00\x00\x0cjP  "):  # JP2: the codestream is in a box
        at = data.find(b"\xff\x4f\xff\x51")
        data = data[at:] if at >= 0 else b""
    if data.startswith(b"\xff\x4f\xff\x51") and len(data) >= 43:
        x, y = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        x0, y0 = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        components = int.from_bytes(data[40:42], "big")
        precision = (data[42] & 0x7F) + 1
        return y - y0, x - x0, components, precision
    if data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF, 0xF7) and pos + 10 <= len(data):
                precision = data[pos + 4]
                height = int.from_bytes(data[pos + 5:pos + 7], "big")
                width = int.from_bytes(data[pos + 7:pos + 9], "big")
                if height == 0:  # defined later by a DNL marker: not checked
                    return None
                return height, width, data[pos + 9], precision
            if marker == 0xDA:  # start of scan before a frame header
                return None
            pos += 2 + length
    return None


def _digest_from(path: Path, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        fp.seek(offset)
        while chunk := fp.read(spool.CHUNK):
            yield chunk


_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def instance_content(path: Path) -> tuple[Identity, str, str, str]:
    """(identity, study UID, transfer syntax, content digest) of a stored or received
    file: the digest covers the pixel data value to the end of the file, or, for an
    object without pixel data, the data set without its file meta. Implicit and explicit
    VR little endian count as one transfer syntax (their pixel bytes are the same)."""
    ds, elem = read_header(path)
    ts = _text(ds.file_meta, "TransferSyntaxUID")
    if ts in _NATIVE_LITTLE_ENDIAN:  # the same pixel bytes: a transcoded re-send is equal
        ts = "native little endian"
    if elem is not None:
        digest = content_digest(ts, _digest_from(path, elem.value_offset))
    else:
        full = pydicom.dcmread(path)
        full.file_meta = pydicom.dataset.FileMetaDataset()
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, full)
        digest = content_digest(ts, [buf.getvalue()])
    return Identity.of(ds), _text(ds, "StudyInstanceUID"), ts, digest


class Ingestor:
    """Validate, spool and record received data sets.

    Parameters
    ----------
    spool_dir
        Root of the spool.
    assembler
        Records the instance and queues complete studies.
    min_free_disk_mb
        Below this much free space, answer 0xA700.
    move
        Rename the received file into the spool (it must be on the same file system);
        when False (or when the rename fails) the bytes are copied.
    digitised_film
        Accept Secondary Capture images of digitised film (Modality MG) as screening
        images (:mod:`mammo_density.study.gate`).
    """

    def __init__(self, spool_dir: Path, assembler: StudyAssembler, *,
                 min_free_disk_mb: float = 0, move: bool = True,
                 digitised_film: bool = False) -> None:
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.assembler = assembler
        self.min_free_disk_mb = float(min_free_disk_mb)
        self.move = move
        self.digitised_film = bool(digitised_film)
        self._locks = [threading.Lock() for _ in range(64)]

    # The handler body: never raises.
    def store(self, incoming: Incoming) -> int:
        """Check, spool and record one data set; return the DICOM status to answer."""
        study_uid = ""
        try:
            inst = self._inspect(incoming)
            study_uid = inst.study_uid
            self._commit(incoming, inst)
        except Rejected as rej:
            self._reject(incoming, study_uid or rej.study_uid, rej.status, str(rej))
            return rej.status
        except Exception as err:
            self._reject(incoming, study_uid, OUT_OF_RESOURCES,
                         f"internal error {type(err).__name__}: {err}")
            return OUT_OF_RESOURCES
        return SUCCESS

    def _inspect(self, incoming: Incoming) -> NewInstance:
        if self.min_free_disk_mb > 0:
            free = spool.free_mb(self.spool_dir)
            if free < self.min_free_disk_mb:
                raise Rejected(OUT_OF_RESOURCES,
                               f"free disk {free:.0f} MiB under the {self.min_free_disk_mb:g}"
                               " MiB watermark")
        try:
            ds, elem = read_header(Path(incoming.path))
            ts = UID(_text(ds.file_meta, "TransferSyntaxUID") or incoming.transfer_syntax
                     or "1.2.840.10008.1.2")
            if ts.is_deflated:  # inflated in memory (rare, and small)
                ds, elem = pydicom.dcmread(incoming.path), None
            sop_class = _text(ds, "SOPClassUID")
            sop_uid = _text(ds, "SOPInstanceUID")
            study_uid = _text(ds, "StudyInstanceUID")
        except Rejected:
            raise
        except Exception as err:
            raise Rejected(CANNOT_UNDERSTAND,
                           f"not a readable DICOM data set ({type(err).__name__})") from None
        try:
            return self._classify(incoming, ds, elem, sop_class, sop_uid, study_uid, ts)
        except Rejected as rej:
            if not rej.study_uid and study_uid and len(study_uid) <= 64 and \
                    _UID_RE.match(study_uid):
                rej.study_uid = study_uid
            raise

    def _classify(self, incoming: Incoming, ds: Dataset, elem: PixelElement | None,
                  sop_class: str, sop_uid: str, study_uid: str, ts: UID) -> NewInstance:
        series_uid = _text(ds, "SeriesInstanceUID")
        if not sop_class or not sop_uid or not study_uid or not series_uid:
            missing = [k for k, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid),
                                      ("StudyInstanceUID", study_uid),
                                      ("SeriesInstanceUID", series_uid)) if not v]
            raise Rejected(MISSING_IDENTIFIERS, "missing " + ", ".join(missing))
        for keyword, value in zip(_UID_KEYWORDS, (study_uid, series_uid, sop_uid, sop_class),
                                  strict=True):
            check_uid(keyword, value)
        if sop_class != incoming.sop_class_uid.strip():
            raise Rejected(SOP_CLASS_MISMATCH,
                           f"data set SOP class {sop_class} differs from the request's "
                           f"{incoming.sop_class_uid}")
        if incoming.sop_instance_uid and sop_uid != incoming.sop_instance_uid.strip():
            raise Rejected(UID_MISMATCH, "SOP Instance UID differs from the request's")
        kind = sop.kind_of(sop_class, digitised_film=self.digitised_film)
        if kind is None:
            raise Rejected(SOP_CLASS_MISMATCH, f"SOP class {sop_class} not accepted")
        slot, note, acquired = None, "", ""
        number = None
        for_presentation = False
        try:
            _check_patient_values(ds)
            if kind in sop.IMAGE_KINDS:
                _check_pixels(ds, Path(incoming.path), ts, elem)
                verdict = gate.screen(ds, digitised_film=self.digitised_film)
                kind = verdict.kind or kind
                slot, note = verdict.slot, verdict.note
                for_presentation = verdict.for_presentation
                if verdict.reason is not None:
                    log.info("instance %s of study %s stored, not used: %s",
                             uid_hash(sop_uid), uid_hash(study_uid), note)
            acquired = acquisition_key(ds)
            number = _int(ds, "InstanceNumber")
            identity = Identity.of(ds)
        except Rejected:
            raise
        except Exception as err:  # malformed values deep in the header
            raise Rejected(CANNOT_UNDERSTAND,
                           f"unreadable header ({type(err).__name__}: {err})"[:300]) from None
        return NewInstance(
            sop_uid=sop_uid, study_uid=study_uid, sop_class_uid=sop_class, path="",
            kind=kind, slot=slot, for_presentation=for_presentation,
            acquired=acquired, instance_number=number, transfer_syntax=str(ts), note=note,
            identity=identity.to_json())

    def _lock_for(self, sop_uid: str) -> threading.Lock:
        return self._locks[hash(sop_uid) % len(self._locks)]

    def _commit(self, incoming: Incoming, inst: NewInstance) -> None:
        final = spool.instance_path(self.spool_dir, inst.study_uid, inst.sop_uid)
        # One SOP Instance UID at a time: the check against a spooled copy, the rename and
        # the record must not interleave with another association sending the same UID.
        with self._lock_for(inst.sop_uid):
            known = self.assembler.db.instance(inst.sop_uid)
            if known is not None:
                self._same_instance(incoming, inst, known)
                self._record(incoming, replace(inst, path=known.path))
                return
            conflict = self.assembler.patient_conflict(inst)
            if conflict:
                self.assembler.hold_conflicting(inst.study_uid, conflict)
                raise Rejected(PATIENT_CONFLICT, conflict + "; instance not stored, study "
                               "held as conflicting")
            if Path(incoming.path).resolve() != final.resolve():
                try:
                    spool.commit_file(Path(incoming.path), final, move=self.move)
                except OSError as err:
                    raise Rejected(OUT_OF_RESOURCES,
                                   f"cannot write the spool: {err.strerror or err}") from None
            self._record(incoming, replace(inst, path=str(final)))

    def _record(self, incoming: Incoming, record: NewInstance) -> None:
        try:
            added = self.assembler.add(record, calling_aet=incoming.calling_aet,
                                       peer_host=incoming.peer_host)
        except Exception as err:
            raise Rejected(OUT_OF_RESOURCES,
                           f"cannot record the instance: {type(err).__name__}") from None
        if not added:
            log.info("instance %s of study %s received again, unchanged (idempotent)",
                     uid_hash(record.sop_uid), uid_hash(record.study_uid))
            return
        for callback in list(_spooled_callbacks):  # e.g. prepare the image on arrival
            try:
                callback(record)
            except Exception:
                log.exception("on-spooled callback failed for instance %s",
                              uid_hash(record.sop_uid))

    def _same_instance(self, incoming: Incoming, inst: NewInstance, known) -> None:
        """Raise 0xC003 unless the received data set is the spooled one sent again."""
        if known.study_uid != inst.study_uid:
            raise Rejected(DUPLICATE_CONFLICT, "SOP Instance UID already received in another "
                           f"study ({uid_hash(known.study_uid)}); first copy kept")
        try:
            old_identity, _, old_ts, old_digest = instance_content(Path(known.path))
        except Exception as err:
            raise Rejected(DUPLICATE_CONFLICT, "SOP Instance UID already received; its "
                           f"spooled copy cannot be compared ({type(err).__name__})") from None
        new_identity = Identity.from_json(inst.identity) or old_identity
        differ = differences(old_identity, new_identity)
        if differ:
            raise Rejected(DUPLICATE_CONFLICT, "SOP Instance UID already received for another "
                           f"patient ({', '.join(differ)} differ); first copy kept")
        new_ts = "native little endian" if inst.transfer_syntax in _NATIVE_LITTLE_ENDIAN \
            else inst.transfer_syntax
        if old_ts != new_ts:
            raise Rejected(DUPLICATE_CONFLICT, "SOP Instance UID already received in transfer "
                           f"syntax {old_ts}, now {inst.transfer_syntax}: cannot verify it is "
                           "the same image; first copy kept")
        _, _, _, new_digest = instance_content(Path(incoming.path))
        if new_digest != old_digest:
            raise Rejected(DUPLICATE_CONFLICT, "SOP Instance UID already received with other "
                           "pixel data; first copy kept")

    def _reject(self, incoming: Incoming, study_uid: str, status: int, reason: str) -> None:
        log.warning("C-STORE from %s@%s refused 0x%04X: %s (study %s, instance %s)",
                    incoming.calling_aet or "?", incoming.peer_host or "?", status, reason,
                    uid_hash(study_uid), uid_hash(incoming.sop_instance_uid))
        # The database itself may be the problem: then the log line stands alone.
        with contextlib.suppress(Exception):
            self.assembler.db.record_error(
                study_uid, f"C-STORE 0x{status:04X} instance {uid_hash(incoming.sop_instance_uid)}"
                f" from {incoming.calling_aet or '?'}: {reason}")

    def reconcile(self) -> int:
        """Record spooled files the database does not know (a crash between the rename
        and the commit); return how many were added."""
        known = self.assembler.db.known_paths()
        added = 0
        for path in spool.spooled_files(self.spool_dir):
            if str(path) in known:
                continue
            try:
                meta = pydicom.dcmread(path, stop_before_pixels=True)
                sop_class = _text(meta, "SOPClassUID")
                sop_uid = _text(meta, "SOPInstanceUID")
                ts = _text(meta.file_meta, "TransferSyntaxUID")
            except Exception:
                log.warning("spool file %s unreadable; left alone", path.name[:8])
                continue
            status = self.store(Incoming(path=path, sop_class_uid=sop_class,
                                         sop_instance_uid=sop_uid, transfer_syntax=ts))
            added += status == SUCCESS
        return added


__all__ = [
    "CANNOT_UNDERSTAND",
    "DUPLICATE_CONFLICT",
    "INVALID_UID",
    "INVALID_VALUE",
    "MISSING_IDENTIFIERS",
    "OUT_OF_RESOURCES",
    "PATIENT_CONFLICT",
    "SOP_CLASS_MISMATCH",
    "SUCCESS",
    "UID_MISMATCH",
    "Incoming",
    "Ingestor",
    "Rejected",
]
