"""The density SR (docs/sr.md): validity (dciodvfy, dsrdump), read-back with highdicom,
codes, readability (SEPARATE containers, dsr2html labels), partial and not-assessable
studies, real vendor headers, deterministic UIDs."""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.coding import Code

from mammo_density.result import StudyResult
from mammo_density.wording import MQSA_SENTENCES
from mammo_density.worker.sr import build_density_sr, read_density_sr, sr_uids
from tests import srdata
from tests.services import dciodvfy, dsr2html, dsrdump, require_testdata

pytestmark = pytest.mark.services

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
CLASS_CODES = {"A": "129716005", "B": "129717001", "C": "129718006", "D": "129719003"}
PROB_CODES = {"A": "PROB-A", "B": "PROB-B", "C": "PROB-C", "D": "PROB-D"}
EXPECTED_WARNING = "99MDENS"


def _save(sr: pydicom.Dataset, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    sr.save_as(path, enforce_file_format=True)
    return path


def assert_valid(path: Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    unexpected = [w for w in warnings if EXPECTED_WARNING not in w]
    assert unexpected == [], "\n".join(unexpected)
    proc = dsrdump(path)
    assert proc.returncode == 0, proc.stderr


def _code(item) -> tuple[str, str]:
    seq = item.ConceptCodeSequence[0]
    return str(seq.CodeValue), str(seq.CodingSchemeDesignator)


def _groups(report) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    groups = report.get_image_measurement_groups(
        finding_type=Code("129715009", "SCT", "Breast composition"))
    return {g.tracking_identifier: g for g in groups}


@pytest.fixture(scope="module")
def four_view(tmp_path_factory: pytest.TempPathFactory):
    sources = srdata.mg_study()
    man = srdata.manifest(demo=True)
    result = srdata.result_for(sources, agd={"R": 1.23, "L": 1.5}, man=man)
    sr = build_density_sr(result, sources, man)
    path = _save(sr, tmp_path_factory.mktemp("sr"))
    return sources, result, man, sr, path


@pytest.mark.services
def test_four_view_sr_is_valid(four_view) -> None:
    *_, path = four_view
    assert_valid(path)


def test_header_attributes(four_view) -> None:
    sources, *_, path = four_view
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_SR
    assert ds.Modality == "SR"
    assert ds.SeriesNumber == 9901
    assert "density" in ds.SeriesDescription.lower()
    assert ds.SeriesDescription.startswith("NOT FOR CLINICAL USE")
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        assert str(ds.get(keyword, "")).strip(), keyword
    assert (ds.SeriesDate, ds.SeriesTime) <= (ds.ContentDate, ds.ContentTime)
    assert ds.CompletionFlag == "COMPLETE"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                    "AccessionNumber", "StudyID", "StudyDate"):
        assert ds.get(keyword) == sources[0].get(keyword), keyword
    assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    evidence = {ref.ReferencedSOPInstanceUID
                for study in ds.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}
    assert evidence == {s.SOPInstanceUID for s in sources}
    purposes = {item.PurposeOfReferenceCodeSequence[0].CodeValue
                for item in ds.ContributingEquipmentSequence}
    assert "109102" in purposes
    schemes = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    assert "99MDENS" in schemes


def _containers(item):
    if item.get("ValueType") == "CONTAINER":
        yield item
    for child in item.get("ContentSequence", []):
        yield from _containers(child)


def test_every_container_is_separate(four_view) -> None:
    *_, path = four_view
    ds = pydicom.dcmread(path)
    containers = list(_containers(ds))
    assert len(containers) >= 6  # report, library (+ group), measurements, 3 groups
    assert {c.ContinuityOfContent for c in containers} == {"SEPARATE"}


def test_sentence_first_then_values(four_view) -> None:
    """The overall group comes first and opens with the readable sentence."""
    *_, path = four_view
    report = hd.sr.srread(path).content
    measurements = next(it for it in report[0].ContentSequence
                    if it.ConceptNameCodeSequence[0].CodeValue == "126010")
    first_group = measurements.ContentSequence[0]
    first_item = first_group.ContentSequence[0]
    assert first_item.ValueType == "TEXT"
    assert first_item.ConceptNameCodeSequence[0].CodeValue == "121071"
    assert first_item.TextValue == (
        "BI-RADS breast density (AI): C. " + MQSA_SENTENCES["C"] +
        " Right breast C, left breast B. Dense: yes. NOT FOR CLINICAL USE (demo model).")


def _html_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_dsr2html_labels_every_value(four_view) -> None:
    """Each number dsr2html shows has its label; probabilities read as probabilities."""
    _sources, result, _, _sr, path = four_view
    proc = dsr2html(path)
    assert proc.returncode == 0, proc.stderr
    page = proc.stdout
    lines = page.splitlines()
    numbers = 0
    for i, line in enumerate(lines):
        value = re.fullmatch(r'<span class="under">(-?\d[\d.]*)( .*)?</span>', line)
        if value:
            numbers += 1
            assert re.fullmatch(r"<b>[^<]*[A-Za-z][^<]*:</b><br>", lines[i - 1]), \
                f"unlabelled value {line!r} after {lines[i - 1]!r}"
        for m in re.finditer(r"(\S[^=<>]*?) = (-?\d[\d.]*)", _html_text(line)):
            assert re.search(r"[A-Za-z]", m.group(1)), f"unlabelled value in {line!r}"
    # 4 probabilities x 3 groups + 2 AGD values
    assert numbers == 14, numbers
    text = _html_text(page)
    assert "%" not in text  # the old "84.1591 %" read as percent density
    names = {"A": "almost entirely fatty", "B": "scattered fibroglandular density",
             "C": "heterogeneously dense", "D": "extremely dense"}
    for side, label in (("R", "Right"), ("L", "Left")):
        block = text[text.index(f"{label} breast composition"):]
        for cat, name in names.items():
            p = round(result.breasts[side].probabilities[cat], 2)
            assert f"Probability of BI-RADS {cat} ({name}):\n{p:g} 1\n" in block, cat
    # the readable sentence comes before the first value
    assert text.index("BI-RADS breast density (AI): C.") < text.index("Probability of BI-RADS")


def test_srread_reads_back_every_value(four_view) -> None:
    sources, result, man, _, path = four_view
    sr = hd.sr.srread(path)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    root = report[0]
    assert root.ConceptNameCodeSequence[0].CodeValue == "126000"
    items = {it.ConceptNameCodeSequence[0].CodeValue: it for it in root.ContentSequence}
    assert _code(items["121058"]) == ("36626-0", "LN")  # procedure reported
    assert _code(items["121005"]) == ("121007", "DCM")  # observer type: device
    device = [it for it in root.ContentSequence
              if it.ConceptNameCodeSequence[0].CodeValue in {"121012", "121013", "121014",
                                                            "121015"}]
    names = {it.ConceptNameCodeSequence[0].CodeValue: getattr(it, "TextValue", None)
             or getattr(it, "UID", None) for it in device}
    assert names["121012"]  # Device Observer UID
    assert names["121013"] == "mammo-density"
    assert names["121014"] == "mammo-density"
    assert names["121015"] == f"{man.name} {man.version}"

    # Image library: laterality and view per image.
    library = items["111028"]
    entries = [e for g in library.ContentSequence for e in g.ContentSequence
               if e.ValueType == "IMAGE"]
    assert len(entries) == 4
    by_uid = {s.SOPInstanceUID: s for s in sources}
    view_codes = {"CC": "399162004", "MLO": "399368009"}
    side_codes = {"R": "24028007", "L": "7771000"}
    for entry in entries:
        src = by_uid[entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        desc = {d.ConceptNameCodeSequence[0].CodeValue: d for d in entry.ContentSequence}
        assert _code(desc["111027"]) == (side_codes[src.ImageLaterality], "SCT")
        assert _code(desc["111031"]) == (view_codes[src.ViewPosition], "SCT")

    groups = _groups(report)
    assert set(groups) == {"Right breast composition", "Left breast composition",
                           "Overall breast composition"}
    for label, side, code in (("Right breast composition", "R", "24028007"),
                              ("Left breast composition", "L", "7771000"),
                              ("Overall breast composition", None, "51440002")):
        group = groups[label]
        site = group.finding_sites[0]
        assert (site.value.value, site.value.scheme_designator) == ("76752008", "SCT")
        assert site.laterality.value == code
        texts = {it.ConceptNameCodeSequence[0].CodeValue: it.TextValue
                 for it in group[0].ContentSequence if it.ValueType == "TEXT"}
        assert texts["111001"] == man.name and texts["111003"] == man.version
        quals = {q.name.value: q.value for q in group.get_qualitative_evaluations()}
        schemes = {q.name.value: q.name.scheme_designator
                   for q in group.get_qualitative_evaluations()}
        if side is None:
            assert quals["129715009"].value == CLASS_CODES[result.exam.category]
            assert quals["DENSE"].value == "373066001"  # Yes
            assert schemes["DENSE"] == "99MDENS"
            assert quals["PARTIAL"].value == "373067005"  # No
            assert schemes["PARTIAL"] == "99MDENS"
            assert texts["121071"].startswith(
                "BI-RADS breast density (AI): C. The breasts are heterogeneously dense")
            assert texts["121071"].endswith("NOT FOR CLINICAL USE (demo model).")
            srcs = {s.referenced_sop_instance_uid for s in group.source_images}
            assert srcs == set(by_uid)
            continue
        breast = result.breasts[side]
        assert quals["129715009"].value == CLASS_CODES[breast.category]
        nums = {m.name.value: m for m in group.get_measurements()}
        for cat, code in PROB_CODES.items():
            assert nums[code].name.scheme_designator == "99MDENS"
            assert nums[code].name.meaning.startswith(f"Probability of BI-RADS {cat} (")
            assert (nums[code].unit.value, nums[code].unit.scheme_designator) == ("1", "UCUM")
            assert nums[code].value == round(breast.probabilities[cat], 2)
        agd = nums["111637"]
        assert agd.unit.value == "mGy"
        assert agd.value == pytest.approx(result.dose.breasts[side].agd_mgy)
        srcs = {s.referenced_sop_instance_uid for s in group.source_images}
        assert srcs == {u for u, s in by_uid.items() if s.ImageLaterality == side}


def test_reader_matches_result(four_view) -> None:
    sources, result, man, _, path = four_view
    got = read_density_sr(pydicom.dcmread(path))
    assert got["study_instance_uid"] == result.study_instance_uid
    assert got["categories"] == {"R": "C", "L": "B"}
    assert got["overall"] == "C"
    assert got["dense"] is True
    for side in ("R", "L"):
        assert got["probabilities"][side] == pytest.approx(result.breasts[side].probabilities,
                                                           abs=0.0051)
    assert got["probabilities"]["overall"] == pytest.approx(result.exam.probabilities,
                                                            abs=0.0051)
    assert got["partial"] is False
    assert got["series_date"] and got["series_time"] and got["content_date"]
    assert got["agd_mgy"] == pytest.approx({"R": 1.23, "L": 1.5})
    assert got["algorithm"] == {"name": man.name, "version": man.version}
    assert got["not_for_clinical_use"] is True
    assert got["assessable"] is True
    assert {u: (v["laterality"], v["view"]) for u, v in got["images"].items()} == {
        s.SOPInstanceUID: (s.ImageLaterality, s.ViewPosition) for s in sources}


def test_deterministic_uids() -> None:
    sources = srdata.mg_study()
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man)
    a = build_density_sr(result, sources, man)
    b = build_density_sr(result, list(reversed(sources)), man)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert sr_uids(result, man, sources) == (a.SeriesInstanceUID, a.SOPInstanceUID)
    # A changed input image: new instance, same series.
    changed = [*sources[:3], srdata.mg_image(result.study_instance_uid, "L-MLO")]
    c_series, c_inst = sr_uids(result, man, changed)
    assert c_series == a.SeriesInstanceUID and c_inst != a.SOPInstanceUID
    # Another model version: new series and instance.
    other = sr_uids(result, srdata.manifest(version="2.0"), sources)
    assert other[0] != a.SeriesInstanceUID and other[1] != a.SOPInstanceUID
    # The 3D SOP class never reuses the 2D instance UID.
    assert sr_uids(result, man, sources, comprehensive_3d=True)[1] != a.SOPInstanceUID


@pytest.mark.services
def test_type2_attributes_omitted_by_modality(tmp_path: Path) -> None:
    omit = ("StudyID", "AccessionNumber", "PatientBirthDate", "PatientOrientation",
            "ImagerPixelSpacing", "ReferringPhysicianName", "PatientSex")
    sources = srdata.mg_study(omit=omit)
    before = [copy.deepcopy(s) for s in sources]
    man = srdata.manifest()
    sr = build_density_sr(srdata.result_for(sources, man=man), sources, man)
    assert sources == before  # the caller's datasets are untouched
    path = _save(sr, tmp_path)
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert dsrdump(path).returncode == 0
    got = read_density_sr(pydicom.dcmread(path))
    assert got["categories"] == {"R": "C", "L": "B"}
    assert all(v["view"] in ("CC", "MLO") for v in got["images"].values())


@pytest.mark.services
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_type2_values_are_left_empty(tmp_path: Path) -> None:
    sources = srdata.mg_study()
    for ds in sources:
        ds.StudyDate, ds.StudyTime, ds.PatientBirthDate, ds.PatientSex = "1", "10:10", "x", "U"
    man = srdata.manifest()
    path = _save(build_density_sr(srdata.result_for(sources, man=man), sources, man), tmp_path)
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    ds = pydicom.dcmread(path)
    assert ds.StudyDate == "" and ds.PatientSex == "" and ds.PatientID == sources[0].PatientID


@pytest.mark.services
def test_partial_study_has_only_supported_groups(tmp_path: Path) -> None:
    sources = srdata.mg_study(["L-CC", "L-MLO"])
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man)
    path = _save(build_density_sr(result, sources, man), tmp_path)
    assert_valid(path)
    groups = _groups(hd.sr.srread(path).content)
    assert set(groups) == {"Left breast composition", "Overall breast composition"}
    got = read_density_sr(pydicom.dcmread(path))
    assert got["categories"] == {"L": "B"} and got["overall"] == "B" and got["dense"] is False
    assert got["partial"] is True
    assert "Partial study. Views used: L-CC, L-MLO; missing: R-CC, R-MLO." in got["text"]
    assert "Right breast not assessed, left breast B." in got["text"]
    assert "NOT FOR CLINICAL USE" not in got["text"]
    assert got["not_for_clinical_use"] is False
    assert not pydicom.dcmread(path).SeriesDescription.startswith("NOT FOR CLINICAL USE")


