"""The density Structured Report (docs/sr.md), built with highdicom only.

A Comprehensive SR (or, as an option, Comprehensive 3D SR) whose root is TID 1500
"Imaging Measurement Report":

- observer context: the device (this software, with the model's name and version);
- procedure reported: (36626-0, LN) "Breast - bilateral Mammogram";
- image library: every image used, with Image Laterality (111027, DCM) and Image View
  (111031, DCM) added to each entry (highdicom's automatic library leaves them out);
- first, an overall group ("Overall breast composition", laterality Bilateral) opening
  with the readable sentence (:func:`mammo_density.wording.report_sentence`: BI-RADS
  category, the MQSA sentence, each breast, dense yes/no, partial-study and
  not-for-clinical-use notes), then the denser breast's class, the dense flag and the
  partial-study flag (private scheme ``99MDENS``, values SNOMED Yes/No);
- one TID 1501 measurement group per assessed breast ("Right breast composition",
  "Left breast composition") with the class, one probability per class (a private code
  per class, "Probability of BI-RADS C (heterogeneously dense)", value 0-1 with two
  decimals, UCUM unit "1"; never "%", which would read as percent density), the
  accumulated AGD where known and the breast's images as source of measurement.

Every container is SEPARATE (ContinuityOfContent), so SR viewers such as dcmtk's
``dsr2html`` show each value on its own line with its label; SeriesDate/SeriesTime and
ContentDate/ContentTime are set, and a demo model's SeriesDescription *starts* with
"NOT FOR CLINICAL USE" (viewers cut long descriptions at the end). docs/sr.md describes
the layout and the codes.

Not-assessable result: the SR still goes out, so the radiologist sees that the AI looked
at the study and why it gave no class. It has only the overall group, with the finding
site, the algorithm, the sentence "BI-RADS breast density (AI): not assessable (...)"
and the partial-study flag; no composition, no dense flag, no probabilities. A study
without any usable source image header cannot have an SR at all (the SR needs
evidence): :func:`build_density_sr` raises ``ValueError`` then.

UIDs are deterministic (:func:`sr_uids`): the same study, model and input images give the
same Series/SOP Instance UIDs, so a re-run is idempotent downstream; a changed input
gives a new SOP Instance UID in the same series.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from mammo_density import __version__
from mammo_density.dicom_values import clean_dataset, invalid_uids
from mammo_density.logsetup import uid_hash
from mammo_density.manifest import ModelManifest
from mammo_density.result import BIRADS, StudyResult
from mammo_density.study import codes, sop
from mammo_density.study.slots import SLOTS
from mammo_density.study.unused import describe
from mammo_density.study.views import laterality_of, view_info
from mammo_density.wording import (
    CLASS_NAMES,
    NOT_FOR_CLINICAL_USE,
    probability_label,
    reasons,
    report_sentence,
)
from mammo_density.worker import iod_lookup

log = logging.getLogger(__name__)

iod_lookup.install()  # highdicom's per-image SOP class check, once per class (~5 ms each)

# --- fixed identity of the SR series --------------------------------------------------
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI breast density (BI-RADS)"
MANUFACTURER = "mammo-density"
DEVICE_NAME = "mammo-density"
PRIVATE_SCHEME = "99MDENS"
_UID_NAMESPACE = "mammo-density/sr/1"

# --- codes (PS3.16; docs/sr.md) -------------------------------------------------------
CLASS_CODES: dict[str, Code] = {cat: c.code for cat, c in codes.DENSITY.items()}  # CID 6000
CLASS_BY_CODE = {code.value: cat for cat, code in CLASS_CODES.items()}
BREAST_COMPOSITION = Code("129715009", "SCT", "Breast composition")
BREAST = Code("76752008", "SCT", "Breast")
LATERALITY_CODES: dict[str, Code] = {s: c.code for s, c in codes.LATERALITY.items()}  # CID 244
SIDE_BY_CODE = {code.value: side for side, code in LATERALITY_CODES.items()}
PROCEDURE = Code("36626-0", "LN", "Breast - bilateral Mammogram")
FINDING = Code("121071", "DCM", "Finding")
AGD = Code("111637", "DCM", "Accumulated Average Glandular Dose")
IMAGE_LATERALITY = Code("111027", "DCM", "Image Laterality")
IMAGE_VIEW = Code("111031", "DCM", "Image View")
DENSE = Code("DENSE", PRIVATE_SCHEME, "Dense breast tissue")
PARTIAL = Code("PARTIAL", PRIVATE_SCHEME, "Partial study")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
NO_UNITS = Code("1", "UCUM", "no units")
PERCENT = Code("%", "UCUM", "Percent")  # read back from SRs written before 0.2 only
#: Per-class probability, named as one (private codes PROB-A ... PROB-D).
PROBABILITY_CODES: dict[str, Code] = {
    c: Code(f"PROB-{c}", PRIVATE_SCHEME, probability_label(c)) for c in BIRADS}
CLASS_BY_PROBABILITY_CODE = {code.value: cat for cat, code in PROBABILITY_CODES.items()}
MGY = Code("mGy", "UCUM", "Milligray")
DEVICE = Code("121007", "DCM", "Device")
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
VIEW_CODES: dict[str, Code] = {v: c.code for v, c in codes.VIEWS.items() if c.sct}  # CID 4014
VIEW_BY_CODE = {code.value: view for view, code in VIEW_CODES.items()}

CLASS_TEXT = CLASS_NAMES
GROUP_NAMES = {"R": "Right breast composition", "L": "Left breast composition",
               "B": "Overall breast composition"}

# Type-2 attributes some modalities omit, which highdicom reads from the sources.
_TYPE2_STUDY = ("StudyID", "AccessionNumber", "PatientBirthDate", "PatientSex",
                "StudyDate", "StudyTime", "ReferringPhysicianName", "PatientName",
                "PatientID")
_PIXEL_TAG = Tag(0x7FE0, 0x0010)
_ICON_TAG = Tag(0x0088, 0x0200)


# --------------------------------------------------------------------------------------
# UIDs
# --------------------------------------------------------------------------------------


def model_identity(manifest: ModelManifest) -> str:
    """Stable digest of a model: name, version and every file's sha256."""
    text = "\n".join([manifest.name, manifest.version, manifest.task,
                      *(f"{k}={v}" for k, v in sorted(manifest.files_sha256.items()))])
    return hashlib.sha256(text.encode()).hexdigest()


