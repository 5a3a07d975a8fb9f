"""``mammo-density classify PATH...``: assess studies from files, offline.

Files and folders (searched recursively) of one or more studies are grouped by
StudyInstanceUID; each image goes through the listener's rules: the screening-image gate
(mammo_density.study.gate) and image selection (mammo_density.study.selection: For
Presentation preferred over For Processing; of retakes the latest acquisition wins).
Every other file of a study (extra views, dose reports) goes with it for the dose
figures. Unreadable files are reported on stderr and skipped; every other study still
gets its result.

Output: a readable table, or with ``--json`` one StudyResult JSON object per line; images
not used are listed with their reason under the table, and in the JSON's
``unused_images``. ``--sr-out DIR`` also writes each study's density SR there.

Exit status: 0 when at least one study was assessed (a density class given; studies not
assessable are still listed, with the reason); 1 when nothing was assessable (no DICOM
study found, or every study not assessable or failed); 2 when the model cannot be
loaded or the command line is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from mammo_density.config import Settings
from mammo_density.job import JobImage, StudyJob
from mammo_density.study import gate, sop
from mammo_density.study.selection import acquisition_key, choose
from mammo_density.study.slots import SLOTS
from mammo_density.study.unused import describe, from_note, unused_image

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="assess studies from DICOM files or folders, offline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or folders")
    p.add_argument("--json", action="store_true",
                   help="one StudyResult JSON object per study per line")
    p.add_argument("--sr-out", metavar="DIR", type=Path,
                   help="write each study's density SR (DICOM) into DIR")
    p.add_argument("--model-dir", metavar="DIR", help="model registry entry to use "
                   "(default: settings.model_dir, else the bundled demo model)")
    p.add_argument("--digitised-film", action="store_true",
                   help="assess digitised film (Secondary Capture, Modality MG) too; "
                   "default: the digitised_film setting (off)")
    p.set_defaults(func=run)


@dataclass
class _Candidate:
    path: str
    sop_uid: str
    sop_class: str
    kind: str | None
    slot: str | None
    for_presentation: bool
    acquired: str
    instance_number: int | None
    seq: int
    note: str


@dataclass
class Collected:
    """Studies found under the given paths, and the files that could not be used."""

    jobs: list[StudyJob] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    files: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> path


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_files(paths: Iterable[str | Path]) -> Iterable[tuple[Path, bool]]:
    """(file, named explicitly) for every file under ``paths``; folders recursively,
    keeping only files that look like DICOM (``.dcm`` or the ``DICM`` preamble)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if _looks_like_dicom(child):
                    yield child, False
        else:
            yield path, True


def collect_jobs(paths: Iterable[str | Path], *, digitised_film: bool = False) -> Collected:
    """Group the DICOM files under ``paths`` into one :class:`StudyJob` per study, with the
    listener's rules (gate, selection); ``digitised_film`` as the setting of that name."""
    out = Collected()
    studies: dict[str, list[_Candidate]] = {}
    for order, (path, _explicit) in enumerate(iter_files(paths)):
        if not path.exists():
            out.unreadable.append((str(path), "no such file"))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
        except Exception as err:
            out.unreadable.append((str(path), f"not a readable DICOM file "
                                              f"({type(err).__name__})"))
            continue
        verdict = gate.screen(ds, digitised_film=digitised_film)
        number = ds.get("InstanceNumber")
        studies.setdefault(study_uid, []).append(_Candidate(
            path=str(path.resolve()), sop_uid=sop_uid, sop_class=sop_class,
            kind=verdict.kind, slot=verdict.slot, for_presentation=verdict.for_presentation,
            acquired=acquisition_key(ds),
            instance_number=int(number) if number not in (None, "") else None, seq=order,
            note=verdict.note))
    for study_uid, cands in studies.items():
        seen: set[str] = set()
        unique = []
        for c in cands:  # the same SOP Instance twice (copies): first one counts
            if c.sop_uid not in seen:
                seen.add(c.sop_uid)
                unique.append(c)
                out.files.setdefault(c.sop_uid, c.path)
        choice = choose(c for c in unique if c.kind == sop.KIND_IMAGE)
        chosen = choice.images
        used = {c.sop_uid for c in chosen.values()}
        passed = {c.sop_uid: reason for c, reason in choice.passed_over}
        unused = [unused_image(c.sop_uid, passed[c.sop_uid], slot=c.slot)
                  if c.sop_uid in passed else from_note(c.sop_uid, c.note)
                  for c in unique if c.kind in sop.IMAGE_KINDS and c.sop_uid not in used]
        images = [JobImage(slot=s, sop_instance_uid=chosen[s].sop_uid,
                           sop_class_uid=chosen[s].sop_class) for s in SLOTS if s in chosen]
        others = [c.sop_uid for c in unique if c.sop_uid not in used
                  and not (sop.is_structured_report(c.sop_class)
                           and c.sop_class not in sop.RDSR_CLASSES)]
        missing = choice.missing
        out.jobs.append(StudyJob(study_instance_uid=study_uid, images=images,
                                 other_sop_uids=others, partial=bool(missing),
                                 missing_views=missing, unused_images=unused,
                                 source="files"))
    return out