@pytest.mark.services
def test_images_not_used_are_named_in_the_text(tmp_path: Path) -> None:
    from mammo_density.study.reasons import Reason
    from mammo_density.study.unused import unused_image

    sources = srdata.mg_study()
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man)
    result.unused_images = [unused_image("1.2.3.4", Reason.SPOT_COMPRESSION, slot="R-CC"),
                            unused_image("1.2.3.5", Reason.QUALITY_CONTROL)]
    path = _save(build_density_sr(result, sources, man), tmp_path)
    assert_valid(path)
    text = read_density_sr(pydicom.dcmread(path))["text"]
    assert "Views used: R-CC, L-CC, R-MLO, L-MLO; images not used: R-CC spot_compression;" \
        " ?-? quality_control." in text
    assert "Partial study" not in text


@pytest.mark.services
def test_not_assessable_result_gives_text_only_report(tmp_path: Path) -> None:
    sources = srdata.mg_study(["R-CC"])
    man = srdata.manifest()
    result = StudyResult(study_instance_uid=sources[0].StudyInstanceUID, assessable=False,
                         partial=True, missing_views=["L-CC", "R-MLO", "L-MLO"],
                         warnings=["image too small to assess"])
    path = _save(build_density_sr(result, sources, man), tmp_path)
    assert_valid(path)
    groups = _groups(hd.sr.srread(path).content)
    assert set(groups) == {"Overall breast composition"}
    got = read_density_sr(pydicom.dcmread(path))
    assert got["assessable"] is False and got["overall"] is None and got["dense"] is None
    assert got["categories"] == {} and got["probabilities"] == {}
    assert got["partial"] is True
    assert got["text"].startswith(
        "BI-RADS breast density (AI): not assessable (image too small")
    assert "missing: L-CC, R-MLO, L-MLO" in got["text"]