def sr_uids(result: StudyResult, manifest: ModelManifest, sources: Sequence[Dataset], *,
            comprehensive_3d: bool = False) -> tuple[str, str]:
    """Deterministic ``(series_uid, sop_instance_uid)`` of a study's density SR.

    The series depends on the study and the model; the instance also on the SOP Instance
    UIDs of the input images (in any order) and on the SR SOP class, so the same study,
    model and images always give the same SR UIDs and any change gives a new instance.
    """
    study = str(result.study_instance_uid)
    model = model_identity(manifest)
    inputs = sorted({str(ds.SOPInstanceUID) for ds in sources})
    series_uid = generate_uid(entropy_srcs=[_UID_NAMESPACE, "series", study, model])
    instance_uid = generate_uid(entropy_srcs=[
        _UID_NAMESPACE, "instance", study, model, "3d" if comprehensive_3d else "2d", *inputs])
    return series_uid, instance_uid


# --------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------


class SourceHeader(Dataset):
    """A source image's header as the report objects read it: made by
    :func:`source_header`, read and never changed by :func:`build_density_sr` and the
    summary image, so one copy per image serves both."""


def source_header(src: Dataset) -> SourceHeader:
    """Header of a source image (no pixel data), with empty values for the type-2 study
    attributes highdicom copies but some modalities omit. The caller's dataset is never
    changed; a :class:`SourceHeader` is returned as it is (already such a copy)."""
    if isinstance(src, SourceHeader):
        return src
    hdr = SourceHeader()
    for elem in src:  # iteration decodes with the source's own character set
        if elem.tag >= _PIXEL_TAG:
            break
        if elem.tag.is_private or 0x6000 <= elem.tag.group <= 0x60FF \
                or elem.tag == _ICON_TAG:
            continue  # vendor blobs, overlays and icons: large and not needed here
        # own elements (what is set on the copy never reaches the source); a value is
        # replaced, never changed in place, except inside sequences: those are deep copies
        hdr.add(copy.deepcopy(elem) if elem.VR == "SQ" else copy.copy(elem))
    for keyword in _TYPE2_STUDY:
        if keyword not in hdr:
            setattr(hdr, keyword, None)
    # Every copied value valid for its VR, corrected or left empty (seen: PatientAge
    # "732.0m", StudyDate "2026-01-01"): an empty value is better than no or a bad SR.
    clean_dataset(hdr)
    if str(hdr.get("PatientSex") or "").strip().upper() not in ("", "M", "F", "O"):
        hdr.PatientSex = None  # e.g. "U": not a DICOM value; highdicom raises on it
    elif hdr.get("PatientSex"):
        hdr.PatientSex = str(hdr.PatientSex).strip().upper()
    return hdr


