"""Real input (issue #13): one model input per breast whatever the display metadata,
crops that keep only the breast, and per-view quality flags.

Display-metadata tolerance (stated in docs/preprocessing.md too): twins with the same
stored pixels (window/VOI LUT removed or added, LINEAR or SIGMOID, MONOCHROME1 <->
MONOCHROME2 inverted, the values scaled to 16 bits) give 128 px model inputs equal within
:data:`TWIN_MAX_TOL` (float rounding; measured <= 6e-7 on the six real headers); an 8-bit
requantised copy is within :data:`EIGHT_BIT_MEAN_TOL` mean and :data:`EIGHT_BIT_P99_TOL`
99th percentile |difference| (measured <= 0.0011 and <= 0.0053).
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from mammo_density.worker.decode import decode_frame
from mammo_density.worker.preprocess import preprocess_dataset
from tests.mg_images import breast_image, mg_dataset
from tests.services import require_testdata

SIZE = 128
TWIN_MAX_TOL = 1e-4
EIGHT_BIT_MEAN_TOL = 0.003
EIGHT_BIT_P99_TOL = 0.02

REAL_HEADERS = [
    ("fo-dicom", "GH133.dcm"),  # GE Essential, For Presentation, SIGMOID + VOI LUT, real pixels
    ("fo-dicom", "OutOfBoundsOverlay.dcm"),  # Siemens, linear window, real pixels
    ("openrem", "MG-Im-GE_Seno_1_ForPresentation.dcm"),  # GE DS header, 1x2 stub pixels
    ("openrem", "MG-Im-GE_Seno_1_ForProcessing.dcm"),  # MONOCHROME1, BitsStored 11
    ("openrem", "MG-Im-GE-SenDS-scaled.dcm"),  # MONOCHROME1, BitsStored 14, 4x4 stub
    ("openrem", "MG-Im-Hologic-PropProj.dcm"),  # Hologic SC, MONOCHROME1, window, no pixels
]


def _with_pixels(ds: pydicom.Dataset, pixels: np.ndarray) -> pydicom.Dataset:
    """``ds`` (a copy) holding ``pixels`` uncompressed."""
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.Rows, out.Columns = (int(v) for v in pixels.shape)
    out.BitsAllocated, out.PixelRepresentation, out.SamplesPerPixel = 16, 0, 1
    out.HighBit = int(out.BitsStored) - 1
    out.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    out["PixelData"].VR = "OW"
    for keyword in ("NumberOfFrames", "LossyImageCompression"):
        if keyword in out:
            delattr(out, keyword)
    return out


def _source(parts: tuple[str, str]) -> tuple[pydicom.Dataset, np.ndarray]:
    """A real header and stored pixels: its own when it has an image, else a phantom in
    its bit depth and polarity."""
    ds = pydicom.dcmread(require_testdata("real-mg", *parts))
    bits = int(ds.BitsStored)
    maxv = (1 << bits) - 1
    if "PixelData" in ds and int(ds.Rows) >= 64 and int(ds.Columns) >= 64:
        pixels = decode_frame(ds).pixels.astype(np.uint16) & np.uint16(maxv)
    else:
        pixels = (breast_image(512, 416, seed=21, bits=12).astype(np.float64)
                  * maxv / 4095.0).round().astype(np.uint16)
        if str(ds.PhotometricInterpretation) == "MONOCHROME1":
            pixels = (maxv - pixels).astype(np.uint16)
    return _with_pixels(ds, pixels), pixels


def _without_voi(ds: pydicom.Dataset) -> pydicom.Dataset:
    out = copy.deepcopy(ds)
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
                    "WindowCenterWidthExplanation"):
        if keyword in out:
            delattr(out, keyword)
    return out


def _twins(ds: pydicom.Dataset, pixels: np.ndarray) -> dict[str, pydicom.Dataset]:
    bits = int(ds.BitsStored)
    maxv = (1 << bits) - 1
    twins = {"no window": _without_voi(ds)}
    for function in ("LINEAR", "SIGMOID"):
        w = _without_voi(ds)
        w.WindowCenter, w.WindowWidth, w.VOILUTFunction = maxv * 0.3, maxv * 0.25, function
        twins[f"window {function}"] = w
    flipped = _with_pixels(ds, (maxv - pixels).astype(np.uint16))
    mono1 = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    flipped.PhotometricInterpretation = "MONOCHROME2" if mono1 else "MONOCHROME1"
    twins["inverted polarity"] = flipped
    wide = _with_pixels(ds, (pixels.astype(np.uint32) << (16 - bits)).astype(np.uint16))
    wide.BitsStored, wide.HighBit = 16, 15
    twins["16-bit"] = wide
    return twins


@pytest.mark.parametrize("parts", REAL_HEADERS, ids=[p[1] for p in REAL_HEADERS])
def test_display_metadata_does_not_change_the_input(parts):
    ds, pixels = _source(parts)
    ref, _ = preprocess_dataset(copy.deepcopy(ds), SIZE)
    assert ref.max() > 0.5
    for name, twin in _twins(ds, pixels).items():
        out, _ = preprocess_dataset(twin, SIZE)
        diff = np.abs(out - ref)
        assert diff.max() <= TWIN_MAX_TOL, (name, float(diff.max()))
    # 8-bit requantised copy of the same pixels
    maxv = (1 << int(ds.BitsStored)) - 1
    eight = _with_pixels(ds, np.rint(pixels.astype(np.float64) * 255.0 / maxv)
                         .astype(np.uint16))
    eight.BitsStored, eight.HighBit = 8, 7
    out, _ = preprocess_dataset(eight, SIZE)
    diff = np.abs(out - ref)
    assert diff.mean() <= EIGHT_BIT_MEAN_TOL, float(diff.mean())
    assert np.percentile(diff, 99) <= EIGHT_BIT_P99_TOL, float(np.percentile(diff, 99))


def test_input_is_scaled_on_the_breast_not_the_window():
    """The issue's case: on the same pixels the breast's mean input was 0.14-0.22 with a
    SIGMOID window and 0.50-0.59 without; now both are the same and mid-range."""
    pixels = breast_image(512, 416, seed=22)
    plain = mg_dataset(pixels)
    sigmoid = mg_dataset(pixels, window=(3000.0, 800.0), voi_function="SIGMOID")
    a, _ = preprocess_dataset(plain, SIZE)
    b, _ = preprocess_dataset(sigmoid, SIZE)
    assert np.array_equal(a, b)
    assert 0.3 < float(a[a > 0].mean()) < 0.8


# --- crops ---------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _ellipse(rows: int, cols: int, cy: float, a: float, b: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return ((xx / a) ** 2 + ((yy - cy) / b) ** 2) <= 1.0


def _tissue(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.standard_normal((rows, cols)).astype(np.float32), (15, 15), 0)
    noise = (noise - noise.min()) / np.ptp(noise)
    return 0.35 + 0.35 * noise


def _working_mask(info, known: np.ndarray) -> np.ndarray:
    h, w = info.working_shape
    return cv2.resize(known.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5


def test_film_edge_touching_the_breast_and_labels_are_cropped_away():
    """Digitised film: a clear (bright) film edge along the top, right and bottom, the
    breast running into the top edge, a label with a halo on the right edge."""
    rows, cols = 600, 480
    breast = _ellipse(rows, cols, cy=250, a=330, b=280)  # reaches above the top band
    img = np.full((rows, cols), 0.06, np.float32)
    img[breast] = _tissue(rows, cols, 1)[breast]
    band = np.zeros((rows, cols), bool)
    band[:18], band[-22:], band[:, -15:] = True, True, True
    img[band] = 0.97
    label = np.zeros((rows, cols), bool)
    label[430:500, 360:cols - 15] = True  # a label on the film edge, with a halo
    halo = cv2.dilate(label.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    img[halo & ~band] = 0.45
    img[label] = 0.99
    pixels = np.rint(img * 4095).astype(np.uint16)
    ds = mg_dataset(pixels, orientation=("A", "F"))
    out, info = preprocess_dataset(ds, SIZE)
    truth = _working_mask(info, breast & ~band)
    assert info.breast_mask is not None
    assert _iou(info.breast_mask, truth) >= 0.95, _iou(info.breast_mask, truth)
    left_in = _working_mask(info, band | halo) & info.breast_mask
    assert left_in.sum() <= 0.01 * truth.sum()
    assert any("film edge" in n for n in info.notes)
    assert out.max() <= 1.0 and out[:, -4:].max() == 0.0


def test_adjacent_body_part_and_marker_are_cut_away():
    """A CC view with the abdomen below the breast joined along the chest wall, a bright
    marker on the abdomen, and an arm joined to the breast's top by a thin bridge."""
    rows, cols = 640, 480
    breast = _ellipse(rows, cols, cy=250, a=360, b=200)
    abdomen = _ellipse(rows, cols, cy=610, a=150, b=170)  # meets the breast at x=0
    bridge = np.zeros((rows, cols), bool)
    bridge[30:60, 200:212] = True  # a thin neck between the breast and an "arm"
    arm = np.zeros((rows, cols), bool)
    arm[0:30, 150:330] = True
    marker = np.zeros((rows, cols), bool)
    marker[560:590, 120:150] = True
    img = np.full((rows, cols), 0.05, np.float32)
    tissue = _tissue(rows, cols, 2)
    other = (abdomen | bridge | arm) & ~breast
    img[breast] = tissue[breast]
    img[other] = 0.5
    img[marker] = 1.0
    pixels = np.rint(img * 4095).astype(np.uint16)
    ds = mg_dataset(pixels, orientation=("A", "F"))
    _, info = preprocess_dataset(ds, SIZE)
    truth = _working_mask(info, breast)
    assert _iou(info.breast_mask, truth) >= 0.9, _iou(info.breast_mask, truth)
    kept_other = _working_mask(info, (other | marker) & ~breast) & info.breast_mask
    assert kept_other.sum() <= 0.03 * truth.sum(), kept_other.sum()
    assert any("adjacent body part" in n for n in info.notes)