@pytest.mark.services
def test_comprehensive_3d_option(tmp_path: Path) -> None:
    sources = srdata.mg_study()
    man = srdata.manifest()
    sr = build_density_sr(srdata.result_for(sources, man=man), sources, man,
                          comprehensive_3d=True)
    path = _save(sr, tmp_path)
    assert pydicom.dcmread(path).SOPClassUID == COMPREHENSIVE_3D_SR
    assert_valid(path)
    assert read_density_sr(pydicom.dcmread(path))["overall"] == "C"


@pytest.mark.services
def test_real_vendor_headers(tmp_path: Path) -> None:
    folder = require_testdata("real-mg", "openrem")
    sources = [pydicom.dcmread(folder / name) for name in
               ("MG-Im-GE_Seno_1_ForPresentation.dcm", "MG-Im-GE_Seno_2_ForPresentation.dcm")]
    assert sources[0].StudyInstanceUID == sources[1].StudyInstanceUID
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man)
    path = _save(build_density_sr(result, sources, man), tmp_path, "ge.dcm")
    assert_valid(path)
    got = read_density_sr(pydicom.dcmread(path))
    assert got["categories"] == {"L": "B"}
    assert set(got["images"]) == {s.SOPInstanceUID for s in sources}
    assert {v["view"] for v in got["images"].values()} == {"CC"}

    # Non-ASCII patient data (ISO_IR 192 source) and a header without ImagerPixelSpacing.
    for name in ("MG-Im-GE-SenDS-scaled.dcm", "MG-Im-Hologic-PropProj.dcm"):
        src = pydicom.dcmread(folder / name)
        res = StudyResult(study_instance_uid=src.StudyInstanceUID, assessable=False,
                          warnings=["not a screening view"])
        path = _save(build_density_sr(res, [src], man), tmp_path, name)
        errors, _ = dciodvfy(path)
        assert errors == [], (name, errors)
        assert dsrdump(path).returncode == 0
        assert str(pydicom.dcmread(path).PatientName) == str(src.PatientName)