def _library_copy(hdr: Dataset) -> Dataset:
    """The header as the image library sees it.

    highdicom adds the TID 1603 projection descriptors (patient orientation row/column,
    pixel spacing) for MG images and raises when the header lacks them; an SR cannot
    carry an empty NUM or TEXT there either. So when PatientOrientation (two components)
    or ImagerPixelSpacing (else PixelSpacing) is missing, the entry keeps the TID 1602
    descriptors only (modality from the SOP class, rows, columns, laterality, view):
    the copy is marked with a non-projection Modality, which the library uses for
    nothing else.
    """
    lib = Dataset()
    for elem in hdr:
        lib.add(copy.copy(elem))  # own elements: setting Modality must not touch hdr
    orientation = list(lib.get("PatientOrientation") or [])
    spacing = lib.get("ImagerPixelSpacing") or lib.get("PixelSpacing")
    if len(orientation) == 2 and all(orientation) and spacing is not None \
            and len(spacing) == 2:
        lib.ImagerPixelSpacing = list(spacing)
    else:
        lib.Modality = "OT"
    return lib


def _check_sources(sources: Sequence[Dataset], study_uid: str) -> None:
    if not sources:
        raise ValueError("sources: at least one source image header is needed (SR evidence)")
    for i, ds in enumerate(sources):
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                        "SeriesInstanceUID", "Rows", "Columns"):
            if keyword not in ds:
                raise ValueError(f"sources[{i}] lacks {keyword}")
        bad = invalid_uids(ds)
        if bad:
            raise ValueError(f"sources[{i}]: {', '.join(bad)} not a valid UID")
        if str(ds.StudyInstanceUID) != study_uid:
            raise ValueError(
                f"sources[{i}] belongs to another study than result.study_instance_uid")


def _probability(p: float) -> float:
    """A class probability as written: 0-1, two decimals."""
    return round(max(0.0, min(1.0, float(p))), 2)


def _class_measurements(probabilities: dict[str, float]) -> list[Measurement]:
    return [Measurement(name=PROBABILITY_CODES[c], value=_probability(probabilities[c]),
                        unit=NO_UNITS)
            for c in BIRADS if c in probabilities]


def _slot_names(result: StudyResult, sources: Sequence[Dataset]) -> list[str]:
    unused = {u.image for u in result.unused_images}
    slots = {v.slot for v in map(view_info, (ds for ds in sources if uid_hash(
        str(ds.get("SOPInstanceUID", ""))) not in unused)) if v.slot}
    slots |= {f"{v.laterality}-{v.view}" for v in result.views}
    return [s for s in SLOTS if s in slots]


