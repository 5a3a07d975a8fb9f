"""The summary image: the density result as a picture any viewer shows (docs/sr.md).

A DICOM Secondary Capture (:data:`mammo_density.study.sop.SECONDARY_CAPTURE`, built
with highdicom's ``SCImage``) in the study of the mammograms, in its own series after the SR's:
ConversionType WSD (workstation), Modality OT (never MG: the Orthanc plugin routes MG
images to the AI node), BurnedInAnnotation YES, SourceImageSequence naming the images
used, SeriesDate/SeriesTime and ContentDate/ContentTime set, and for a model that is not
for clinical use a SeriesDescription starting with "NOT FOR CLINICAL USE".

What it shows (rendered with Pillow; the fonts are the DejaVu fonts matplotlib ships):

- the exam's BI-RADS category with its MQSA sentence and the readable sentence of the SR;
- per breast, its category and the four class probabilities as a labelled bar chart;
- the four views as the model saw them (cropped to the breast, chest wall on the left)
  with the breast outline drawn on each, or why a view is missing or was not used;
- partial-study and not-assessable reasons, the model's name and version;
- for a model that is not for clinical use, "NOT FOR CLINICAL USE" across the image.

UIDs are deterministic like the SR's (:func:`summary_uids`), so the outbox's idempotence
and supersession apply to it unchanged.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from mammo_density import __version__
from mammo_density.logsetup import uid_hash
from mammo_density.manifest import ModelManifest
from mammo_density.result import BIRADS, StudyResult
from mammo_density.study import sop
from mammo_density.study.slots import SLOTS
from mammo_density.study.views import view_info
from mammo_density.wording import (
    CLASS_NAMES,
    MQSA_SENTENCES,
    NOT_FOR_CLINICAL_USE,
    SIDE_NAMES,
)
from mammo_density.worker.sr import (
    MANUFACTURER,
    is_demo,
    model_identity,
    series_description,
    source_header,
    summary_text,
)

log = logging.getLogger(__name__)

SECONDARY_CAPTURE = sop.SECONDARY_CAPTURE
SERIES_NUMBER = 9902  # after the SR's 9901
SERIES_DESCRIPTION = "AI breast density summary"
WIDTH, HEIGHT = 1280, 960
#: JPEG baseline (quality 95, ~0.3 MB): a picture of text and charts, not a diagnostic
#: image; encoding costs ~20 ms, against 3.7 MB uncompressed to write, send and store
#: (RLE Lossless: ~0.65 MB for ~70 ms). Every viewer and PACS decodes it.
TRANSFER_SYNTAX = JPEGBaseline8Bit
_UID_NAMESPACE = "mammo-density/summary/1"
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

# colours (RGB)
_BG = (12, 12, 16)
_FG = (235, 235, 235)
_DIM = (150, 150, 160)
_ACCENT = (255, 200, 40)      # the category, the breast outline
_BAR = (90, 140, 220)
_BAR_TOP = (255, 200, 40)
_WARN = (255, 140, 60)
_RED = (230, 40, 40)
_WATERMARK_RGB = (255, 60, 60)  # the diagonal NOT FOR CLINICAL USE, through its mask


def summary_uids(result: StudyResult, manifest: ModelManifest,
                 sources: Sequence[Dataset]) -> tuple[str, str]:
    """Deterministic ``(series_uid, sop_instance_uid)`` of a study's summary image: the
    same study, model and input images give the same UIDs (as :func:`~.sr.sr_uids`)."""
    study = str(result.study_instance_uid)
    model = model_identity(manifest)
    inputs = sorted({str(ds.SOPInstanceUID) for ds in sources})
    series_uid = generate_uid(entropy_srcs=[_UID_NAMESPACE, "series", study, model])
    instance_uid = generate_uid(entropy_srcs=[_UID_NAMESPACE, "instance", study, model,
                                              *inputs])
    return series_uid, instance_uid


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (no matplotlib import), else Pillow's own."""
    spec = importlib.util.find_spec("matplotlib")
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if draw.textlength(trial, font=font) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def _text_block(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font,
                width: int, fill=_FG, spacing: int = 4) -> int:
    """Draw wrapped text; return the y below it."""
    x, y = xy
    height = font.size if hasattr(font, "size") else 12
    for line in _wrap(draw, text, font, width):
        draw.text((x, y), line, font=font, fill=fill)
        y += height + spacing
    return y


