"""The training manifest: one CSV row per image, readers' labels, patient-level splits.

Format (documented in docs/manifest.md). Required columns: ``exam_id``, ``patient_id``,
``laterality`` (R/L), ``view`` (CC/MLO), ``path`` (relative to the CSV's folder, or
absolute). Labels: ``density`` (A-D) and/or several readers' labels, either in columns
``reader1``, ``reader2``, ... or in one column ``readers`` with labels separated by ``;``
or ``|``. Optional: ``split`` (train/val/test), ``extra`` (non-empty = not one of the four
screening images; skipped), and any other column (kept in :attr:`ImageRecord.fields`).

The manifest written by ``mammo-density synth`` is a superset of this format.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammo_density.study.slots import SCREENING_VIEWS

log = logging.getLogger(__name__)

DENSITY_CLASSES = ("A", "B", "C", "D")
TASKS = {"birads4": ("A", "B", "C", "D"), "dense2": ("non-dense", "dense")}
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("exam_id", "patient_id", "laterality", "view", "path")
_READER_COLUMN = re.compile(r"^reader_?(\d+)$", re.IGNORECASE)


class ManifestError(ValueError):
    """The manifest CSV is malformed (the message names the row and column)."""


@dataclass
class ImageRecord:
    """One image of a training manifest.

    ``density`` is the label used for training (given, or the readers' consensus);
    ``readers`` the individual readers' labels (empty when only one label is given).
    """

    exam_id: str
    patient_id: str
    laterality: str
    view: str
    path: Path
    density: str | None
    readers: tuple[str | None, ...] = ()
    split: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def slot(self) -> str:
        return f"{self.laterality}-{self.view}"

    def target(self, task: str = "birads4") -> int:
        """Class index of :attr:`density` for ``task``."""
        if self.density is None:
            raise ValueError(f"image of exam {self.exam_id} has no density label")
        return density_to_index(self.density, task)

    def soft_target(self, task: str = "birads4") -> np.ndarray:
        """Class probabilities from the readers (one-hot of :attr:`density` if none)."""
        n = len(TASKS[task])
        out = np.zeros(n, dtype=np.float32)
        votes = [r for r in self.readers if r]
        if not votes:
            out[self.target(task)] = 1.0
            return out
        for r in votes:
            out[density_to_index(r, task)] += 1.0
        return out / out.sum()


def normalise_density(value: object) -> str | None:
    """``"A"``..``"D"`` from the spellings datasets use, or ``None`` for a missing label.

    Accepts ``A``-``D`` (any case, ``"DENSITY C"``, ``"BI-RADS b"``), ``1``-``4`` (ACR
    numbering, ``1`` = A). Raises ``ValueError`` for anything else.
    """
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in ("", "NA", "NAN", "NONE", "-"):
        return None
    for prefix in ("DENSITY", "BI-RADS", "BIRADS", "ACR"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip(" :_-")
    if text in DENSITY_CLASSES:
        return text
    if text.endswith(".0"):
        text = text[:-2]
    if text in ("1", "2", "3", "4"):
        return DENSITY_CLASSES[int(text) - 1]
    raise ValueError(f"not a BI-RADS density: {value!r}")


def density_to_index(density: str, task: str = "birads4") -> int:
    i = DENSITY_CLASSES.index(density)
    if task == "birads4":
        return i
    if task == "dense2":
        return int(i >= 2)
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")


def consensus(labels: Sequence[str | None], method: str = "majority") -> str | None:
    """One label from several readers' labels.

    ``majority``: the most frequent label; a tie goes to the denser of the tied classes
    (the conservative choice for screening, where denser means a supplementary path).
    ``median``: the median class (lower median for an even count of readers), a
    consensus that respects the order of the classes. Missing labels are ignored.
    """
    votes = [v for v in labels if v]
    if not votes:
        return None
    if method == "majority":
        counts = Counter(votes)
        top = max(counts.values())
        return max((c for c, n in counts.items() if n == top), key=DENSITY_CLASSES.index)
    if method == "median":
        ordered = sorted(votes, key=DENSITY_CLASSES.index)
        return ordered[(len(ordered) - 1) // 2]
    raise ValueError(f"unknown consensus method {method!r}; expected majority or median")


def _reader_columns(header: Sequence[str]) -> list[str]:
    cols = [(int(m.group(1)), h) for h in header if (m := _READER_COLUMN.match(h))]
    return [h for _, h in sorted(cols)]


def read_manifest_csv(path: str | Path, *, consensus_method: str = "majority",
                      include_extra: bool = False, require_label: bool = True,
                      label_column: str = "density") -> list[ImageRecord]:
    """Read a training manifest.

    Parameters
    ----------
    path
        The CSV file; relative image paths are resolved against its folder.
    consensus_method
        How several readers' labels become one (:func:`consensus`); used only for rows
        without an explicit ``density``.
    include_extra
        Keep rows whose ``extra`` column is non-empty (not the four screening images).
    require_label
        Raise :class:`ManifestError` for an image with no label at all.
    label_column
        Column holding the label (``density``; e.g. ``true_density`` to score synthetic
        data against its ground truth instead of the simulated reader).
    """
    path = Path(path)
    base = path.parent
    records: list[ImageRecord] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if label_column != "density" and label_column not in header:
            missing.append(label_column)
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}")
        reader_cols = _reader_columns(header)
        for lineno, row in enumerate(reader, start=2):
            if not include_extra and (row.get("extra") or "").strip():
                continue
            try:
                records.append(_parse_row(row, base, reader_cols, consensus_method,
                                          require_label, label_column))
            except ValueError as err:
                raise ManifestError(f"{path}:{lineno}: {err}") from None
    if not records:
        raise ManifestError(f"{path}: no images")
    return records


def _parse_row(row: dict[str, str], base: Path, reader_cols: list[str],
               consensus_method: str, require_label: bool,
               label_column: str = "density") -> ImageRecord:
    lat = (row.get("laterality") or "").strip().upper()
    if lat not in ("R", "L"):
        raise ValueError(f"laterality {lat!r} is not R or L")
    view = (row.get("view") or "").strip().upper()
    if not view:
        raise ValueError("view is empty")
    p = Path((row.get("path") or "").strip())
    if not str(p) or str(p) == ".":
        raise ValueError("path is empty")
    if not p.is_absolute():
        p = base / p
    if reader_cols:
        readers = tuple(normalise_density(row.get(c)) for c in reader_cols)
    elif (row.get("readers") or "").strip():
        readers = tuple(normalise_density(v) for v in re.split(r"[;|]", row["readers"]))
    else:
        readers = ()
    density = normalise_density(row.get(label_column))
    if density is None and readers:
        density = consensus(readers, consensus_method)
    if density is None and require_label:
        raise ValueError("no density label (column density or readers)")
    split = (row.get("split") or "").strip().lower()
    if split and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    known = set(REQUIRED_COLUMNS) | {"density", "readers", "split", *reader_cols}
    extra = {k: v for k, v in row.items() if k and k not in known and v is not None}
    return ImageRecord(exam_id=row["exam_id"].strip(), patient_id=row["patient_id"].strip(),
                       laterality=lat, view=view, path=p, density=density, readers=readers,
                       split=split, fields=extra)


def write_manifest_csv(path: str | Path, records: Iterable[ImageRecord],
                       *, extra_columns: Sequence[str] = ()) -> Path:
    """Write records in the manifest format (paths relative to the CSV where possible)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    n_readers = max((len(r.readers) for r in records), default=0)
    header = [*REQUIRED_COLUMNS, "density", "split",
              *[f"reader{i + 1}" for i in range(n_readers)], *extra_columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in records:
            try:
                rel = r.path.resolve().relative_to(path.parent.resolve())
            except ValueError:
                rel = r.path
            readers = [*(x or "" for x in r.readers), *[""] * (n_readers - len(r.readers))]
            writer.writerow([r.exam_id, r.patient_id, r.laterality, r.view, str(rel),
                             r.density or "", r.split, *readers,
                             *[r.fields.get(c, "") for c in extra_columns]])
    return path


# --------------------------------------------------------------------------- exams

def screening_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Only the four screening views (CC and MLO of each breast)."""
    return [r for r in records if r.view in SCREENING_VIEWS]


def exam_labels(records: Iterable[ImageRecord]) -> dict[str, str]:
    """Exam id -> the exam's density: the denser of its images' labels (the method's rule)."""
    out: dict[str, str] = {}
    for r in records:
        if r.density is None:
            continue
        prev = out.get(r.exam_id)
        if prev is None or DENSITY_CLASSES.index(r.density) > DENSITY_CLASSES.index(prev):
            out[r.exam_id] = r.density
    return out


def class_counts(records: Iterable[ImageRecord], task: str = "birads4") -> dict[str, int]:
    names = TASKS[task]
    counts = Counter(names[r.target(task)] for r in records if r.density)
    return {n: counts.get(n, 0) for n in names}


# --------------------------------------------------------------------------- agreement

def cohen_kappa(a: Sequence[int], b: Sequence[int], n_classes: int,
                weights: str | None = "linear") -> float:
    """Cohen's kappa of two raters (``weights``: None, ``"linear"`` or ``"quadratic"``)."""
    a_arr, b_arr = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if a_arr.shape != b_arr.shape or a_arr.size == 0:
        raise ValueError("cohen_kappa needs two equally long, non-empty label sequences")
    conf = np.zeros((n_classes, n_classes), dtype=float)
    np.add.at(conf, (a_arr, b_arr), 1.0)
    idx = np.arange(n_classes)
    if weights is None:
        w = (idx[:, None] != idx[None, :]).astype(float)
    elif weights == "linear":
        w = np.abs(idx[:, None] - idx[None, :]).astype(float)
    elif weights == "quadratic":
        w = ((idx[:, None] - idx[None, :]) ** 2).astype(float)
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', not {weights!r}")
    expected = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    denom = (w * expected).sum()
    if denom == 0:
        return 1.0
    return float(1.0 - (w * conf).sum() / denom)


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' kappa from an (items, classes) matrix of rater counts (same raters per item)."""
    ratings = np.asarray(ratings, dtype=float)
    n_raters = ratings.sum(1)
    if ratings.ndim != 2 or ratings.shape[0] == 0 or not np.all(n_raters == n_raters[0]):
        raise ValueError("fleiss_kappa needs an (items, classes) matrix with equal row sums")
    n = n_raters[0]
    if n < 2:
        raise ValueError("fleiss_kappa needs at least two raters per item")
    p_j = ratings.sum(0) / ratings.sum()
    p_i = ((ratings ** 2).sum(1) - n) / (n * (n - 1))
    p_bar, p_e = p_i.mean(), (p_j ** 2).sum()
    if p_e == 1:
        return 1.0
    return float((p_bar - p_e) / (1 - p_e))


def reader_agreement(records: Iterable[ImageRecord]) -> dict[str, object]:
    """Agreement between readers, per exam (exam label = denser breast per reader).

    Returns the number of readers and exams, pairwise Cohen's kappa (unweighted and
    linear-weighted) and Fleiss' kappa over the exams every reader labelled.
    """
    per_exam: dict[str, list[str | None]] = {}
    n_readers = 0
    for r in records:
        if not r.readers:
            continue
        n_readers = max(n_readers, len(r.readers))
        cur = per_exam.setdefault(r.exam_id, [None] * len(r.readers))
        for i, lab in enumerate(r.readers):
            if lab and (cur[i] is None
                        or DENSITY_CLASSES.index(lab) > DENSITY_CLASSES.index(cur[i])):
                cur[i] = lab
    if n_readers < 2:
        return {"readers": n_readers, "exams": len(per_exam)}
    full = [v for v in per_exam.values() if len(v) == n_readers and all(v)]
    out: dict[str, object] = {"readers": n_readers, "exams": len(full)}
    if not full:
        return out
    idx = np.array([[DENSITY_CLASSES.index(x) for x in v] for v in full])
    pairs = {}
    for i in range(n_readers):
        for j in range(i + 1, n_readers):
            pairs[f"reader{i + 1}-reader{j + 1}"] = {
                "kappa": cohen_kappa(idx[:, i], idx[:, j], 4, weights=None),
                "kappa_linear": cohen_kappa(idx[:, i], idx[:, j], 4, weights="linear"),
                "agreement": float(np.mean(idx[:, i] == idx[:, j])),
            }
    counts = np.zeros((len(full), 4))
    for k in range(n_readers):
        np.add.at(counts, (np.arange(len(full)), idx[:, k]), 1)
    out["pairwise"] = pairs
    out["fleiss_kappa"] = fleiss_kappa(counts)
    return out


# --------------------------------------------------------------------------- splits

def _patient_strata(records: Iterable[ImageRecord]) -> dict[str, str]:
    """Patient -> stratum: her densest exam label (one woman, one stratum)."""
    strata: dict[str, str] = {}
    for r in records:
        lab = r.density or "?"
        prev = strata.get(r.patient_id)
        if prev is None or (lab != "?" and (prev == "?" or DENSITY_CLASSES.index(lab)
                                             > DENSITY_CLASSES.index(prev))):
            strata[r.patient_id] = lab
    return strata


def _stratified_buckets(strata: dict[str, str], n_buckets: int, weights: Sequence[float],
                        seed: int) -> list[list[str]]:
    """Deal patients of each stratum to buckets in proportion to ``weights``."""
    rng = random.Random(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for pid, s in sorted(strata.items()):
        by_stratum[s].append(pid)
    buckets: list[list[str]] = [[] for _ in range(n_buckets)]
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    carry = np.zeros(n_buckets)
    for s in sorted(by_stratum):
        pids = by_stratum[s]
        rng.shuffle(pids)
        # Largest-remainder apportionment, carrying remainders across strata so small
        # strata do not all round the same way.
        exact = w * len(pids) + carry
        counts = np.floor(exact).astype(int)
        short = len(pids) - counts.sum()
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
        carry = exact - counts
        start = 0
        for b, c in enumerate(counts):
            buckets[b].extend(pids[start:start + c])
            start += c
    return buckets


def patient_split(records: Sequence[ImageRecord], *, val: float = 0.1, test: float = 0.1,
                  seed: int = 0, keep_existing: bool = True) -> list[ImageRecord]:
    """Assign ``split`` per patient (no woman in two splits), stratified by density.

    Records that already carry a split keep it when ``keep_existing`` and every image of
    each patient agrees; otherwise all are re-assigned. Returns the same records.
    """
    if keep_existing and all(r.split for r in records):
        check_patient_disjoint(records)
        return list(records)
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ValueError("val and test fractions must be in [0, 1) and sum below 1")
    strata = _patient_strata(records)
    buckets = _stratified_buckets(strata, 3, [1 - val - test, val, test], seed)
    assign = {pid: SPLITS[b] for b, pids in enumerate(buckets) for pid in pids}
    for r in records:
        r.split = assign[r.patient_id]
    return list(records)


def kfold_patients(records: Sequence[ImageRecord], k: int, *, seed: int = 0
                   ) -> list[tuple[set[str], set[str]]]:
    """``k`` stratified patient-level folds: a list of (train patients, held-out patients)."""
    if k < 2:
        raise ValueError("k must be at least 2")
    strata = _patient_strata(records)
    if len(strata) < k:
        raise ValueError(f"{len(strata)} patients cannot make {k} folds")
    buckets = _stratified_buckets(strata, k, [1.0] * k, seed)
    every = set(strata)
    return [(every - set(b), set(b)) for b in buckets]


def check_patient_disjoint(records: Iterable[ImageRecord]) -> None:
    """Raise ``ValueError`` if a patient appears in two splits."""
    seen: dict[str, str] = {}
    for r in records:
        prev = seen.setdefault(r.patient_id, r.split)
        if prev != r.split:
            raise ValueError(f"a patient appears in splits {prev!r} and {r.split!r}; "
                             "splits must be patient-level")


def select(records: Iterable[ImageRecord], *, split: str | None = None,
           slot: str | None = None, patients: set[str] | None = None) -> list[ImageRecord]:
    """Filter records by split, view slot (``R-CC``...) and patient set."""
    out = []
    for r in records:
        if split is not None and r.split != split:
            continue
        if slot is not None and r.slot != slot:
            continue
        if patients is not None and r.patient_id not in patients:
            continue
        out.append(r)
    return out