def summary_text(result: StudyResult, sources: Sequence[Dataset], *,
                 not_for_clinical_use: bool = False) -> str:
    """The readable sentence that opens the overall group (also on the summary image)."""
    used = _slot_names(result, sources)
    missing = [s for s in result.missing_views if s not in used] or \
        ([s for s in SLOTS if s not in used] if result.partial else [])
    assessable = result.assessable and result.exam is not None
    exam = result.exam if assessable else None
    return report_sentence(
        category=exam.category if exam else None,
        sides={side: (b.category if (b := result.breasts.get(side)) else None)
               for side in ("R", "L")},
        dense=exam.dense if exam else None,
        used=used, missing=missing,
        not_used=describe(result.unused_images) if exam is not None else "",
        reasons=reasons(result.warnings, assessable=assessable),
        low_confidence=result.low_confidence_reasons if exam and result.low_confidence
        else (),
        not_for_clinical_use=not_for_clinical_use)


def series_description(demo: bool, what: str = SERIES_DESCRIPTION) -> str:
    """SeriesDescription: a demo model's starts with NOT FOR CLINICAL USE (viewers cut
    the end of long descriptions)."""
    return (f"{NOT_FOR_CLINICAL_USE} - {what}" if demo else what)[:64]


def is_demo(result: StudyResult, manifest: ModelManifest) -> bool:
    """True when the model says NOT FOR CLINICAL USE (manifest or result)."""
    return bool(manifest.not_for_clinical_use
                or (result.model is not None and result.model.not_for_clinical_use))


def _separate(item: Any) -> None:
    """ContinuityOfContent SEPARATE on a container and every container below it."""
    if str(item.get("ValueType", "")) == "CONTAINER" or "ContinuityOfContent" in item:
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate(child)


def _library_descriptors(hdr: Dataset) -> list[CodeContentItem]:
    info = view_info(hdr)
    items = []
    if info.laterality in LATERALITY_CODES:
        items.append(CodeContentItem(name=IMAGE_LATERALITY, value=LATERALITY_CODES[info.laterality],
                                     relationship_type=RelationshipTypeValues.HAS_ACQ_CONTEXT))
    if info.view in VIEW_CODES:
        items.append(CodeContentItem(name=IMAGE_VIEW, value=VIEW_CODES[info.view],
                                     relationship_type=RelationshipTypeValues.HAS_ACQ_CONTEXT))
    return items


def _add_laterality_and_view(report: MeasurementReport, headers: dict[str, Dataset]) -> None:
    """Add TID 1602 Image Laterality / Image View to each image of the library."""
    library = [item for item in report[0].ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == "111028"]
    for lib in library:
        for group in lib.ContentSequence:
            for entry in group.get("ContentSequence", []):
                if entry.ValueType != "IMAGE":
                    continue
                uid = str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                hdr = headers.get(uid)
                if hdr is not None:
                    entry.ContentSequence.extend(_library_descriptors(hdr))


def _sr_document(sop_class: type[hd.sr.ComprehensiveSR], report: MeasurementReport,
                 **kwargs: Any) -> hd.sr.ComprehensiveSR:
    """``sop_class(content=report, **kwargs)``, without the constructor's second pass over
    the content tree.

    The SOP class constructor deep-copies the content, parses the copy back into content
    items and searches it for references (twice) before it puts the root container's own
    elements into the document. For a tree that highdicom's templates have just built
    from the same headers as the evidence, that pass is over half of the SR's build time
    and changes nothing in the document: the evidence sequence lists every evidence
    header either way, and the content references nothing else. So the constructor gets
    the root container without its children, and the document then takes the root's
    elements, as the constructor itself does. tests/test_sr.py checks that the bytes
    written are those of the plain construction.
    """
    root = report[0]
    shell = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            shell.add(elem)
    shell.ContentSequence = []
    sr = sop_class(content=shell, **kwargs)
    for tag, elem in root.items():
        sr[tag] = elem
    sr._content = ContentSequence([root], is_root=True)  # what ``sr.content`` returns
    return sr