def test_plain_phantoms_are_not_cut():
    """No film edge or body part: nothing removed but the label, no quality flag."""
    for seed, density in ((1, 0.2), (2, 0.5), (3, 1.0)):
        ds = mg_dataset(breast_image(512, 416, seed=seed, density=density))
        ds.ImagerPixelSpacing = [0.5, 0.5]
        _, info = preprocess_dataset(ds, SIZE)
        assert info.notes == [] and info.flags == [], (seed, info.notes, info.flags)
        truth = _working_mask(info, _ellipse(512, 416, 256, 416 * 0.75, 512 * 0.42))
        assert _iou(info.breast_mask, truth) >= 0.9


# --- quality flags ---------------------------------------------------------------------

def test_quality_flags():
    small = mg_dataset(breast_image(512, 416, seed=4))
    small.ImagerPixelSpacing = [0.05, 0.05]  # 2.6 x 2.1 cm detector: a tiny breast
    _, info = preprocess_dataset(small, SIZE)
    assert any(f.startswith("small breast area") for f in info.flags)
    assert info.breast_area_cm2 is not None and info.breast_area_cm2 < 20
    flat = breast_image(512, 416, seed=4) // 200  # the breast spans a few grey levels
    _, info = preprocess_dataset(mg_dataset(flat.astype(np.uint16)), SIZE)
    assert any(f.startswith("out-of-distribution intensity") for f in info.flags)
    stub = mg_dataset(np.array([[100, 4000]], dtype=np.uint16))
    _, info = preprocess_dataset(stub, SIZE)
    assert any(f.startswith("tiny image (1x2") for f in info.flags)


