"""The one preprocessing of the project: DICOM mammogram -> model input.

Imported by the worker (inference) and by train/ (training): a model only works if it
sees at inference exactly what it saw in training. Any change to what this module
outputs must bump :data:`PREPROCESSING_VERSION`; model manifests name the version they
were trained with and the worker refuses a mismatch.

Steps (``load_model_input``):

1. **Decode** at a *working resolution level* ``L`` (:func:`working_level`): the largest
   ``L`` (at most :data:`MAX_LEVEL`) such that the long side of the image at
   ``2**-L`` scale is still ``>= WORKING_OVERSAMPLE * size`` (1.25). JPEG 2000 / HTJ2K decode at
   that level directly (the wavelet's low-pass band, docs/decoding.md: 12x faster); every other
   codec decodes at full size and is brought to the same working shape by an exact area
   average (``cv2.INTER_AREA``). The two routes agree within a stated tolerance
   (tests/test_preprocess.py). ``reduced=False`` forces the naive path (full decode,
   then area average) used as the reference in benchmarks.
2. **Stored values**: bits above BitsStored masked (sign-extended for signed data);
   Modality LUT (RescaleSlope / RescaleIntercept).
3. **Provisional intensity** (polarity only): MONOCHROME1 is negated, then the data's own
   range (minimum to the 99.9th percentile of a 2x-subsampled grid) maps to [0, 1],
   higher = denser. The VOI window / VOI LUT is display metadata and is NOT used: the
   same stored pixels give the same model input with or without one, LINEAR or SIGMOID,
   MONOCHROME1 or 2, at any bit depth (tests/test_real_input.py states the tolerances).
4. **Orientation**: the chest wall on the LEFT of the array for both breasts, from
   PatientOrientation (0020,0020): row direction ``A`` -> as stored, ``P`` -> mirrored;
   when the *column* direction is ``A``/``P`` (an image stored rotated by 90 degrees) the
   array is rotated. PatientOrientation describes the stored pixels, so it already
   includes any FieldOfViewHorizontalFlip. Without a usable PatientOrientation the side
   holding more tissue (sum of intensities per half) is the chest wall: the breast is
   widest there; the laterality's display convention (R: chest wall right, L: left,
   reversed by FieldOfViewHorizontalFlip YES) is only cross-checked (a warning when it
   disagrees), because vendors write it differently.
5. **The breast** (:func:`breast_mask`, decided on a copy of at most
   :data:`MASK_SIDE` px): pixels brighter than the background level (the histogram's
   mode in the lower half of [0, 1]) plus :data:`BACKGROUND_THRESHOLD`, less bright
   bands along the image sides (:func:`film_edges`: the clear edge of digitised film),
   opened with a 3x3 kernel; the largest component after cutting narrow necks (an arm, a
   marker on a bridge) and body parts joined along the chest wall (a valley in the
   breast's depth per row: the abdomen below a CC view); holes filled. Labels, markers
   and other blobs are set to 0 and the array is cropped to the breast's bounding box.
   **Intensity** (:func:`normalise_to_breast`): the breast's 5th and 99.5th percentiles
   go to 0.15 and 0.95 (clipped to [0, 1]): set on breast tissue, not on a window.
   **Quality** (:func:`assess_quality`): flags for a tiny matrix, no breast, a small
   breast area, heavy cropping, out-of-distribution intensity.
6. **Resize** keeping the aspect ratio (``cv2.INTER_AREA`` when shrinking, linear when
   enlarging) into a ``size x size`` float32 canvas of zeros: chest wall at the left
   edge, centred vertically.

The model's own normalisation (``(x - mean) / std`` from the manifest) is applied by
:mod:`mammo_density.worker.models`, not here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mammo_density.study.views import laterality_of
from mammo_density.worker.decode import Decoded, DecodeError, decode_frame, reduced_shape

log = logging.getLogger(__name__)

#: Bump on ANY change of the output of :func:`load_model_input`.
PREPROCESSING_VERSION = "mdp-2"

#: The working image's LONG side is at least this many times the model input size: a
#: breast spanning >= 1/1.25 = 80 % of the detector's long side is still downsampled (never
#: enlarged) by the final aspect-keeping resize, whose scale is set by the long side.
WORKING_OVERSAMPLE = 1.25
#: Deepest resolution level used (real Hologic codestreams have 5 levels).
MAX_LEVEL = 4
#: Margin above the background level from which a pixel may be breast.
BACKGROUND_THRESHOLD = 0.05
#: Breast-tissue percentiles that set the intensity scale, and where they land in [0, 1].
#: The lower one lies in tissue, above the skin line's ramp (whose share of the breast
#: depends on the resolution and the decoder's smoothing: the 1st percentile moved 25 %
#: of the span between the reduced and the full decode of one image).
NORM_PERCENTILES = (5.0, 99.5)
NORM_TARGETS = (0.15, 0.95)
#: Film edges: provisional intensity of the band, fraction of a side it must run along,
#: and the deepest it may reach into the image (fraction of the image's size).
FILM_EDGE_LEVEL = 0.9
FILM_EDGE_COVERAGE = 0.6
FILM_EDGE_MAX_DEPTH = 0.12
#: Necks narrower than twice this fraction of the long side separate the breast from
#: what hangs on it.
NECK_RADIUS = 0.03
#: A valley in the breast's depth per row down to this fraction of the humps around it
#: (each at least VALLEY_MIN_HUMP of the deepest row) separates two body parts.
VALLEY_RATIO = 0.5
VALLEY_MIN_HUMP = 0.2
#: The breast's outline is decided on a copy whose long side is at most this many pixels.
MASK_SIDE = 384

# --- quality flags (per view; any of them marks the view low-confidence) -----------------
#: Smallest breast area (cm^2, from the pixel spacing) of a screening view.
MIN_BREAST_AREA_CM2 = 20.0
#: Smallest fraction of the image the breast may cover.
MIN_BREAST_FRACTION = 0.05
#: Largest fraction of the foreground that may be left out of the breast.
MAX_LEFT_OUT = 0.3
#: Fewest stored grey levels between the breast's 1st and 99.5th percentiles.
MIN_BREAST_LEVELS = 32.0
#: Largest fraction of the breast at the image's brightest level (saturation).
MAX_SATURATED = 0.1
#: Smallest matrix side (pixels) of a mammogram.
MIN_MATRIX = 64

__all__ = [
    "BACKGROUND_THRESHOLD",
    "PREPROCESSING_VERSION",
    "WORKING_OVERSAMPLE",
    "DecodeError",
    "PreprocessInfo",
    "assess_quality",
    "breast_mask",
    "crop_to_breast",
    "film_edges",
    "load_model_input",
    "load_model_input_timed",
    "normalise_to_breast",
    "preprocess_dataset",
    "read_dataset",
    "working_level",
]


@dataclass
class PreprocessInfo:
    """What preprocessing did to one image (for logs, warnings and benchmarks)."""

    codec: str = ""
    level: int = 0
    working_shape: tuple[int, int] = (0, 0)
    orientation: str = ""
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (working px)
    intensity: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: provisional intensity scale: stored values (polarity applied) ``lo`` -> 0, ``hi`` -> 1
    data_range: tuple[float, float] = (0.0, 0.0)
    #: quality measures (see :func:`assess_quality`)
    breast_fraction: float = 0.0
    breast_area_cm2: float | None = None
    foreground_left_out: float = 0.0
    breast_levels: float = 0.0  # provisional units until assess_quality: stored levels
    breast_saturated: float = 0.0
    #: reasons for low confidence in this view's input
    flags: list[str] = field(default_factory=list)
    #: what the crop removed (informative: film edges, body parts)
    notes: list[str] = field(default_factory=list)
    #: the breast's pixels in the oriented working image (None: none found)
    breast_mask: np.ndarray | None = field(default=None, repr=False)


def working_level(rows: int, cols: int, size: int) -> int:
    """Resolution level at which an image of ``rows`` x ``cols`` is processed for ``size``:
    the deepest (at most :data:`MAX_LEVEL`) whose long side is still
    ``>= WORKING_OVERSAMPLE * size``. 3328 x 4096 at 650 px -> level 2 (832 x 1024)."""
    level = 0
    while level < MAX_LEVEL:
        r, c = reduced_shape(rows, cols, level + 1)
        if max(r, c) < WORKING_OVERSAMPLE * size:
            break
        level += 1
    return level


def read_dataset(source: str | Path | Dataset) -> Dataset:
    """A dataset from a path (read in full) or the dataset itself."""
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(str(source))
    except Exception as err:
        raise DecodeError(f"not a readable DICOM file: {type(err).__name__}: {err}") from None


# --- stored values -> [0, 1] ------------------------------------------------------------

def _stored_values(ds: Dataset, arr: np.ndarray, reduced: bool) -> np.ndarray:
    bits_stored = int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    if reduced and arr.dtype == np.uint16 and 0 < bits_stored < 16 and not signed:
        # Reduced-resolution wavelet decodes can undershoot 0 near sharp edges; OpenJPH
        # returns such values wrapped (~65000): clip through a signed view.
        arr = np.clip(arr.view(np.int16), 0, None)
    if 0 < bits_stored < arr.dtype.itemsize * 8:
        if signed:
            shift = 32 - bits_stored
            arr = (arr.astype(np.int32) << shift) >> shift
        else:
            arr = arr & np.asarray((1 << bits_stored) - 1, dtype=arr.dtype)
    out = arr.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _data_range(x: np.ndarray) -> tuple[float, float]:
    sample = x[::2, ::2]
    lo = float(sample.min())
    hi = float(np.percentile(sample, 99.9))
    if hi <= lo:
        hi = float(sample.max())
    return lo, hi


def _to_unit(ds: Dataset, x: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Stored values (after the modality LUT) -> provisional [0, 1], higher = denser.

    Polarity only: MONOCHROME1 is negated, then the data's own range (minimum to the
    99.9th percentile of a 2x-subsampled grid) maps to [0, 1]. The VOI window / VOI LUT
    (display metadata) is deliberately NOT applied: the same stored pixels must give the
    same model input with or without one. The final intensity scale is set on the breast
    itself (:func:`normalise_to_breast`)."""
    mono1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if mono1:
        x = np.negative(x, out=x)
    lo, hi = _data_range(x)
    info.data_range = (lo, hi)
    has_voi = _first(ds.get("WindowCenter")) is not None or bool(ds.get("VOILUTSequence"))
    info.intensity = (f"data range {'inverted ' if mono1 else ''}[{lo:g}, {hi:g}]"
                      + ("; display window/LUT not used" if has_voi else ""))
    if hi <= lo:
        info.warnings.append("image has a single grey level")
        return np.zeros_like(x)
    y = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(y, 0.0, 1.0, out=y)