def _thumbnail(image: np.ndarray | None, size: int) -> tuple[Image.Image | None, list]:
    """A model input as an RGB thumbnail, and the breast outline (polygons) on it."""
    if image is None:
        return None, []
    if image.dtype != np.uint8:
        image = (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(
            np.uint8)
    grey = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    # the breast as preprocessing left it: everything outside it is 0 (zero padding,
    # other components); its outline is the largest non-zero region's contour
    mask = (grey > 0).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    if contours:
        largest = max(contours, key=cv2.contourArea)
        if len(largest) >= 3:
            polygons.append([(int(p[0][0]), int(p[0][1])) for p in largest])
    return Image.fromarray(grey).convert("RGB"), polygons


def _bar_chart(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
               category: str | None, probabilities: Mapping[str, float] | None) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(60, 60, 70), width=1)
    head = _font(22, bold=True)
    draw.text((x0 + 12, y0 + 8), title, font=head, fill=_FG)
    if category is None or not probabilities:
        draw.text((x0 + 12, y0 + 44), "not assessed", font=_font(20), fill=_WARN)
        return
    draw.text((x0 + 12, y0 + 38), f"BI-RADS {category}: {CLASS_NAMES[category]}",
              font=_font(20, bold=True), fill=_ACCENT)
    small = _font(16)
    label_w = 315
    bar_x0, bar_x1 = x0 + 12 + label_w, x1 - 70
    row_h = (y1 - y0 - 80) // len(BIRADS)
    for i, cat in enumerate(BIRADS):
        p = float(probabilities.get(cat, 0.0))
        y = y0 + 72 + i * row_h
        draw.text((x0 + 12, y + 2), f"P({cat})  {CLASS_NAMES[cat]}", font=small,
                  fill=_FG if cat == category else _DIM)
        draw.rectangle((bar_x0, y, bar_x1, y + row_h - 10), outline=(70, 70, 80))
        fill_to = bar_x0 + round((bar_x1 - bar_x0) * max(0.0, min(1.0, p)))
        if fill_to > bar_x0:
            draw.rectangle((bar_x0, y, fill_to, y + row_h - 10),
                           fill=_BAR_TOP if cat == category else _BAR)
        draw.text((bar_x1 + 8, y + 2), f"{p:.2f}", font=small, fill=_FG)