def _fmt_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def format_table(results: Sequence) -> str:
    """A readable table: one line per study."""
    header = ["study", "exam", "dense", "P(dense)", "R", "L", "views", "ms", "notes"]
    rows = []
    for r in results:
        exam = r.exam
        notes = []
        if r.partial:
            notes.append("partial, missing " + ",".join(r.missing_views))
        if r.unused_images:
            notes.append(f"{len(r.unused_images)} not used: {describe(r.unused_images)}")
        if r.implant_present:
            notes.append("implants")
        if not r.assessable:
            reason = next((w.split(":", 1)[1].strip() for w in r.warnings
                           if w.startswith("not assessable:")), "")
            notes.append("NOT ASSESSABLE" + (f" ({reason})" if reason else ""))
        elif r.low_confidence:
            notes.append("LOW CONFIDENCE (" + "; ".join(r.low_confidence_reasons) + ")")
        if r.sr is not None:
            notes.append("SR written")
        rows.append([
            r.study_instance_uid,
            exam.category if exam else "-",
            ("yes" if exam.dense else "no") if exam else "-",
            f"{exam.p_dense:.2f} ({exam.dense_source})" if exam else "-",
            r.breasts["R"].category if "R" in r.breasts else "-",
            r.breasts["L"].category if "L" in r.breasts else "-",
            str(len(r.views)),
            f"{r.timings_ms.get('total', 0.0):.0f}",
            "; ".join(notes),
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [_fmt_row(header, widths)] + [_fmt_row(row, widths) for row in rows]
    unused = [(r.study_instance_uid, u) for r in results for u in r.unused_images]
    if unused:
        lines += ["", "images not used:"]
        lines += [f"  {study}  image {u.image}  {u.slot or '-'}  {u.reason.value}: {u.text}"
                  for study, u in unused]
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _run(args, settings)
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """The composition root of ``classify``: the named files are the image source, the
    SR sink is ``--sr-out`` (or none); no state database, no hooks."""
    from mammo_density.spool_layout import FileImages
    from mammo_density.worker.models import ModelError
    from mammo_density.worker.pipeline import Pipeline
    from mammo_density.worker.sinks import FolderSRs

    collected = collect_jobs(args.paths, digitised_film=settings.digitised_film
                             or getattr(args, "digitised_film", False))
    for path, reason in collected.unreadable:
        print(f"mammo-density classify: skipped {path}: {reason}", file=sys.stderr)
    if not collected.jobs:
        print("mammo-density classify: no DICOM studies found", file=sys.stderr)
        return 1
    # --sr-out gets the SRs only (the summary image is for the PACS's viewers)
    pipeline = Pipeline(settings.model_copy(update={"sr_summary_image": False}),
                        images=FileImages(collected.files),
                        outbox=FolderSRs(args.sr_out) if args.sr_out else None)
    try:
        pipeline.models  # noqa: B018 - load once, fail early with the reason
    except ModelError as err:
        print(f"mammo-density classify: {err}", file=sys.stderr)
        return 2
    results = []
    failures = 0
    for job in collected.jobs:
        t0 = time.perf_counter()
        try:
            result = pipeline.run(job)
        except Exception as err:
            log.exception("study assessment failed")
            print(f"mammo-density classify: study {job.study_instance_uid}: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)
            failures += 1
            continue
        for warning in result.warnings:
            if warning.startswith(("SR not written", "assessment failed")):
                print(f"mammo-density classify: study {job.study_instance_uid}: {warning}",
                      file=sys.stderr)
        result.timings_ms.setdefault("total", (time.perf_counter() - t0) * 1000.0)
        if args.json:
            print(result.model_dump_json(), flush=True)
        results.append(result)
    if not args.json:
        print(format_table(results))
    if not any(r.assessable and r.exam is not None for r in results):
        print(f"mammo-density classify: nothing assessable ({len(results)} studies read, "
              f"{failures} failed)", file=sys.stderr)
        return 1
    return 0


__all__ = ["Collected", "add_parser", "collect_jobs", "format_table", "iter_files", "run"]
