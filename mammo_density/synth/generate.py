"""Synthetic 4-view screening studies with known density, written as DICOM + manifest.csv.

Determinism: every study ``i`` of a run draws from ``numpy.random.default_rng([seed, i])``
and its UIDs come from :func:`pydicom.uid.generate_uid` with entropy ``(seed, i, role)``, so
the same seed gives the same pixels, headers and UIDs (byte-identical files), whatever the
number of studies or worker processes. The flip side, by design: two runs with the same seed
produce colliding UIDs; use a different ``--seed`` for every data set that must coexist
in one PACS.

Ground truth: each woman gets a class from the class mix; with probability
``breast_differ`` one breast is one class less dense (the exam class, the denser breast,
keeps the mix). Reader labels add noise: with probability ``label_noise`` a breast's label
moves one class up or down. The manifest's ``density`` is the reader label, ``true_density``
the class before noise.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from mammo_density.study.slots import SLOTS, split_slot
from mammo_density.synth.dicom import (
    TRANSFER_SYNTAXES,
    ImageSpec,
    build_dataset,
    encode,
    stored_values,
)
from mammo_density.synth.dose import breast_thickness, exposure
from mammo_density.synth.phantom import (
    chest_wall_on_right,
    mirrored,
    patient_orientation,
    render_view,
)
from mammo_density.synth.profiles import PROFILES, VENDORS

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("A", "B", "C", "D")
#: BI-RADS clinical mix of the method's data (docs/method.md: 264/611/888/199 of 1,962
#: exams, rounded)
DEFAULT_CLASS_MIX: tuple[float, float, float, float] = (0.13, 0.31, 0.45, 0.10)
#: glandular share of the breast drawn for each class (uniform within the range)
GLANDULAR_RANGE: dict[str, tuple[float, float]] = {
    "A": (0.04, 0.20),
    "B": (0.24, 0.45),
    "C": (0.50, 0.70),
    "D": (0.75, 0.93),
}
MEAN_AGE: dict[str, float] = {"A": 68.0, "B": 64.0, "C": 58.0, "D": 53.0}
EXTRAS: tuple[str, ...] = ("retake", "xccl", "spot", "missing", "for-processing")
SIZES: dict[str, int] = {"small": 8, "full": 1}
STANDARD_VIEWS: tuple[tuple[str, str], ...] = tuple(split_slot(s) for s in SLOTS)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "exam_id", "patient_id", "study_instance_uid", "sop_instance_uid", "laterality", "view",
    "path", "density", "true_density", "split", "vendor", "extra",
)


@dataclass
class ImageRecord:
    """One written image."""

    path: Path
    laterality: str
    view: str
    sop_instance_uid: str
    sop_class_uid: str
    density: str  # reader label of this breast
    true_density: str  # class before label noise
    extra: str = ""
    modifiers: tuple[str, ...] = ()
    glandular_fraction: float = 0.0

    @property
    def slot(self) -> str:
        return f"{self.laterality}-{self.view}"


@dataclass
class StudyRecord:
    """One written study and its ground truth."""

    exam_id: str
    patient_id: str
    study_instance_uid: str
    vendor: str
    folder: Path
    breast_density: dict[str, str]  # true class per breast, {"R": .., "L": ..}
    reader_density: dict[str, str]  # reader label per breast (after label noise)
    images: list[ImageRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # slots left out ("L-MLO")

    @property
    def exam_density(self) -> str:
        """True exam class: the denser breast."""
        return max(self.breast_density.values())

    @property
    def reader_exam_density(self) -> str:
        return max(self.reader_density.values())

    @property
    def paths(self) -> list[Path]:
        return [im.path for im in self.images]

    def standard_images(self) -> list[ImageRecord]:
        """The screening images a reader would use (no extras, latest retake)."""
        return [im for im in self.images if not im.extra]


@dataclass(frozen=True)
class SynthOptions:
    """Everything that shapes a run (picklable, for worker processes)."""

    seed: int = 0
    divisor: int = 8
    vendor: str = "hologic"
    transfer_syntax: str = "explicit"
    extras: tuple[str, ...] = ()
    extras_rate: float = 1.0
    for_processing: bool = False
    codes_only: bool = False
    legacy_codes: bool = False
    class_mix: tuple[float, float, float, float] = DEFAULT_CLASS_MIX
    label_noise: float = 0.03
    breast_differ: float = 0.10


def size_divisor(size: str | int) -> int:
    """``small`` (1/8), ``full`` (1) or an integer divisor."""
    if isinstance(size, int):
        divisor = size
    elif str(size) in SIZES:
        divisor = SIZES[str(size)]
    else:
        try:
            divisor = int(size)
        except ValueError:
            raise ValueError(
                f"size must be small, full or an integer divisor, not {size!r}") from None
    if not 1 <= divisor <= 32:
        raise ValueError(f"size divisor must be 1-32, not {divisor}")
    return divisor


def _uid(seed: int, index: int, role: str) -> str:
    return str(generate_uid(entropy_srcs=["mammo-density-synth", str(seed), str(index), role]))


def _shift(cls: str, step: int) -> str:
    return CLASSES[int(np.clip(CLASSES.index(cls) + step, 0, 3))]


def draw_ground_truth(rng: np.random.Generator, opts: SynthOptions
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """(true class per breast, reader label per breast) of one woman."""
    mix = np.asarray(opts.class_mix, float)
    exam = CLASSES[int(rng.choice(4, p=mix / mix.sum()))]
    breasts = {"R": exam, "L": exam}
    if rng.random() < opts.breast_differ and exam != "A":
        breasts[str(rng.choice(["R", "L"]))] = _shift(exam, -1)
    reader = {}
    for side, cls in breasts.items():
        if rng.random() < opts.label_noise:
            step = int(rng.choice([-1, 1]))
            if _shift(cls, step) == cls:
                step = -step
            reader[side] = _shift(cls, step)
        else:
            reader[side] = cls
    return breasts, reader


def _time(base: dt.datetime, seconds: float) -> str:
    return (base + dt.timedelta(seconds=seconds)).strftime("%H%M%S")


def generate_study(index: int, outdir: Path, opts: SynthOptions) -> StudyRecord:
    """Draw and write study number ``index`` of the run (deterministic in seed and index)."""
    rng = np.random.default_rng([opts.seed, index])
    vendor = opts.vendor if opts.vendor != "mixed" else VENDORS[int(rng.integers(len(VENDORS)))]
    profile = PROFILES[vendor]
    ts = TRANSFER_SYNTAXES[opts.transfer_syntax]
    shape = profile.shape(opts.divisor)
    spacing = profile.spacing_mm * profile.rows / shape[0]
    breasts, reader = draw_ground_truth(rng, opts)

    exam_id = f"SYN{opts.seed}-{index + 1:05d}"
    patient_id = f"SYN{opts.seed}P{index + 1:05d}"
    start = dt.datetime(2025, 1, 6, 8, 0) + dt.timedelta(
        days=int(rng.integers(0, 330)), minutes=int(rng.integers(0, 9 * 60)))
    exam_cls = max(breasts.values())
    age = int(np.clip(round(rng.normal(MEAN_AGE[exam_cls], 6.5)), 40, 84))
    birth = start.date() - dt.timedelta(days=int(age * 365.25 + rng.integers(1, 360)))
    patient = {"name": f"SYNTH^P{opts.seed}-{index + 1:05d}", "id": patient_id,
               "birth_date": birth.strftime("%Y%m%d"), "age": f"{age:03d}Y"}
    study = {"date": start.strftime("%Y%m%d"), "time": start.strftime("%H%M%S"),
             "accession": f"A{opts.seed % 100000:05d}{index + 1:06d}"[:16],
             "id": f"{index + 1:05d}"}
    study_uid = _uid(opts.seed, index, "study")
    series_uids = {1: _uid(opts.seed, index, "series1"), 2: _uid(opts.seed, index, "series2")}

    # per-breast anatomy: glandular share and thickness shared by the breast's views
    fraction = {s: float(rng.uniform(*GLANDULAR_RANGE[c])) for s, c in breasts.items()}
    thickness = {s: breast_thickness(rng, c) for s, c in breasts.items()}
    gain = float(rng.uniform(0.6, 1.0))

    extras = [e for e in opts.extras if rng.random() < opts.extras_rate]
    plan: list[tuple[str, str, tuple[str, ...], str, bool]] = []  # lat, view, mods, extra, fp
    standard = list(STANDARD_VIEWS)
    missing: list[str] = []
    retaken = STANDARD_VIEWS[int(rng.integers(4))] if "retake" in extras else None
    if "missing" in extras:
        choices = [v for v in standard if v != retaken]
        gone = choices[int(rng.integers(len(choices)))]
        standard.remove(gone)
        missing.append(f"{gone[0]}-{gone[1]}")
    for lat, view in standard:
        if (lat, view) == retaken:
            plan.append((lat, view, (), "retake-superseded", opts.for_processing))
        else:
            plan.append((lat, view, (), "", opts.for_processing))
    if retaken:
        plan.append((retaken[0], retaken[1], (), "", opts.for_processing))
    if "xccl" in extras:
        plan.append((str(rng.choice(["R", "L"])), "XCCL", (), "xccl", opts.for_processing))
    if "spot" in extras:
        plan.append((str(rng.choice(["R", "L"])), "CC", ("spot",), "spot", opts.for_processing))
    if "for-processing" in extras and not opts.for_processing:
        plan += [(lat, view, (), "for-processing", True) for lat, view in standard]

    folder = outdir / exam_id
    folder.mkdir(parents=True, exist_ok=True)
    start_s = float(rng.uniform(60, 240))
    record = StudyRecord(exam_id=exam_id, patient_id=patient_id, study_instance_uid=study_uid,
                         vendor=vendor, folder=folder, breast_density=breasts,
                         reader_density=reader, missing=missing)
    drawn: dict[tuple[str, str, tuple[str, ...]], tuple] = {}
    for n, (lat, view, mods, extra, fp) in enumerate(plan, start=1):
        key = (lat, view, mods)
        if fp and key in drawn:
            rendered, expo, t = drawn[key]  # the twin of a presentation image: same exposure
        else:
            g = float(np.clip(fraction[lat] + rng.normal(0, 0.015), 0.01, 0.97))
            rendered = render_view(rng, shape, spacing, view, breasts[lat], g,
                                   spot=bool(mods))
            if not chest_wall_on_right(patient_orientation(lat, view)[0]):
                rendered = mirrored(rendered)  # pixels must agree with PatientOrientation
            thick = thickness[lat] + (rng.uniform(2, 8) if view == "MLO" else 0.0)
            if mods:
                thick *= 0.8
            expo = exposure(rng, profile, thick, fraction[lat])
            t = start_s + 45.0 * n + rng.uniform(0, 10)
            drawn[key] = (rendered, expo, t)
        pixels, photometric = stored_values(rendered.image, profile, fp, gain)
        series = 2 if (fp and not opts.for_processing) else 1
        spec = ImageSpec(
            laterality=lat, view=view, modifiers=mods, for_processing=fp,
            instance_number=n, series_number=series,
            acquisition_time=_time(start, t + (2.0 if fp else 0.0)),
            codes_only=opts.codes_only, legacy_codes=opts.legacy_codes, extra=extra,
            uids={"study": study_uid, "series": series_uids[series],
                  "frame": _uid(opts.seed, index, f"frame-{lat}"),
                  "sop": _uid(opts.seed, index, f"image{n}")})
        ds = build_dataset(spec, pixels, photometric, profile, spacing, expo, patient, study)
        encode(ds, pixels, ts)
        name = f"{n:02d}_{lat}{view}" + (f"_{extra}" if extra else "") + ".dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        record.images.append(ImageRecord(
            path=path, laterality=lat, view=view, sop_instance_uid=spec.uids["sop"],
            sop_class_uid=str(ds.SOPClassUID), density=reader[lat],
            true_density=breasts[lat], extra=extra, modifiers=mods,
            glandular_fraction=rendered.glandular_fraction))
    return record


def _validate(opts: SynthOptions) -> None:
    if opts.vendor not in (*VENDORS, "mixed"):
        raise ValueError(f"vendor must be one of {', '.join(VENDORS)}, mixed; not {opts.vendor!r}")
    if opts.transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax must be one of {', '.join(TRANSFER_SYNTAXES)}")
    unknown = set(opts.extras) - set(EXTRAS)
    if unknown:
        raise ValueError(f"unknown extras {sorted(unknown)}; known: {', '.join(EXTRAS)}")
    mix = np.asarray(opts.class_mix, float)
    if mix.shape != (4,) or (mix < 0).any() or mix.sum() <= 0:
        raise ValueError("class mix needs four non-negative shares A,B,C,D")
    for name in ("label_noise", "breast_differ", "extras_rate"):
        if not 0.0 <= getattr(opts, name) <= 1.0:
            raise ValueError(f"{name} must be within 0-1")


def write_manifest(records: Iterable[StudyRecord], path: Path) -> None:
    """``manifest.csv``: one row per image, paths relative to the manifest's folder."""
    base = path.parent.resolve()
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for rec in records:
            for im in rec.images:
                writer.writerow([
                    rec.exam_id, rec.patient_id, rec.study_instance_uid, im.sop_instance_uid,
                    im.laterality, im.view, im.path.resolve().relative_to(base).as_posix(),
                    im.density, im.true_density, "", rec.vendor, im.extra])