def test_bad_inputs_raise_clear_errors() -> None:
    sources = srdata.mg_study(["R-CC"])
    man = srdata.manifest()
    result = srdata.result_for(sources, man=man)
    with pytest.raises(ValueError, match="sources"):
        build_density_sr(result, [], man)
    other = srdata.mg_study(["L-CC"])
    with pytest.raises(ValueError, match="another study"):
        build_density_sr(result, sources + other, man)
    with pytest.raises(ValueError, match="not a Comprehensive"):
        read_density_sr(sources[0])


def _plain_sr_document(sop_class, report, **kwargs):
    """highdicom's SOP class as documented: the whole content tree to the constructor."""
    return sop_class(content=report, **kwargs)


def _sr_bytes(sr: pydicom.Dataset) -> bytes:
    import io

    sr.InstanceCreationDate, sr.InstanceCreationTime = "20000101", "000000"  # the clock's
    for item in sr.ContributingEquipmentSequence:
        item.ContributionDateTime = "20000101000000"
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _variants():
    from mammo_density.study.reasons import Reason
    from mammo_density.study.unused import unused_image

    man, demo = srdata.manifest(), srdata.manifest(demo=True)
    full = srdata.mg_study()
    yield "four views, AGD, demo", full, srdata.result_for(full, agd={"R": 1.2}, man=demo), \
        demo, False
    yield "four views, 3D", full, srdata.result_for(full, man=man), man, True
    left = srdata.mg_study(["L-CC", "L-MLO"])
    yield "partial", left, srdata.result_for(left, man=man), man, False
    bare = srdata.mg_study(omit=("PatientOrientation", "ImagerPixelSpacing", "StudyID",
                                 "PatientSex"))
    unused = srdata.result_for(bare, man=man)
    unused.unused_images = [unused_image("1.2.3.4", Reason.SPOT_COMPRESSION, slot="R-CC")]
    yield "library without projection descriptors, image not used", bare, unused, man, False
    one = srdata.mg_study(["R-CC"])
    yield "not assessable", one, StudyResult(
        study_instance_uid=one[0].StudyInstanceUID, assessable=False, partial=True,
        missing_views=["L-CC", "R-MLO", "L-MLO"], warnings=["image too small"]), man, False