def build_density_sr(result: StudyResult, sources: Sequence[Dataset], manifest: ModelManifest,
                     *, comprehensive_3d: bool = False) -> Dataset:
    """Build the density SR of one study (docs/sr.md).

    Parameters
    ----------
    result
        The study's density result (``StudyResult``).
    sources
        Headers of the images used (pixel data not needed); same study as ``result``.
        They are copied (:func:`source_header`; a :class:`SourceHeader` is used as it
        is), never changed.
    manifest
        The model's manifest: name/version go into the algorithm identification and the
        device observer; ``not_for_clinical_use`` marks SeriesDescription and the text.
    comprehensive_3d
        Write Comprehensive 3D SR Storage instead of Comprehensive SR
        (:data:`mammo_density.study.sop.COMPREHENSIVE_3D_SR` / ``COMPREHENSIVE_SR``); the
        content is the same.

    Returns
    -------
    pydicom.Dataset
        A highdicom SR dataset, ready for ``save_as`` / C-STORE.

    Raises
    ------
    ValueError
        No source header, a source of another study or one lacking required attributes.
    """
    study_uid = str(result.study_instance_uid)
    _check_sources(sources, study_uid)
    headers = [source_header(ds) for ds in sources]
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    series_uid, instance_uid = sr_uids(result, manifest, sources,
                                       comprehensive_3d=comprehensive_3d)
    demo = is_demo(result, manifest)

    algorithm = AlgorithmIdentification(name=manifest.name, version=manifest.version,
                                        manufacturer=MANUFACTURER)
    device = ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[_UID_NAMESPACE, "device", manifest.name,
                                           manifest.version]),
            name=DEVICE_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=f"{manifest.name} {manifest.version}"[:64],
        ),
    )

    def tracking(label: str) -> TrackingIdentifier:
        return TrackingIdentifier(
            identifier=label,
            uid=generate_uid(entropy_srcs=[instance_uid, label]),
        )

    def sources_for(side: str | None) -> list[SourceImageForMeasurementGroup]:
        return [SourceImageForMeasurementGroup(referenced_sop_class_uid=h.SOPClassUID,
                                               referenced_sop_instance_uid=h.SOPInstanceUID)
                for h in headers if side is None or laterality_of(h) == side]

    assessable = result.assessable and result.exam is not None
    exam = result.exam if assessable else None
    partial = bool(result.partial or result.missing_views)
    evaluations = [QualitativeEvaluation(PARTIAL, YES if partial else NO)]
    if exam is not None:
        evaluations[:0] = [QualitativeEvaluation(BREAST_COMPOSITION, CLASS_CODES[exam.category]),
                           QualitativeEvaluation(DENSE, YES if exam.dense else NO)]
    overall = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(GROUP_NAMES["B"]),
        finding_type=BREAST_COMPOSITION,
        finding_sites=[FindingSite(BREAST, laterality=LATERALITY_CODES["B"])],
        algorithm_id=algorithm,
        measurements=_class_measurements(exam.probabilities) if exam else None,
        qualitative_evaluations=evaluations,
        source_images=sources_for(None),
    )
    # The readable sentence first: viewers that show the group show it before any value.
    overall[0].ContentSequence.insert(0, TextContentItem(
        name=FINDING,
        value=summary_text(result, headers, not_for_clinical_use=demo),
        relationship_type=RelationshipTypeValues.CONTAINS,
    ))
    groups: list[MeasurementsAndQualitativeEvaluations] = [overall]
    if exam is not None:
        for side in ("R", "L"):
            breast = result.breasts.get(side)
            if breast is None:
                continue
            measurements = _class_measurements(breast.probabilities)
            dose = result.dose.breasts.get(side) if result.dose else None
            if dose is not None and dose.agd_mgy is not None:
                measurements.append(Measurement(name=AGD, value=round(float(dose.agd_mgy), 4),
                                                unit=MGY))
            groups.append(MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking(GROUP_NAMES[side]),
                finding_type=BREAST_COMPOSITION,
                finding_sites=[FindingSite(BREAST, laterality=LATERALITY_CODES[side])],
                algorithm_id=algorithm,
                measurements=measurements,
                qualitative_evaluations=[QualitativeEvaluation(BREAST_COMPOSITION,
                                                               CLASS_CODES[breast.category])],
                source_images=sources_for(side) or None,
            ))

    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[_library_copy(h) for h in headers],
    )
    _add_laterality_and_view(report, by_uid)
    _separate(report[0])

    now = datetime.datetime.now().replace(microsecond=0)
    sop_class = hd.sr.Comprehensive3DSR if comprehensive_3d else hd.sr.ComprehensiveSR
    sr = _sr_document(
        sop_class, report,
        evidence=headers,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=max(1, int(result.revision)),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{manifest.name} {manifest.version}"[:64],
        software_versions=f"mammo-density {__version__}",
        series_description=series_description(demo),
        series_date=now.date(),
        series_time=now.time(),
        content_date=now.date(),
        content_time=now.time(),
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="mammo-density private codes",
            responsible_organization="mammo-density",
        )],
        specific_character_set="ISO_IR 192",
        contributing_equipment=[hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=f"{manifest.name} {manifest.version}"[:64],
            software_versions=f"mammo-density {__version__}",
            contribution_description="AI breast density assessment",
        )],
    )
    log.debug("built density SR",
              extra={"study": uid_hash(study_uid), "sr": uid_hash(instance_uid)})
    return sr


