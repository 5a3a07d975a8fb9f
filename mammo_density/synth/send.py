"""Push synthetic studies to a DICOM node over C-STORE (a load generator for the listener)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from mammo_density.logsetup import uid_hash
from mammo_density.synth.generate import StudyRecord

log = logging.getLogger(__name__)


@dataclass
class SendResult:
    """Outcome of sending one study."""

    exam_id: str
    study_instance_uid: str
    sent: int = 0
    failed: int = 0
    statuses: list[int] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.failed == 0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with a clear error for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _contexts(paths: list[Path]) -> list[tuple[str, str]]:
    pairs = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        pair = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def send_study(record: StudyRecord, host: str, port: int, called_aet: str,
               calling_aet: str = "MDSYNTH", timeout: float = 30.0) -> SendResult:
    """C-STORE every image of ``record`` over one association; never raises for network errors."""
    result = SendResult(record.exam_id, record.study_instance_uid)
    started = time.monotonic()
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    paths = record.paths
    for sop_class, ts in _contexts(paths):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        result.error = "association rejected or aborted"
        result.failed = len(paths)
        result.seconds = time.monotonic() - started
        return result
    try:
        for path in paths:
            try:
                status = assoc.send_c_store(path)
            except (ValueError, RuntimeError) as err:  # no accepted context, aborted
                result.failed += 1
                result.statuses.append(-1)
                result.error = str(err)
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            result.statuses.append(code)
            # 0x0000 success; 0xB000, 0xB006, 0xB007 are warnings (stored)
            if code == 0 or code in (0xB000, 0xB006, 0xB007):
                result.sent += 1
            else:
                result.failed += 1
    finally:
        if assoc.is_established:
            assoc.release()
    result.seconds = time.monotonic() - started
    log.info("sent study %s: %d stored, %d failed", uid_hash(record.study_instance_uid),
             result.sent, result.failed)
    return result


def send_studies(records: Iterable[StudyRecord], address: str, called_aet: str,
                 calling_aet: str = "MDSYNTH", timeout: float = 30.0) -> list[SendResult]:
    """Send each study in turn to ``HOST:PORT``; one association per study."""
    host, port = parse_address(address)
    return [send_study(rec, host, port, called_aet, calling_aet, timeout) for rec in records]