def _assert_plain_bytes(monkeypatch, name, sources, result, man, three_d=False) -> None:
    import mammo_density.worker.sr as srmod

    fast = build_density_sr(result, sources, man, comprehensive_3d=three_d)
    with monkeypatch.context() as m:
        m.setattr(srmod, "_sr_document", _plain_sr_document)
        plain = build_density_sr(result, sources, man, comprehensive_3d=three_d)
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        setattr(fast, keyword, plain.get(keyword))  # built a second apart at most
    assert type(fast.content) is type(plain.content), name
    assert fast.content[0] == plain.content[0], name
    assert _sr_bytes(fast) == _sr_bytes(plain), name


def test_sr_bytes_equal_the_plain_highdicom_construction(monkeypatch) -> None:
    """The builder hands highdicom's SOP class the root container without its children
    and adds them after (worker/sr.py ``_sr_document``, 60 % of the build time): the file
    must be byte for byte the one the plain construction writes, and ``sr.content`` the
    same tree."""
    for name, sources, result, man, three_d in _variants():
        _assert_plain_bytes(monkeypatch, name, sources, result, man, three_d)


def test_sr_bytes_equal_the_plain_construction_real_headers(monkeypatch) -> None:
    folder = require_testdata("real-mg", "openrem")
    man = srdata.manifest()
    pair = [pydicom.dcmread(folder / name) for name in
            ("MG-Im-GE_Seno_1_ForPresentation.dcm", "MG-Im-GE_Seno_2_ForPresentation.dcm")]
    _assert_plain_bytes(monkeypatch, "GE pair", pair, srdata.result_for(pair, man=man), man)
    for name in ("MG-Im-GE-SenDS-scaled.dcm", "MG-Im-Hologic-PropProj.dcm"):
        src = pydicom.dcmread(folder / name)
        res = StudyResult(study_instance_uid=src.StudyInstanceUID, assessable=False,
                          warnings=["not a screening view"])
        _assert_plain_bytes(monkeypatch, name, [src], res, man)


