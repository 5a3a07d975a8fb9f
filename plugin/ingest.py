"""Check one received data set, commit it to the spool, record it: the C-STORE handler's body.

:meth:`Ingestor.store` takes the received file (preamble, file meta, data set as sent,
pixel data never decoded) and returns the DICOM status to answer. Every failure is one
log line with the reason and hashed UIDs only, and one row in the state's error log.

Statuses (PS3.4 Annex B, Storage Service Class):

- ``0x0000`` Success: the file is durable in the spool and recorded.
- ``0xA700`` Refused, out of resources: free disk under the watermark, or the spool or
  state database could not be written.
- ``0xA900`` Data set does not match SOP class: SOP Class UID differs from the request,
  no pixel data in an image, zero or absurd Rows/Columns, pixel data shorter than the
  image it declares, encapsulated pixel data without a fragment or whose first fragment is
  not in the codec of the transfer syntax (its first bytes are checked; full decoding is
  the worker's job, which marks the study failed with the reason if it cannot decode).
- ``0xC000`` Cannot understand: not a DICOM data set, truncated.
- ``0xC001`` Cannot understand: Study/SOP Instance UID or SOP Class UID missing.
- ``0xC002`` Cannot understand: the data set's SOP Instance UID differs from the request.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from mammo_density.logsetup import uid_hash
from mammo_density.plugin import spool
from mammo_density.plugin.assembly import NewInstance, StudyAssembler
from mammo_density.study import gate, sop
from mammo_density.study.selection import acquisition_key

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
MISSING_IDENTIFIERS = 0xC001
UID_MISMATCH = 0xC002

MAX_DIMENSION = 20000
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float


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


def _check_pixels(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    """Pixel module sanity without decoding: dimensions, and enough bytes for them."""
    elem = next((ds.get_item(t) for t in _PIXEL_TAGS if t in ds), None)
    if elem is None:
        raise Rejected(SOP_CLASS_MISMATCH, "image without pixel data")
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
    length = getattr(elem, "length", None)
    value_tell = getattr(elem, "value_tell", None)
    if length is None:  # already a DataElement (small, not deferred)
        value = elem.value
        length = len(value) if value is not None else 0
        value_tell = None
    if transfer_syntax.is_compressed:
        if length == 0:
            raise Rejected(SOP_CLASS_MISMATCH, "empty encapsulated pixel data")
        if value_tell is not None and transfer_syntax.is_little_endian:
            _check_first_fragment(path, value_tell, transfer_syntax)
        return
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if length != 0xFFFFFFFF and length < expected:
        raise Rejected(SOP_CLASS_MISMATCH,
                       f"pixel data {length} bytes, {rows}x{cols}x{bits} bit needs {expected}")
    if value_tell is not None and not transfer_syntax.is_deflated:
        size = os.path.getsize(path)
        if value_tell + length > size:
            raise Rejected(CANNOT_UNDERSTAND,
                           f"truncated: pixel data ends at {value_tell + length}, file {size}")


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


def _check_first_fragment(path: Path, value_tell: int, transfer_syntax: UID) -> None:
    """Encapsulated pixel data must hold a first fragment in the codec the transfer syntax
    names (a cheap look at its first bytes; decoding happens in the worker)."""
    with open(path, "rb") as fp:
        fp.seek(value_tell)
        head = fp.read(8)  # Basic Offset Table item
        if len(head) < 8 or head[:4] != _ITEM:
            raise Rejected(SOP_CLASS_MISMATCH, "encapsulated pixel data without items")
        fp.seek(int.from_bytes(head[4:], "little"), os.SEEK_CUR)
        head = fp.read(8)  # first fragment item
        if len(head) < 8 or head[:4] != _ITEM or int.from_bytes(head[4:], "little") == 0:
            raise Rejected(SOP_CLASS_MISMATCH, "encapsulated pixel data without a fragment")
        start = fp.read(12)
    expected = _SIGNATURES.get(str(transfer_syntax))
    if transfer_syntax == "1.2.840.10008.1.2.5":  # RLE: header with 1-15 segments
        segments = int.from_bytes(start[:4], "little") if len(start) >= 4 else 0
        if not 1 <= segments <= 15:
            raise Rejected(SOP_CLASS_MISMATCH, "RLE pixel data with a malformed header")
    elif expected and not any(start.startswith(sig) for sig in expected):
        raise Rejected(SOP_CLASS_MISMATCH,
                       f"pixel data does not start like {transfer_syntax.name}")


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
            ds = pydicom.dcmread(incoming.path, defer_size=4096)
            sop_class = _text(ds, "SOPClassUID")
            sop_uid = _text(ds, "SOPInstanceUID")
            study_uid = _text(ds, "StudyInstanceUID")
            ts = UID(_text(ds.file_meta, "TransferSyntaxUID") or incoming.transfer_syntax
                     or "1.2.840.10008.1.2")
        except Rejected:
            raise
        except Exception as err:
            raise Rejected(CANNOT_UNDERSTAND,
                           f"not a readable DICOM data set ({type(err).__name__})") from None
        try:
            return self._classify(incoming, ds, sop_class, sop_uid, study_uid, ts)
        except Rejected as rej:
            rej.study_uid = study_uid
            raise

    def _classify(self, incoming: Incoming, ds: Dataset, sop_class: str, sop_uid: str,
                  study_uid: str, ts: UID) -> NewInstance:
        if not sop_class or not sop_uid or not study_uid:
            missing = [k for k, v in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid),
                                      ("StudyInstanceUID", study_uid)) if not v]
            raise Rejected(MISSING_IDENTIFIERS, "missing " + ", ".join(missing))
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
            if kind in sop.IMAGE_KINDS:
                _check_pixels(ds, incoming.path, ts)
                verdict = gate.screen(ds, digitised_film=self.digitised_film)
                kind = verdict.kind or kind
                slot, note = verdict.slot, verdict.note
                for_presentation = verdict.for_presentation
                if verdict.reason is not None:
                    log.info("instance %s of study %s stored, not used: %s",
                             uid_hash(sop_uid), uid_hash(study_uid), note)
            acquired = acquisition_key(ds)
            number = _int(ds, "InstanceNumber")
        except Rejected:
            raise
        except Exception as err:  # malformed values deep in the header
            raise Rejected(CANNOT_UNDERSTAND,
                           f"unreadable header ({type(err).__name__}: {err})"[:300]) from None
        return NewInstance(
            sop_uid=sop_uid, study_uid=study_uid, sop_class_uid=sop_class, path="",
            kind=kind, slot=slot, for_presentation=for_presentation,
            acquired=acquired, instance_number=number, transfer_syntax=str(ts), note=note)

    def _commit(self, incoming: Incoming, inst: NewInstance) -> None:
        final = spool.instance_path(self.spool_dir, inst.study_uid, inst.sop_uid)
        if Path(incoming.path).resolve() != final.resolve():
            try:
                spool.commit_file(Path(incoming.path), final, move=self.move)
            except OSError as err:
                raise Rejected(OUT_OF_RESOURCES,
                               f"cannot write the spool: {err.strerror or err}") from None
        record = replace(inst, path=str(final))
        try:
            added = self.assembler.add(record, calling_aet=incoming.calling_aet,
                                       peer_host=incoming.peer_host)
        except Exception as err:
            raise Rejected(OUT_OF_RESOURCES,
                           f"cannot record the instance: {type(err).__name__}") from None
        if not added:
            log.info("instance %s of study %s received again (idempotent)",
                     uid_hash(inst.sop_uid), uid_hash(inst.study_uid))

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
    "MISSING_IDENTIFIERS",
    "OUT_OF_RESOURCES",
    "SOP_CLASS_MISMATCH",
    "SUCCESS",
    "UID_MISMATCH",
    "Incoming",
    "Ingestor",
    "Rejected",
]