def warm_up() -> float:
    """Build and discard one SR so the first real one does not pay highdicom's and
    pydicom's lazy initialisation (the first build costs several times a warm one; see
    benchmarks/sr_build.py). Call it once when a worker starts. Returns seconds spent."""
    from mammo_density.result import BreastResult, ExamResult

    start = time.perf_counter()
    study = generate_uid(entropy_srcs=[_UID_NAMESPACE, "warm-up"])
    sources = []
    for slot in SLOTS:
        side, view = slot.split("-")
        ds = Dataset()
        ds.SOPClassUID = sop.MG_FOR_PRESENTATION
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[study, slot])
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
        ds.Modality = "MG"
        ds.ImageLaterality, ds.ViewPosition = side, view
        ds.PatientOrientation = ["P", "L"] if side == "R" else ["A", "R"]
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.Rows = ds.Columns = 8
        sources.append(ds)
    probs = {c: 0.25 for c in BIRADS}
    result = StudyResult(
        study_instance_uid=study,
        exam=ExamResult(category="B", probabilities=probs, dense=False, p_dense=0.5,
                        dense_source="birads4"),
        breasts={s: BreastResult(category="B", probabilities=probs) for s in ("R", "L")})
    manifest = ModelManifest(name="warm-up", version="0", task="birads4",
                             classes=list(BIRADS), views={}, input_size=1,
                             preprocessing_version="0", files_sha256={}, training_data="")
    build_density_sr(result, sources, manifest).save_as(io.BytesIO(), enforce_file_format=True)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Reader (reference for tests and the Orthanc REST route)
# --------------------------------------------------------------------------------------


def _code_value(item: Any) -> str:
    seq = item.get("ConceptCodeSequence") or []
    return str(seq[0].CodeValue) if seq else ""


def _name_value(item: Any) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].CodeValue) if seq else ""