# --- orientation --------------------------------------------------------------------------

def _orientation_values(ds: Dataset) -> tuple[str, str]:
    value = ds.get("PatientOrientation")
    if value is None or value == "":
        return "", ""
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) \
        else str(value).split("\\")
    if len(items) < 2:
        return "", ""
    return str(items[0]).upper(), str(items[1]).upper()


def _chest_wall_left_by_mass(y: np.ndarray) -> bool:
    half = y.shape[1] // 2
    return float(y[:, :half].sum()) >= float(y[:, y.shape[1] - half:].sum())


def orient(ds: Dataset, y: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Rotate/mirror ``y`` so that the chest wall is on the left (see module docstring)."""
    rows_dir, cols_dir = _orientation_values(ds)
    row_ap = ("A" in rows_dir) != ("P" in rows_dir)
    col_ap = ("A" in cols_dir) != ("P" in cols_dir)
    if row_ap:
        if "P" in rows_dir:
            info.orientation = "mirrored (row direction P)"
            return y[:, ::-1]
        info.orientation = "as stored (row direction A)"
        return y
    if col_ap:
        if "A" in cols_dir:  # top of the image is the chest wall: rotate counter-clockwise
            info.orientation = "rotated 90 ccw (column direction A)"
            return np.rot90(y, 1)
        info.orientation = "rotated 90 cw (column direction P)"
        return np.rot90(y, -1)
    left = _chest_wall_left_by_mass(y)
    # Cross-check with the display convention (R breast: chest wall on the right, L: on
    # the left), reversed by FieldOfViewHorizontalFlip YES. Vendors differ, so the image
    # decides; a disagreement is reported in the result's warnings.
    laterality = laterality_of(ds)
    if laterality in ("R", "L"):
        expect_left = laterality == "L"
        if str(ds.get("FieldOfViewHorizontalFlip", "") or "").upper() == "YES":
            expect_left = not expect_left
        if expect_left != left:
            info.warnings.append(
                "no PatientOrientation: chest wall placed by tissue mass on the "
                f"{'left' if left else 'right'}, against the {laterality} display convention")
    if left:
        info.orientation = "as stored (more tissue on the left; no PatientOrientation A/P)"
        return y
    info.orientation = "mirrored (more tissue on the right; no PatientOrientation A/P)"
    return y[:, ::-1]


# --- crop and resize ----------------------------------------------------------------------

def background_threshold(y: np.ndarray) -> float:
    """Intensity separating background from breast: the background level (the mode of
    the histogram's lower half) plus :data:`BACKGROUND_THRESHOLD`."""
    hist = cv2.calcHist([y[::2, ::2]], [0], None, [128], [0.0, 1.0]).ravel()
    hist = np.convolve(hist, np.ones(3, dtype=np.float32) / 3.0, mode="same")
    mode = int(np.argmax(hist[:64])) / 128.0
    return mode + BACKGROUND_THRESHOLD


_SIDES = ("top", "bottom", "left", "right")


def _side_view(a: np.ndarray, side: str) -> np.ndarray:
    """A view of ``a`` in which ``side`` is row 0 (writes go through to ``a``)."""
    if side == "top":
        return a
    if side == "bottom":
        return a[::-1]
    if side == "left":
        return a.T
    return a.T[::-1]


def film_edges(y: np.ndarray, info: PreprocessInfo | None = None) -> np.ndarray:
    """Bands of near-saturated intensity along the image sides (the clear edge of a
    digitised film, a light-box or collimator border), as a boolean mask.

    A side has such a band when pixels at least :data:`FILM_EDGE_LEVEL` run inward from
    the very edge along at least :data:`FILM_EDGE_COVERAGE` of its length and end within
    :data:`FILM_EDGE_MAX_DEPTH` of the image (a band, not a bright region). The band and
    a small margin beyond it are masked so that it cannot join the breast to labels."""
    out = np.zeros(y.shape, dtype=bool)
    bright = y >= FILM_EDGE_LEVEL
    for side in _SIDES:
        b = _side_view(bright, side)
        n = b.shape[0]
        max_depth = max(2, int(n * FILM_EDGE_MAX_DEPTH))
        strip = b[:max_depth]
        through = strip.all(axis=0)
        depth = np.where(through, max_depth, np.argmin(strip, axis=0))
        covered = depth > 0
        if covered.mean() < FILM_EDGE_COVERAGE or through[covered].mean() > 0.2:
            continue
        margin = max(2, n // 100)
        reach = np.where(covered, np.minimum(depth + margin, n), 0)
        o = _side_view(out, side)
        o |= np.arange(n)[:, None] < reach[None, :]
        if info is not None:
            info.notes.append(f"film edge removed ({side})")
    return out


def _largest(mask: np.ndarray) -> np.ndarray | None:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                           connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def _thick_part(fg: np.ndarray) -> np.ndarray | None:
    """Where the largest thick region of ``fg`` lies (a coarse mask, full size): the
    largest component after an erosion by :data:`NECK_RADIUS` of the long side, grown
    back by twice that. Regions joined to it only through a neck narrower than the
    erosion's diameter (an arm, a marker on a bridge of tissue) fall outside."""
    h, w = fg.shape
    step = max(1, max(h, w) // 256)
    small = np.ascontiguousarray(fg[::step, ::step], dtype=np.uint8)
    r = max(2, round(NECK_RADIUS * max(small.shape)))
    core = _largest(cv2.erode(small, cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))))
    if core is None:
        return None
    grown = cv2.dilate(core.astype(np.uint8), cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (4 * r + 1, 4 * r + 1)))
    if step > 1:
        grown = cv2.resize(grown, (w, h), interpolation=cv2.INTER_NEAREST)
    return grown.astype(bool)


def _cut_adjacent_parts(mask: np.ndarray, info: PreprocessInfo | None) -> np.ndarray:
    """Cut a second body part joined to the breast along the chest wall (the abdomen or
    an arm above/below a CC view): the breast's depth per row (chest wall on the left)
    has one hump; a valley down to at most :data:`VALLEY_RATIO` of the lower of the two
    humps around it separates another part. The rows beyond the deepest such valley on
    the side holding less tissue are dropped (twice at most)."""
    h = mask.shape[0]
    for _ in range(2):
        prof = mask.sum(axis=1).astype(np.float32)
        k = max(3, (h // 33) | 1)
        prof = np.convolve(prof, np.ones(k, dtype=np.float32) / k, mode="same")
        peak = float(prof.max())
        if peak <= 0:
            return mask
        left = np.maximum.accumulate(prof)
        right = np.maximum.accumulate(prof[::-1])[::-1]
        lower = np.minimum(left, right)
        ok = (lower >= VALLEY_MIN_HUMP * peak) & (prof <= VALLEY_RATIO * lower)
        if not ok.any():
            return mask
        score = np.where(ok, (lower - prof) / np.maximum(lower, 1e-6), -1.0)
        v = int(np.argmax(score))
        mask = mask.copy()
        above, below = float(prof[:v].sum()), float(prof[v:].sum())
        if above >= below:
            mask[v:] = False
            where = "below"
        else:
            mask[:v] = False
            where = "above"
        if info is not None:
            info.notes.append(f"adjacent body part cut {where} the breast")
    return mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def breast_mask(y: np.ndarray, info: PreprocessInfo | None = None) -> np.ndarray | None:
    """The breast's pixels in a provisional [0, 1] image (chest wall on the left), or
    None when nothing stands above the background.

    Foreground is every pixel above :func:`background_threshold`, less the film edges
    (:func:`film_edges`), opened with a 3x3 kernel. The breast is the largest component
    after cutting narrow necks (:func:`_thick_part`) and body parts joined along the chest
    wall (:func:`_cut_adjacent_parts`); labels, markers and other blobs are left out;
    holes are filled. These decisions are taken on a copy whose long side is at most
    :data:`MASK_SIDE` (area average); the skin line is then traced at full resolution
    (the foreground within one coarse pixel of the coarse breast)."""
    h, w = y.shape
    threshold = background_threshold(y)
    step = -(-max(h, w) // MASK_SIDE)
    small = y if step == 1 else cv2.resize(
        y, (-(-w // step), -(-h // step)), interpolation=cv2.INTER_AREA)
    coarse = _coarse_breast_mask(small, threshold, info)
    if coarse is None or step == 1:
        return coarse
    grown = cv2.dilate(coarse.astype(np.uint8), np.ones((3, 3), np.uint8))
    up = cv2.resize(grown, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return up & (y > threshold)


def _coarse_breast_mask(y: np.ndarray, threshold: float,
                        info: PreprocessInfo | None) -> np.ndarray | None:
    fg = y > threshold
    edges = film_edges(y, info)
    if edges.any():
        fg &= ~edges
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN,
                          np.ones((3, 3), np.uint8)).astype(bool)
    total = int(fg.sum())
    best = _largest(fg)
    if best is None:
        return None
    # ``best`` is one component; it needs labelling again only where a step removed
    # part of it (the common case removes nothing)
    thick = _thick_part(best)
    if thick is not None and not thick[best].all():
        best = _largest(best & thick)
        if best is None:
            return None
    cut = _cut_adjacent_parts(best, info)
    if cut is not best:
        best = _largest(cut)
        if best is None:
            return None
    best = _fill_holes(best)
    if info is not None:
        info.foreground_left_out = 1.0 - min(1.0, int(best.sum()) / max(total, 1))
    return best


def normalise_to_breast(y: np.ndarray, mask: np.ndarray,
                        info: PreprocessInfo | None = None) -> np.ndarray:
    """The intensity scale set on breast tissue: the breast's :data:`NORM_PERCENTILES`
    land on :data:`NORM_TARGETS`, clipped to [0, 1]; everything outside ``mask`` is 0.

    Affine in the stored values, so any linear rescaling of the data (bit depth, slope,
    MONOCHROME1 inversion) gives the same result, and no display window is involved."""
    step = max(1, int(np.sqrt(y.size / 65536.0)))  # about 64k pixels
    sample = y[::step, ::step][mask[::step, ::step]]
    if sample.size < 16:
        sample = y[mask]
    q_lo, q_hi = (float(v) for v in np.percentile(sample, NORM_PERCENTILES))
    if info is not None:
        info.breast_levels = q_hi - q_lo
        info.breast_saturated = float(np.mean(sample >= 0.999))
    if q_hi <= q_lo:
        if info is not None:
            info.warnings.append("breast has a single grey level")
        out = np.where(mask, np.float32(0.5), np.float32(0.0)).astype(np.float32)
        return out
    t_lo, t_hi = NORM_TARGETS
    gain = np.float32((t_hi - t_lo) / (q_hi - q_lo))
    out = (y - np.float32(q_lo)) * gain + np.float32(t_lo)
    np.clip(out, 0.0, 1.0, out=out)
    out[~mask] = 0.0
    return out


def crop_to_breast(y: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Find the breast (:func:`breast_mask`), set the intensity scale on it
    (:func:`normalise_to_breast`), zero everything else and crop to its bounding box."""
    h, w = y.shape
    mask = breast_mask(y, info)
    if mask is None:
        info.warnings.append("no breast found above background; image used uncropped")
        info.flags.append("no breast found")
        info.crop = (0, h, 0, w)
        return np.ascontiguousarray(y, dtype=np.float32)
    info.breast_mask = mask
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    info.crop = (top, bottom, left, right)
    info.breast_fraction = float(mask.sum()) / float(h * w)
    y = np.ascontiguousarray(y[top:bottom, left:right], dtype=np.float32)
    return normalise_to_breast(y, mask[top:bottom, left:right], info)


def fit_to_square(y: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio into a ``size x size`` canvas (chest wall left)."""
    h, w = y.shape
    scale = size / max(h, w)
    new_w = min(size, max(1, round(w * scale)))
    new_h = min(size, max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(y, dtype=np.float32), (new_w, new_h),
                         interpolation=interp)
    canvas = np.zeros((size, size), dtype=np.float32)
    top = (size - new_h) // 2
    canvas[top:top + new_h, :new_w] = resized
    return np.clip(canvas, 0.0, 1.0, out=canvas)


# --- quality ------------------------------------------------------------------------------

def _spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                dy, dx = float(value[0]), float(value[1])
                if dy > 0 and dx > 0:
                    return dy, dx
        except (TypeError, ValueError):
            continue
    return None


def assess_quality(ds: Dataset, info: PreprocessInfo) -> list[str]:
    """Fill ``info``'s quality measures and flags (reasons for low confidence).

    Flags: a matrix under :data:`MIN_MATRIX` pixels; no breast found; a breast under
    :data:`MIN_BREAST_AREA_CM2` (where the pixel spacing is known) or under
    :data:`MIN_BREAST_FRACTION` of the image; more than :data:`MAX_LEFT_OUT` of the
    foreground left out of the breast (heavy cropping); out-of-distribution intensity (the
    breast spans fewer than :data:`MIN_BREAST_LEVELS` stored grey levels, or more than
    :data:`MAX_SATURATED` of it is at the brightest level)."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    flags = info.flags
    if min(rows, cols) < MIN_MATRIX:
        flags.append(f"tiny image ({rows}x{cols} pixels)")
    lo, hi = info.data_range
    info.breast_levels = round(info.breast_levels * max(hi - lo, 0.0), 3)
    if "no breast found" in flags:
        return flags
    spacing = _spacing_mm(ds)
    wr, wc = info.working_shape
    if spacing is not None and wr and wc:
        px_mm2 = (spacing[0] * rows / wr) * (spacing[1] * cols / wc)
        info.breast_area_cm2 = round(info.breast_fraction * wr * wc * px_mm2 / 100.0, 2)
        if info.breast_area_cm2 < MIN_BREAST_AREA_CM2:
            flags.append(f"small breast area ({info.breast_area_cm2:.1f} cm2)")
    if info.breast_fraction < MIN_BREAST_FRACTION:
        flags.append(f"breast covers {info.breast_fraction:.1%} of the image")
    if info.foreground_left_out > MAX_LEFT_OUT:
        flags.append(f"heavy cropping ({info.foreground_left_out:.0%} of the foreground "
                     "left out)")
    if info.breast_levels < MIN_BREAST_LEVELS:
        flags.append(f"out-of-distribution intensity (breast spans "
                     f"{info.breast_levels:.0f} grey levels)")
    elif info.breast_saturated > MAX_SATURATED:
        flags.append(f"out-of-distribution intensity ({info.breast_saturated:.0%} of the "
                     "breast saturated)")
    return flags


# --- the whole path -----------------------------------------------------------------------

def _to_working(decoded: Decoded, rows: int, cols: int, level: int) -> np.ndarray:
    arr = decoded.pixels
    if decoded.level == level:
        return arr
    r, c = reduced_shape(rows, cols, level)
    # Exact area average to the working shape (float32: cv2 area on uint16 rounds).
    return cv2.resize(arr.astype(np.float32), (c, r), interpolation=cv2.INTER_AREA)


def preprocess_dataset(ds: Dataset, size: int, *, reduced: bool = True,
                       threads: int = 2) -> tuple[np.ndarray, PreprocessInfo]:
    """Decode and preprocess one mammogram; returns the model input and what was done.

    Raises :class:`~mammo_density.worker.decode.DecodeError` for undecodable input.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    info = PreprocessInfo()
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    level = working_level(rows, cols, size) if rows and cols else 0
    t0 = time.perf_counter()
    decoded = decode_frame(ds, level=level if reduced else 0, threads=threads)
    t1 = time.perf_counter()
    info.codec, info.level = decoded.codec, decoded.level
    x = _stored_values(ds, decoded.pixels, reduced=decoded.level > 0)
    x = _to_working(Decoded(x, decoded.level, decoded.codec), rows, cols, level)
    info.working_shape = (int(x.shape[0]), int(x.shape[1]))
    y = _to_unit(ds, x, info)
    y = orient(ds, y, info)
    y = crop_to_breast(y, info)
    out = fit_to_square(y, size)
    assess_quality(ds, info)
    t2 = time.perf_counter()
    info.timings_ms = {"decode": (t1 - t0) * 1000.0, "preprocess": (t2 - t1) * 1000.0}
    return out, info


def load_model_input(source: str | Path | Dataset, size: int, *, reduced: bool = True,
                     threads: int = 2) -> np.ndarray:
    """Model input of one mammogram: float32 ``(size, size)`` in [0, 1].

    Chest wall on the left, cropped to the breast, aspect kept with zero padding. The
    ONE preprocessing shared by training and inference (:data:`PREPROCESSING_VERSION`).

    Parameters
    ----------
    source
        Path of a DICOM file, or a dataset with its pixel data.
    size
        Side of the square model input (the manifest's ``input_size``).
    reduced
        Decode JPEG 2000 at the working resolution level directly (fast path); False
        decodes at full resolution and area-averages (naive reference path).
    threads
        Threads for the codecs that use them.

    Raises
    ------
    DecodeError
        Unreadable file or undecodable pixel data (a poison input: do not retry).
    """
    return preprocess_dataset(read_dataset(source), size, reduced=reduced,
                              threads=threads)[0]


def load_model_input_timed(source: str | Path | Dataset, size: int, *, reduced: bool = True,
                           threads: int = 2) -> tuple[np.ndarray, dict[str, float]]:
    """Like :func:`load_model_input`, also returning per-stage milliseconds
    (``read``, ``decode``, ``preprocess``) for benchmarks."""
    t0 = time.perf_counter()
    ds = read_dataset(source)
    read_ms = (time.perf_counter() - t0) * 1000.0
    out, info = preprocess_dataset(ds, size, reduced=reduced, threads=threads)
    return out, {"read": read_ms, **info.timings_ms}
