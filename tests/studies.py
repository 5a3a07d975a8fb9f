"""Studies for the pipeline tests: synthetic studies on disk, received like the listener does.

``receive`` puts files through the real listener-side code (plugin/ingest.py ``Ingestor`` +
plugin/assembly.py ``StudyAssembler`` + plugin/state.py ``StateDB``), so a complete study
is spooled, recorded as queued and handed to ``submit`` exactly as ``serve`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom

from mammo_density.config import Settings
from mammo_density.job import StudyJob


def synth_studies(root: Path, *, studies: int = 1, seed: int = 11,
                  transfer_syntax: str = "explicit", extras: tuple[str, ...] = ()) -> list:
    """``mammo_density.synth.generate`` at the small size; returns its StudyRecords."""
    from mammo_density.synth import generate

    return generate(root, studies=studies, seed=seed, size="small",
                    transfer_syntax=transfer_syntax, extras=extras, manifest=True)


def study_files(record) -> list[Path]:
    return sorted(Path(im.path) for im in record.images)


def receive(settings: Settings, files: list[Path], submit: Callable[[StudyJob], object],
            *, calling_aet: str = "TESTSCU") -> list[int]:
    """Store ``files`` through the listener's ingest path; returns the DICOM statuses."""
    from mammo_density.plugin.assembly import StudyAssembler
    from mammo_density.plugin.ingest import Incoming, Ingestor
    from mammo_density.plugin.state import StateDB

    db = StateDB(settings.state_db)
    assembler = StudyAssembler(db, submit, stable_seconds=settings.stable_seconds)
    ingestor = Ingestor(settings.spool_dir, assembler, move=False)
    statuses = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        statuses.append(ingestor.store(Incoming(
            path=Path(path), sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            calling_aet=calling_aet, peer_host="127.0.0.1")))
    db.close()
    return statuses