def test_mislabelled_stream_error_names_the_real_sizes(tmp_path):
    """A frame labelled JPEG Lossless holding a JPEG 2000 image of another size: the
    error quotes the image's and the header's full sizes, not the reduced ones."""
    from pydicom.uid import UID

    from mammo_density.worker.decode import DecodeError
    from tests.mg_images import encode, write

    ds = encode(mg_dataset(breast_image(512, 416, seed=23)), "j2k")
    ds.Rows, ds.Columns = 287, 240
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.70")
    ds = pydicom.dcmread(write(ds, tmp_path / "mislabelled.dcm"))
    with pytest.raises(DecodeError) as err:
        preprocess_dataset(ds, 64)  # a reduced decode would be 128x104 / 72x60
    assert "512x416" in str(err.value) and "287x240" in str(err.value)
    assert "128x104" not in str(err.value) and "72x60" not in str(err.value)


def test_third_party_warnings_go_to_the_log(capsys):
    import logging
    import warnings

    from mammo_density.logsetup import configure_logging

    # pytest records warnings per test (resetting warnings.showwarning): start from a
    # process that has not captured them yet, as a fresh CLI process has not
    logging.captureWarnings(False)
    try:
        configure_logging(0)
        warnings.warn("glymur-like box warning", UserWarning, stacklevel=1)
        assert "glymur-like" not in capsys.readouterr().err
        configure_logging(1)  # -v: as a DEBUG log line
        warnings.warn("glymur-like box warning 2", UserWarning, stacklevel=1)
        err = capsys.readouterr().err
        assert "DEBUG" in err and "py.warnings" in err and "glymur-like box warning 2" in err
    finally:
        logging.captureWarnings(False)


def test_exam_confidence_rule():
    from mammo_density.result import (
        BreastResult,
        ExamResult,
        StudyResult,
        ViewQuality,
        ViewResult,
    )
    from mammo_density.worker.quality import exam_confidence

    sure = {"A": 0.02, "B": 0.08, "C": 0.8, "D": 0.1}
    unsure = {"A": 0.3, "B": 0.1, "C": 0.29, "D": 0.31}
    mean = {c: (sure[c] + unsure[c]) / 2 for c in sure}

    def result(right, left, category, flags=()):
        views = [ViewResult(laterality="R", view="CC", sop_instance_uid="1.2.3",
                            probabilities=right,
                            quality=ViewQuality(low_confidence=bool(flags), flags=list(flags)))]
        return StudyResult(
            study_instance_uid="1.2.3.4", views=views,
            exam=ExamResult(category=category, probabilities=mean, dense=True, p_dense=0.7,
                            dense_source="birads4"),
            breasts={"R": BreastResult(category=max(right, key=right.get), probabilities=right),
                     "L": BreastResult(category=max(left, key=left.get), probabilities=left)})

    assert exam_confidence(result(sure, sure, "C")) == (False, [])
    # the deciding (denser) breast is unsure of its class D
    low, reasons = exam_confidence(result(unsure, sure, "D"))
    assert low and reasons == ["model uncertain (R breast class D at 31%)"]
    low, reasons = exam_confidence(result(sure, sure, "C", flags=["tiny image (4x4 pixels)"]))
    assert low and reasons == ["R-CC: tiny image (4x4 pixels)"]