def _study_job(args: tuple[int, str, SynthOptions]) -> StudyRecord:
    index, outdir, opts = args
    return generate_study(index, Path(outdir), opts)


def generate(outdir: str | os.PathLike, studies: int = 10, seed: int = 0,
             size: str | int = "small", vendor: str = "hologic",
             transfer_syntax: str = "explicit", extras: Sequence[str] = (),
             for_processing: bool = False, codes_only: bool = False,
             legacy_codes: bool = False,
             class_mix: Sequence[float] = DEFAULT_CLASS_MIX, label_noise: float = 0.03,
             breast_differ: float = 0.10, extras_rate: float = 1.0, jobs: int = 1,
             progress: bool = False, manifest: bool = True) -> list[StudyRecord]:
    """Write ``studies`` synthetic screening studies under ``outdir``; return their records.

    Parameters
    ----------
    outdir : folder; one sub-folder per study plus ``manifest.csv``.
    studies, seed : how many, and the seed (same seed -> same files and UIDs).
    size : "small" (1/8 of full resolution), "full" or an integer divisor.
    vendor : "hologic", "ge", "ims" or "mixed" (drawn per study).
    transfer_syntax : "explicit", "jpeg2000", "jpegls", "jpeg-lossless" or "rle".
    extras : any of "retake", "xccl", "spot", "missing", "for-processing"; each study gets
        each listed extra with probability ``extras_rate``.
    for_processing : write every image as For Processing instead of For Presentation.
    codes_only : omit ViewPosition, leave the view to ViewCodeSequence.
    legacy_codes : the legacy SNOMED RT (SRT) view codes instead of SNOMED CT.
    class_mix : shares of A, B, C, D (normalised).
    label_noise : chance that a breast's reader label is one class off.
    breast_differ : chance that one breast is one class less dense than the other.
    jobs : worker processes (results do not depend on it).
    progress : tqdm bar on stderr.
    """
    opts = SynthOptions(seed=int(seed), divisor=size_divisor(size), vendor=vendor,
                        transfer_syntax=transfer_syntax, extras=tuple(extras),
                        extras_rate=float(extras_rate), for_processing=for_processing,
                        codes_only=codes_only, legacy_codes=legacy_codes,
                        class_mix=tuple(float(x) for x in class_mix),  # type: ignore[arg-type]
                        label_noise=float(label_noise), breast_differ=float(breast_differ))
    _validate(opts)
    if studies < 0:
        raise ValueError("studies must be >= 0")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    work = [(i, str(out), opts) for i in range(studies)]
    bar = tqdm(total=studies, unit="study", disable=not progress, desc="synth")
    records: list[StudyRecord] = []
    if jobs > 1 and studies > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for rec in pool.map(_study_job, work, chunksize=4):
                records.append(rec)
                bar.update(1)
    else:
        for item in work:
            records.append(_study_job(item))
            bar.update(1)
    bar.close()
    if manifest:
        write_manifest(records, out / "manifest.csv")
    log.debug("wrote %d synthetic studies (seed %d, %s, %s)", len(records), opts.seed,
             vendor, transfer_syntax)
    return records


__all__ = ["CLASSES", "DEFAULT_CLASS_MIX", "EXTRAS", "MANIFEST_COLUMNS", "ImageRecord",
           "StudyRecord", "SynthOptions", "draw_ground_truth", "generate", "generate_study",
           "size_divisor", "write_manifest"]