def read_density_sr(ds: Dataset) -> dict[str, Any]:
    """Read back what :func:`build_density_sr` wrote.

    Parses the document with highdicom (``ComprehensiveSR`` / ``Comprehensive3DSR``
    ``.from_dataset``), then walks the TID 1501 groups.

    Returns
    -------
    dict
        ``study_instance_uid``, ``sop_instance_uid``, ``series_instance_uid``,
        ``categories`` ({"R": "C", "L": "B"}), ``overall`` ("C" or None), ``dense``
        (bool or None), ``probabilities`` ({"R": {"A": 0.1, ...}, "L": ..., "overall": ...};
        fractions), ``agd_mgy`` ({"R": 1.2}), ``text``, ``algorithm`` ({"name", "version"}),
        ``images`` ({sop_uid: {"laterality", "view"}}), ``sources`` ({"R": [sop uids]...}),
        ``not_for_clinical_use``, ``assessable``.
    """
    sop_class = str(ds.SOPClassUID)
    if sop_class == sop.COMPREHENSIVE_3D_SR:
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    elif sop_class == sop.COMPREHENSIVE_SR:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    else:
        raise ValueError(f"not a Comprehensive (3D) SR: SOP class {sop_class}")
    report = sr.content
    if not isinstance(report, MeasurementReport):
        raise ValueError("SR root is not TID 1500 Imaging Measurement Report")
    out: dict[str, Any] = {
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_description": str(ds.get("SeriesDescription", "")),
        "categories": {}, "overall": None, "dense": None, "probabilities": {},
        "agd_mgy": {}, "text": "", "algorithm": {}, "images": {}, "sources": {},
        "partial": None,
        "series_date": str(ds.get("SeriesDate", "")),
        "series_time": str(ds.get("SeriesTime", "")),
        "content_date": str(ds.get("ContentDate", "")),
        "content_time": str(ds.get("ContentTime", "")),
    }
    for group in report.get_image_measurement_groups(finding_type=BREAST_COMPOSITION):
        sites = group.finding_sites
        side = "B"
        if sites and sites[0].laterality is not None:
            side = SIDE_BY_CODE.get(sites[0].laterality.value, "B")
        key = "overall" if side == "B" else side
        probs: dict[str, float] = {}
        for m in group.get_measurements():
            if m.name.value in CLASS_BY_PROBABILITY_CODE:
                probs[CLASS_BY_PROBABILITY_CODE[m.name.value]] = float(m.value)
            elif m.name.value in CLASS_BY_CODE:  # before 0.2: CID 6000 code, in %
                probs[CLASS_BY_CODE[m.name.value]] = float(m.value) / 100.0
            elif m.name == AGD:
                out["agd_mgy"][side] = float(m.value)
        if probs:
            out["probabilities"][key] = probs
        for q in group.get_qualitative_evaluations():
            if q.name == BREAST_COMPOSITION:
                category = CLASS_BY_CODE.get(q.value.value)
                if side == "B":
                    out["overall"] = category
                else:
                    out["categories"][side] = category
            elif q.name == DENSE:
                out["dense"] = q.value == YES
            elif q.name == PARTIAL:
                out["partial"] = q.value == YES
        out["sources"][key] = [str(s.referenced_sop_instance_uid) for s in group.source_images]
        for item in group[0].ContentSequence:
            if item.ValueType != "TEXT":
                continue
            name = _name_value(item)
            if name == FINDING.value:
                out["text"] = str(item.TextValue)
            elif name == "111001":  # Algorithm Name
                out["algorithm"]["name"] = str(item.TextValue)
            elif name == "111003":  # Algorithm Version
                out["algorithm"]["version"] = str(item.TextValue)
    for item in report[0].ContentSequence:
        if _name_value(item) != "111028":
            continue
        for lib_group in item.ContentSequence:
            for entry in lib_group.get("ContentSequence", []):
                if entry.ValueType != "IMAGE":
                    continue
                info: dict[str, str | None] = {"laterality": None, "view": None}
                for d in entry.get("ContentSequence", []):
                    if _name_value(d) == IMAGE_LATERALITY.value:
                        info["laterality"] = SIDE_BY_CODE.get(_code_value(d))
                    elif _name_value(d) == IMAGE_VIEW.value:
                        info["view"] = VIEW_BY_CODE.get(_code_value(d))
                uid = str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                out["images"][uid] = info
    out["assessable"] = out["overall"] is not None
    out["not_for_clinical_use"] = \
        NOT_FOR_CLINICAL_USE.lower() in out["series_description"].lower()
    if out["partial"] is None:  # SRs before 0.2 did not code it
        out["partial"] = len(out["categories"]) < 2
    return out


__all__ = [
    "SourceHeader",
    "build_density_sr",
    "is_demo",
    "model_identity",
    "read_density_sr",
    "series_description",
    "source_header",
    "sr_uids",
    "summary_text",
    "warm_up",
]