def test_warm_up_builds_one_sr() -> None:
    from mammo_density.worker.sr import warm_up

    assert warm_up() > 0


def test_highdicom_pixel_data_check_is_asked_once_per_sop_class() -> None:
    """worker/iod_lookup.py: highdicom walks the whole IOD table for every source image
    (~5 ms each); after the first image of a class the answer comes from the cache, and
    it is the library's own answer."""
    import sys

    from highdicom import _standard_utils

    from mammo_density.study import sop
    from mammo_density.worker import iod_lookup

    cached = _standard_utils.does_iod_have_pixel_data
    assert hasattr(cached, "cache_info")
    holders = [m for n, m in sys.modules.items() if n.startswith("highdicom")
               and hasattr(m, "does_iod_have_pixel_data")]
    assert {"highdicom.sr.templates", "highdicom.base_content"} <= {
        m.__name__ for m in holders}
    assert all(m.does_iod_have_pixel_data is cached for m in holders)
    assert iod_lookup.install() and _standard_utils.does_iod_have_pixel_data is cached
    original = cached.__wrapped__
    for uid in (sop.MG_FOR_PRESENTATION, "1.2.840.10008.5.1.4.1.1.7",
                "1.2.840.10008.5.1.4.1.1.88.33"):
        assert cached(uid) == original(uid)
    with pytest.raises(KeyError):
        cached("1.2.3.4")
    before = cached.cache_info()
    man = srdata.manifest()
    sources = srdata.mg_study()
    build_density_sr(srdata.result_for(sources, man=man), sources, man)
    after = cached.cache_info()
    assert after.hits - before.hits >= len(sources) and after.misses == before.misses