@functools.lru_cache(maxsize=2)
def _watermark_mask(size: tuple[int, int]) -> Image.Image:
    """The diagonal NOT FOR CLINICAL USE as an 8-bit mask (drawn once per process: the
    rotation is the slowest step of the picture)."""
    font = _font(110, bold=True)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    w = int(probe.textlength(NOT_FOR_CLINICAL_USE, font=font))
    text = Image.new("L", (w + 40, 150), 0)
    ImageDraw.Draw(text).text((20, 10), NOT_FOR_CLINICAL_USE, font=font, fill=120)
    text = text.rotate(28, expand=True, resample=Image.Resampling.BICUBIC)
    mask = Image.new("L", size, 0)
    mask.paste(text, ((size[0] - text.width) // 2, (size[1] - text.height) // 2))
    return mask


@functools.lru_cache(maxsize=2)
def _watermark_tiles(size: tuple[int, int]) -> tuple[tuple[tuple[int, int], Image.Image], ...]:
    """The mask cut into bands of 16 rows, each cropped to its text: the diagonal text
    covers 5 % of the picture but its bounding box 77 %, and a paste costs by the area
    it covers (0.7 instead of 6.6 ms; the same pixels, tests/test_summary.py)."""
    mask, tiles = _watermark_mask(size), []
    for top in range(0, mask.height, 16):
        band = mask.crop((0, top, mask.width, min(top + 16, mask.height)))
        box = band.getbbox()
        if box:
            left, upper = box[0], top + box[1]
            tiles.append(((left, upper), mask.crop((left, upper, box[2], top + box[3]))))
    return tuple(tiles)


def _watermark(img: Image.Image) -> Image.Image:
    """NOT FOR CLINICAL USE across the image (diagonal, semi-transparent red)."""
    for corner, tile in _watermark_tiles(img.size):
        img.paste(_WATERMARK_RGB, corner, tile)
    return img


def render_summary(result: StudyResult, manifest: ModelManifest, *, sentence: str,
                   view_images: Mapping[str, np.ndarray] | None = None,
                   view_notes: Mapping[str, str] | None = None,
                   demo: bool = False) -> np.ndarray:
    """The summary picture as an ``(HEIGHT, WIDTH, 3)`` uint8 RGB array.

    Parameters
    ----------
    result
        The study's result.
    sentence
        The readable sentence (the SR's, :func:`~.sr.summary_text`).
    view_images
        Model inputs per slot (``"R-CC"`` ...) as the model saw them: [0, 1] floats or
        uint8 thumbnails.
    view_notes
        Per slot, why a view is missing or was not used.
    demo
        Draw NOT FOR CLINICAL USE across the image and in the banner.
    """
    view_images = view_images or {}
    view_notes = view_notes or {}
    img = Image.new("RGB", (WIDTH, HEIGHT), _BG)
    draw = ImageDraw.Draw(img)
    margin = 28
    y = 18
    if demo:
        draw.rectangle((0, 0, WIDTH, 44), fill=_RED)
        draw.text((margin, 8), f"{NOT_FOR_CLINICAL_USE} - demo model, synthetic training data",
                  font=_font(24, bold=True), fill=(255, 255, 255))
        y = 56
    draw.text((margin, y), "AI breast density (BI-RADS breast composition)",
              font=_font(22), fill=_DIM)
    y += 34
    exam = result.exam if (result.assessable and result.exam is not None) else None
    if exam is not None:
        big = _font(64, bold=True)
        label = f"BI-RADS {exam.category}"
        draw.text((margin, y), label, font=big, fill=_ACCENT)
        indent = margin + int(draw.textlength(label, font=big)) + 28
        y_text = _text_block(draw, (indent, y + 4), MQSA_SENTENCES[exam.category],
                             _font(28, bold=True), WIDTH - margin - indent)
        sides = ", ".join(
            (f"{SIDE_NAMES[s]} breast {b.category}" if (b := result.breasts.get(s))
             else f"{SIDE_NAMES[s]} breast not assessed") if s == "R" else
            (f"left breast {b.category}" if (b := result.breasts.get(s))
             else "left breast not assessed") for s in ("R", "L"))
        y_text = _text_block(draw, (indent, y_text + 2),
                             f"{sides}. Dense: {'yes' if exam.dense else 'no'}.", _font(24),
                             WIDTH - margin - indent)
        y = max(y + 80, y_text) + 8
    else:
        draw.text((margin, y), "Not assessable", font=_font(56, bold=True), fill=_WARN)
        y += 76

    # left: four views (2 x 2); right: bar charts per breast
    top = y + 6
    thumb = 190
    gap = 12
    for i, slot in enumerate(("R-CC", "L-CC", "R-MLO", "L-MLO")):
        col, row = i % 2, i // 2
        x0 = margin + col * (thumb + gap)
        y0 = top + row * (thumb + 34 + gap)
        draw.text((x0, y0), slot, font=_font(18, bold=True), fill=_FG)
        box = (x0, y0 + 24, x0 + thumb, y0 + 24 + thumb)
        draw.rectangle(box, outline=(60, 60, 70))
        picture, polygons = _thumbnail(view_images.get(slot), thumb)
        if picture is not None:
            img.paste(picture, (box[0], box[1]))
            for polygon in polygons:
                draw.line([(box[0] + px, box[1] + py) for px, py in polygon] +
                          [(box[0] + polygon[0][0], box[1] + polygon[0][1])],
                          fill=_ACCENT, width=2)
        else:
            note = view_notes.get(slot) or "missing"
            _text_block(draw, (box[0] + 8, box[1] + 8), note, _font(15), thumb - 16,
                        fill=_WARN)
    views_bottom = top + 2 * (thumb + 34 + gap)
    draw.text((margin, views_bottom), "Views as the model saw them (chest wall left); "
              "yellow: breast outline used", font=_font(14), fill=_DIM)

    charts_x = margin + 2 * (thumb + gap) + 20
    chart_h = (views_bottom - top - gap) // 2
    for i, side in enumerate(("R", "L")):
        breast = result.breasts.get(side) if exam is not None else None
        _bar_chart(draw, (charts_x, top + i * (chart_h + gap), WIDTH - margin,
                          top + i * (chart_h + gap) + chart_h),
                   f"{SIDE_NAMES[side]} breast",
                   breast.category if breast else None,
                   breast.probabilities if breast else None)

    # bottom: the SR's sentence (reasons, partial), model, software
    y = views_bottom + 30
    y = _text_block(draw, (margin, y), sentence, _font(18), WIDTH - 2 * margin)
    model = f"Model: {manifest.name} {manifest.version}"
    if result.model is not None and result.model.dense_model:
        model += f" (dense: {result.model.dense_model})"
    model += f"  |  mammo-density {__version__}  |  probabilities are the model's outputs, " \
             "not percent density"
    _text_block(draw, (margin, max(y + 4, HEIGHT - 40)), model, _font(15), WIDTH - 2 * margin,
                fill=_DIM)
    if demo:
        img = _watermark(img)
    return np.asarray(img, dtype=np.uint8)


# --------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------


def _view_notes(result: StudyResult, used: set[str]) -> dict[str, str]:
    notes: dict[str, str] = {}
    for w in result.warnings:
        slot, _, rest = w.partition(": ")
        if slot in SLOTS and "not used" in rest:
            notes[slot] = rest
    for slot in result.missing_views:
        notes.setdefault(slot, "missing from the study")
    for slot in SLOTS:
        notes.setdefault(slot, "used (no thumbnail at hand)" if slot in used else "not used")
    return notes


def build_summary_image(result: StudyResult, sources: Sequence[Dataset],
                        manifest: ModelManifest, *,
                        view_images: Mapping[str, np.ndarray] | None = None) -> Dataset:
    """The study's summary image as a highdicom ``SCImage`` (see the module docstring).

    Parameters
    ----------
    result, sources, manifest
        As for :func:`~mammo_density.worker.sr.build_density_sr`: the result, the headers
        of the images used (same study; never changed) and the model's manifest.
    view_images
        The model inputs per slot, drawn as thumbnails with the breast outline.

    Raises
    ------
    ValueError
        No source header (the image needs a study to belong to).
    """
    if not sources:
        raise ValueError("sources: at least one source image header is needed")
    study_uid = str(result.study_instance_uid)
    headers = [source_header(ds) for ds in sources]
    for i, h in enumerate(headers):
        if str(h.get("StudyInstanceUID", "")) != study_uid:
            raise ValueError(f"sources[{i}] belongs to another study than the result")
    demo = is_demo(result, manifest)
    sentence = summary_text(result, headers, not_for_clinical_use=demo)
    used = {v.slot for v in map(view_info, headers) if v.slot} | \
        {f"{v.laterality}-{v.view}" for v in result.views}
    pixels = render_summary(result, manifest, sentence=sentence, view_images=view_images,
                            view_notes=_view_notes(result, used), demo=demo)
    series_uid, instance_uid = summary_uids(result, manifest, sources)
    now = datetime.datetime.now().replace(microsecond=0)
    model_name = f"{manifest.name} {manifest.version}"[:64]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=headers[0],
        pixel_array=pixels,
        photometric_interpretation=(
            hd.PhotometricInterpretationValues.YBR_FULL_422
            if JPEGBaseline8Bit == TRANSFER_SYNTAX else hd.PhotometricInterpretationValues.RGB),
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=max(1, int(result.revision)),
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # placeholder, emptied below: not a body image
        manufacturer_model_name=model_name,
        software_versions=f"mammo-density {__version__}",
        series_description=series_description(demo, SERIES_DESCRIPTION),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set="ISO_IR 192",
        transfer_syntax_uid=TRANSFER_SYNTAX,
        contributing_equipment=[hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=model_name,
            software_versions=f"mammo-density {__version__}",
            contribution_description="AI breast density summary image",
        )],
    )
    sc.PatientOrientation = None  # type 2: a report picture has no patient orientation
    sc.Laterality = None          # type 2C: both breasts
    sc.ConversionType = "WSD"     # workstation
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.ImageComments = sentence[:10240]
    if sc.file_meta.TransferSyntaxUID.is_encapsulated:
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionMethod = "ISO_10918_1"
        ratio = pixels.nbytes / max(1, len(sc.PixelData))
        sc.LossyImageCompressionRatio = f"{ratio:.1f}"
    refs = []
    for h in headers:
        ref = Dataset()
        ref.ReferencedSOPClassUID = h.SOPClassUID
        ref.ReferencedSOPInstanceUID = h.SOPInstanceUID
        refs.append(ref)
    sc.SourceImageSequence = refs
    log.debug("built summary image", extra={"study": uid_hash(study_uid),
                                            "sc": uid_hash(instance_uid)})
    return sc


