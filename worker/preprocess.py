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
3. **Intensity to [0, 1]**, higher = denser: For Presentation images with a VOI window
   (first WindowCenter/WindowWidth; VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID per
   PS3.3 C.11.2.1.2) or a VOI LUT use it; otherwise the data's own range (minimum to the
   99.9th percentile of a 2x-subsampled grid), never a fixed 4095. MONOCHROME1 is
   inverted (negated before the data range, or ``1 - y`` after a window).
4. **Orientation**: the chest wall on the LEFT of the array for both breasts, from
   PatientOrientation (0020,0020): row direction ``A`` -> as stored, ``P`` -> mirrored;
   when the *column* direction is ``A``/``P`` (an image stored rotated by 90 degrees) the
   array is rotated. PatientOrientation describes the stored pixels, so it already
   includes any FieldOfViewHorizontalFlip. Without a usable PatientOrientation the side
   holding more tissue (sum of intensities per half) is the chest wall: the breast is
   widest there; the laterality's display convention (R: chest wall right, L: left,
   reversed by FieldOfViewHorizontalFlip YES) is only cross-checked (a warning when it
   disagrees), because vendors write it differently.
5. **Crop to the breast**: pixels brighter than the background level (the histogram's
   mode in the lower half of [0, 1]) plus :data:`BACKGROUND_THRESHOLD`, opened with a
   3x3 kernel; the largest 8-connected component is the breast;
   other components (burned-in labels, markers, small blobs) are set to 0; the array is
   cropped to the breast's bounding box.
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

from mammo_density.study.sop import dataset_is_for_presentation
from mammo_density.study.views import laterality_of
from mammo_density.worker.decode import Decoded, DecodeError, decode_frame, reduced_shape

log = logging.getLogger(__name__)

#: Bump on ANY change of the output of :func:`load_model_input`.
PREPROCESSING_VERSION = "mdp-1.1"

#: The working image's LONG side is at least this many times the model input size: a
#: breast spanning >= 1/1.25 = 80 % of the detector's long side is still downsampled (never
#: enlarged) by the final aspect-keeping resize, whose scale is set by the long side.
WORKING_OVERSAMPLE = 1.25
#: Deepest resolution level used (real Hologic codestreams have 5 levels).
MAX_LEVEL = 4
#: Margin above the background level from which a pixel may be breast.
BACKGROUND_THRESHOLD = 0.05

__all__ = [
    "BACKGROUND_THRESHOLD",
    "PREPROCESSING_VERSION",
    "WORKING_OVERSAMPLE",
    "DecodeError",
    "PreprocessInfo",
    "load_model_input",
    "load_model_input_timed",
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


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] (PS3.3 C.11.2.1.2), on float32 in place where possible."""
    if function == "SIGMOID":
        y = np.exp(np.float32(-4.0) * (x - np.float32(center)) / np.float32(width))
        y += 1.0
        np.reciprocal(y, out=y)
        return y
    if function == "LINEAR_EXACT":
        y = (x - np.float32(center)) / np.float32(width) + np.float32(0.5)
    else:  # LINEAR (default)
        width = max(width, 1.0)
        y = (x - np.float32(center - 0.5)) / np.float32(max(width - 1.0, 1.0)) + np.float32(0.5)
    return np.clip(y, 0.0, 1.0, out=y)


def _data_range(x: np.ndarray) -> tuple[float, float]:
    sample = x[::2, ::2]
    lo = float(sample.min())
    hi = float(np.percentile(sample, 99.9))
    if hi <= lo:
        hi = float(sample.max())
    return lo, hi


def _to_unit(ds: Dataset, x: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Stored values (after the modality LUT) -> [0, 1], higher = denser."""
    mono1 = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    if dataset_is_for_presentation(ds):
        center = _first(ds.get("WindowCenter"))
        width = _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            y = _apply_window(x, center, width, function)
            info.intensity = f"window {function.lower()} c={center:g} w={width:g}"
            return 1.0 - y if mono1 else y
        if ds.get("VOILUTSequence"):
            from pydicom.pixels import apply_voi

            x = apply_voi(x, ds).astype(np.float32, copy=False)
            info.intensity = "voi lut"
            lo, hi = float(x.min()), float(x.max())
            y = (x - lo) / max(hi - lo, 1e-6)
            return 1.0 - y if mono1 else y
    if mono1:
        x = np.negative(x, out=x)
    lo, hi = _data_range(x)
    info.intensity = f"data range {'inverted ' if mono1 else ''}[{lo:g}, {hi:g}]"
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


def crop_to_breast(y: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """Keep the largest foreground component (the breast), zero the others, crop to it."""
    fg = (y > background_threshold(y)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        info.warnings.append("no breast found above background; image used uncropped")
        info.crop = (0, y.shape[0], 0, y.shape[1])
        return y
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = 1 + int(np.argmax(areas))
    y = np.array(y, dtype=np.float32, copy=True)  # views (flips) -> own contiguous array
    if n > 2:
        y[(labels != best) & (labels != 0)] = 0.0
    left = int(stats[best, cv2.CC_STAT_LEFT])
    top = int(stats[best, cv2.CC_STAT_TOP])
    width = int(stats[best, cv2.CC_STAT_WIDTH])
    height = int(stats[best, cv2.CC_STAT_HEIGHT])
    info.crop = (top, top + height, left, left + width)
    return y[top:top + height, left:left + width]


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