def warm_up() -> float:
    """Build and discard one summary image so the first study does not pay the fonts'
    and highdicom's lazy set-up (~1 s on 2 shared cores). Returns seconds spent."""
    import time

    from mammo_density.result import BreastResult, ExamResult

    start = time.perf_counter()
    study = generate_uid(entropy_srcs=[_UID_NAMESPACE, "warm-up"])
    ds = Dataset()
    ds.SOPClassUID = sop.MG_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[study, "R-CC"])
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
    ds.Modality, ds.ImageLaterality, ds.ViewPosition = "MG", "R", "CC"
    ds.Rows = ds.Columns = 8
    probs = {c: 0.25 for c in BIRADS}
    result = StudyResult(
        study_instance_uid=study,
        exam=ExamResult(category="B", probabilities=probs, dense=False, p_dense=0.5,
                        dense_source="birads4"),
        breasts={"R": BreastResult(category="B", probabilities=probs)})
    manifest = ModelManifest(name="warm-up", version="0", task="birads4",
                             classes=list(BIRADS), views={}, input_size=1,
                             preprocessing_version="0", files_sha256={}, training_data="",
                             not_for_clinical_use=True)
    build_summary_image(result, [ds], manifest,
                        view_images={"R-CC": np.zeros((8, 8), np.uint8)})
    return time.perf_counter() - start


__all__ = ["SECONDARY_CAPTURE", "SERIES_NUMBER", "build_summary_image", "render_summary",
           "summary_uids", "warm_up"]
