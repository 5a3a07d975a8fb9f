"""Dose extraction against values read by hand from the real vendor files.

Expected values were read with ``dsrdump +Pc <file>`` (dcmtk 3.6.7) for the dose reports
and ``dcmdump`` / pydicom for the image headers, in ../shared/testdata/real-mg/. The line
quoted next to each value is what the tool printed.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from mammo_density.worker.dose import extract_dose, parse_percent_glandular, view_dose
from tests.services import require_testdata

OPENREM = ("real-mg", "openrem")


def _read(*parts: str, headers_only: bool = True) -> Dataset:
    return pydicom.dcmread(require_testdata(*parts), stop_before_pixels=headers_only)


# --- image headers -------------------------------------------------------------------------

# (file, expected ViewDose fields) read by hand with dcmdump:
#   OrganDose (0040,0316) dGy -> x100 mGy; EntranceDoseInmGy (0040,8302); BodyPartThickness
#   (0018,11a0); CompressionForce (0018,11a2); KVP; ExposureInuAs (0018,1153);
#   AnodeTargetMaterial (0018,1191); FilterMaterial (0018,7050); ExposureControlMode
#   (0018,7060); CommentsOnRadiationDose (0040,0310).
HEADER_CASES = [
    ((*OPENREM, "MG-Im-GE-SenDS-scaled.dcm"), dict(
        laterality="L", view="CC", agd_mgy=1.373,        # OrganDose "0.01373"
        entrance_dose_mgy=5.071, thickness_mm=53, force_n=50, kvp=29, exposure_uas=51800,
        anode="RHODIUM", filter="RHODIUM", exposure_control_mode="AUTOMATIC",
        percent_glandular=31)),                          # CommentsOnRadiationDose "31 %"
    ((*OPENREM, "MG-Im-GE_Seno_1_ForPresentation.dcm"), dict(
        laterality="L", view="CC", agd_mgy=0.547,        # OrganDose "0.00547"
        entrance_dose_mgy=1.694, thickness_mm=20, force_n=30, kvp=26, exposure_uas=20800,
        anode="MOLYBDENUM", filter="MOLYBDENUM", percent_glandular=80)),  # "80 %"
    ((*OPENREM, "MG-Im-GE_Seno_1_ForProcessing.dcm"), dict(
        laterality="L", view="CC", agd_mgy=0.547, thickness_mm=20, kvp=26,
        exposure_uas=20800, percent_glandular=80)),
    ((*OPENREM, "MG-Im-GE_Seno_2_ForPresentation.dcm"), dict(
        laterality="L", view="CC", agd_mgy=1.409,        # OrganDose "0.01409"
        entrance_dose_mgy=4.931, thickness_mm=39, force_n=30, kvp=29, exposure_uas=53200,
        anode="RHODIUM", filter="RHODIUM", percent_glandular=82)),  # "82 %"
    ((*OPENREM, "MG-Im-Hologic-PropProj.dcm"), dict(
        laterality="R",                                  # Laterality (0020,0060) "R"
        agd_mgy=0.26,                                    # OrganDose "0.0026"
        entrance_dose_mgy=0.42, thickness_mm=18, force_n=0, kvp=28, exposure_uas=6000,
        anode="TUNGSTEN", filter="ALUMINUM", exposure_control_mode="MANUAL",
        percent_glandular=None)),                        # no CommentsOnRadiationDose
    (("real-mg", "fo-dicom", "GH133.dcm"), dict(
        laterality="R", view="MLO", agd_mgy=1.521,       # OrganDose "0.01521"
        entrance_dose_mgy=8.515, thickness_mm=73, force_n=100, kvp=30, exposure_uas=71400,
        anode="RHODIUM", filter="RHODIUM", percent_glandular=50)),  # "50 %"
    (("real-mg", "fo-dicom", "OutOfBoundsOverlay.dcm"), dict(
        laterality="L", view="CC", agd_mgy=1.1805,       # OrganDose "0.011805" (Siemens)
        entrance_dose_mgy=1.8121681064816, thickness_mm=14, force_n=59.2, kvp=24,
        exposure_uas=44410, anode="MOLYBDENUM", filter="RHODIUM",
        exposure_control_mode="MANUAL")),
]


@pytest.mark.parametrize(("parts", "expected"), HEADER_CASES,
                         ids=[c[0][-1] for c in HEADER_CASES])
def test_header_dose_matches_hand_read_values(parts, expected):
    vd = view_dose(_read(*parts))
    for key, value in expected.items():
        got = getattr(vd, key)
        if isinstance(value, (int, float)) and value is not None:
            assert got == pytest.approx(value, rel=1e-6), key
        else:
            assert got == value, key


def test_header_summary_single_image():
    summary = extract_dose([_read(*OPENREM, "MG-Im-GE-SenDS-scaled.dcm")])
    assert summary.sources == ["headers"]
    left = summary.breasts["L"]
    assert left.agd_source == "headers"
    assert left.agd_mgy == pytest.approx(1.373)
    assert left.mean_thickness_mm == 53 and left.mean_force_n == 50 and left.exposures == 1
    assert summary.total_agd_mgy == pytest.approx(1.373)
    assert "R" not in summary.breasts
    assert any("no dose report" in m for m in summary.missing)


def test_same_exposure_stored_twice_counts_once():
    # Seno_1 For Presentation and For Processing: same AcquisitionTime 132223, same dose.
    # Seno_2 is another exposure of the same study (AcquisitionTime 132628).
    images = [_read(*OPENREM, name) for name in (
        "MG-Im-GE_Seno_1_ForPresentation.dcm", "MG-Im-GE_Seno_1_ForProcessing.dcm",
        "MG-Im-GE_Seno_2_ForPresentation.dcm")]
    summary = extract_dose(images)
    assert len(summary.views) == 2
    left = summary.breasts["L"]
    assert left.exposures == 2
    assert left.agd_mgy == pytest.approx(0.547 + 1.409)
    assert left.mean_thickness_mm == pytest.approx((20 + 39) / 2)
    assert left.mean_force_n == pytest.approx(30)


def test_exposure_from_tube_current_and_time():
    ds = Dataset()
    ds.ImageLaterality = "R"
    ds.ViewPosition = "CC"
    ds.XRayTubeCurrentInuA = 100000.0   # 100 mA
    ds.ExposureTime = "500"             # ms  -> 50 000 uAs
    assert view_dose(ds).exposure_uas == pytest.approx(50000)
    del ds.XRayTubeCurrentInuA
    ds.Exposure = "42"                  # mAs -> 42 000 uAs
    del ds.ExposureTime
    assert view_dose(ds).exposure_uas == pytest.approx(42000)
    ds.EntranceDose = 3                 # dGy -> 300 mGy (EntranceDoseInmGy absent)
    assert view_dose(ds).entrance_dose_mgy == pytest.approx(300)


@pytest.mark.parametrize(("text", "value"), [
    ("31 %", 31), ("%GLANDULAR=25", 25), ("Glandular Tissue: 40 %", 40),
    ("GLANDULARITY 12%", 12), ("glandularity=7.5", 7.5), ("55", 55),
    ("", None), (None, None), ("AGD computed", None), ("%GLANDULAR=180", None),
])
def test_percent_glandular_spellings(text, value):
    assert parse_percent_glandular(text) == value


def test_malformed_header_values_do_not_crash():
    ds = Dataset()
    ds.ImageLaterality = "L"
    ds.ViewPosition = "MLO"
    # A vendor writing text where a number belongs (stored with the wrong VR).
    ds[0x00400316] = DataElement(0x00400316, "LO", "abc")  # OrganDose
    ds.KVP = ""
    summary = extract_dose([ds])
    assert summary.views[0].agd_mgy is None and summary.views[0].kvp is None
    assert summary.breasts["L"].agd_source == "none"
    assert any("agd_mgy" in m for m in summary.missing)


# --- dose reports ----------------------------------------------------------------------------

def _rdsr(name: str) -> Dataset:
    return _read(*OPENREM, name, headers_only=False)


def test_hologic_2d_rdsr():
    # dsrdump: Accumulated Average Glandular Dose "1.30" mGy (Left breast), "1.28" (Right
    # breast); events: L CC AGD "1.30", KVP "28.00", Exposure "90200.00" uAs, Compression
    # Thickness "43.00" mm, Entrance Exposure at RP "3.65", anode Tungsten, filter Rhodium;
    # R CC AGD "1.28", Exposure "88800.00", Entrance "3.60".
    s = extract_dose([], [_rdsr("MG-RDSR-Hologic_2D.dcm")])
    assert s.sources == ["rdsr"]
    assert s.breasts["L"].agd_mgy == pytest.approx(1.30)
    assert s.breasts["R"].agd_mgy == pytest.approx(1.28)
    assert s.breasts["L"].agd_source == s.breasts["R"].agd_source == "rdsr"
    assert s.total_agd_mgy == pytest.approx(2.58)
    assert [(v.laterality, v.view) for v in s.views] == [("L", "CC"), ("R", "CC")]
    left = s.views[0]
    assert left.agd_mgy == pytest.approx(1.30) and left.kvp == pytest.approx(28)
    assert left.exposure_uas == pytest.approx(90200) and left.thickness_mm == pytest.approx(43)
    assert left.entrance_dose_mgy == pytest.approx(3.65)
    assert left.anode == "TUNGSTEN" and left.filter == "RHODIUM"
    assert s.views[1].exposure_uas == pytest.approx(88800)
    assert any("force_n" in m for m in s.missing)  # no Compression Force in the report


def test_hologic_mixed_2d_tomo_rdsr():
    # dsrdump: accumulated "0.87" mGy Left breast, "2.71" Right breast; 7 events:
    # R CC tomo AGD 0.95 (19 mm), R MLO tomo 0.89 (21 mm), L CC tomo 0.87 (20 mm),
    # R CC 2D 0.00 (23 mm, filter Rhodium), R CC 2D 0.00 (128 mm, Silver),
    # R CC tomo 0.87 (20 mm), R CC 2D 0.00 (46 mm).
    s = extract_dose([], [_rdsr("MG-RDSR-Hologic_mix.dcm")])
    assert s.breasts["R"].agd_mgy == pytest.approx(2.71)
    assert s.breasts["L"].agd_mgy == pytest.approx(0.87)
    assert s.breasts["R"].exposures == 6 and s.breasts["L"].exposures == 1
    assert s.breasts["R"].mean_thickness_mm == pytest.approx((19 + 21 + 23 + 128 + 20 + 46) / 6,
                                                             abs=0.01)
    assert s.breasts["L"].mean_thickness_mm == pytest.approx(20)
    assert [v.view for v in s.views] == ["CC", "MLO", "CC", "CC", "CC", "CC", "CC"]
    assert s.views[0].filter == "ALUMINUM" and s.views[3].filter == "RHODIUM"
    assert s.views[4].filter == "SILVER" and s.views[4].thickness_mm == pytest.approx(128)
    assert s.views[0].exposure_uas == pytest.approx(34300)  # Exposure "34300.00" uAs


def test_ge_pristina_2d_rdsr():
    # dsrdump: accumulated "0" mGy Left breast, "9.68" Right breast; 8 R CC events, AGD
    # 1.22, 1.22, 1.21, 1.2, 1.21, 1.2, 1.21, 1.21; thickness 46.1, 46.3, 46.1, 46.4, 46.2,
    # 46.2, 46.2, 46.2 mm; each event two pulses: KVP "34.1" and "33.99", tube current
    # "2" mA x pulse width "51.44" ms + "30.48" mA x "558.06" ms (first event), no
    # Exposure item; anode Rhodium, filter Silver (twice).
    s = extract_dose([], [_rdsr("MG-RDSR-GEPristina-2D.dcm")])
    right = s.breasts["R"]
    assert right.agd_mgy == pytest.approx(9.68) and right.exposures == 8
    assert right.mean_thickness_mm == pytest.approx(369.7 / 8, abs=0.01)
    assert s.breasts["L"].agd_mgy == 0 and s.breasts["L"].exposures == 0
    first = s.views[0]
    assert (first.laterality, first.view) == ("R", "CC")
    assert first.agd_mgy == pytest.approx(1.22)
    assert first.kvp == pytest.approx((34.1 + 33.99) / 2)
    assert first.exposure_uas == pytest.approx(2 * 51.44 + 30.48 * 558.06)
    assert first.anode == "RHODIUM" and first.filter == "SILVER"
    assert sum(v.agd_mgy for v in s.views) == pytest.approx(9.68)


def test_ge_pristina_dbt_rdsr():
    # dsrdump: accumulated "1.09" Right breast, "0" Left; one rotational R CC event,
    # AGD "1.09", Compression Thickness "43.4" mm, Entrance Exposure at RP "3.31",
    # 10 pulses at "34.1" then 9 x "34.07" kV.
    s = extract_dose([], [_rdsr("MG-RDSR-GEPristina-DBT.dcm")])
    assert s.breasts["R"].agd_mgy == pytest.approx(1.09)
    assert len(s.views) == 1
    v = s.views[0]
    assert v.thickness_mm == pytest.approx(43.4) and v.entrance_dose_mgy == pytest.approx(3.31)
    assert v.kvp == pytest.approx((34.1 + 9 * 34.07) / 10)


def test_giotto_dbt_big_endian_rdsr():
    # Explicit VR Big Endian. dsrdump: accumulated "4.422000" Right breast, "4.842000"
    # Left; events (laterality under "Target Region"): R CC 2.257 (41 mm), L CC 2.451
    # (41 mm), R MLO 2.165 (44 mm), L MLO 2.391 (47 mm); 11 Exposure values per event,
    # first event 6220 + 13370 + 13400 + 13400 + 13380 + 13400 + 13370 + 13360 + 13330 +
    # 13340 + 13320 uA.s; anode coded 113632 "Tungsten", filter Silver.
    ds = _rdsr("MG-RDSR-Giotto-DBT.dcm")
    assert not ds.is_little_endian
    s = extract_dose([], [ds])
    assert s.breasts["R"].agd_mgy == pytest.approx(4.422)
    assert s.breasts["L"].agd_mgy == pytest.approx(4.842)
    assert s.total_agd_mgy == pytest.approx(9.264)
    assert [(v.laterality, v.view) for v in s.views] == [
        ("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]
    assert [v.agd_mgy for v in s.views] == pytest.approx([2.257, 2.451, 2.165, 2.391])
    assert s.breasts["R"].mean_thickness_mm == pytest.approx(42.5)
    assert s.breasts["L"].mean_thickness_mm == pytest.approx(44.0)
    assert s.views[0].exposure_uas == pytest.approx(
        6220 + 13370 + 13400 + 13400 + 13380 + 13400 + 13370 + 13360 + 13330 + 13340 + 13320)
    assert s.views[0].anode == "TUNGSTEN" and s.views[0].kvp == pytest.approx(27)


def test_only_the_studys_own_rdsr_counts():
    image = _read(*OPENREM, "MG-Im-GE-SenDS-scaled.dcm")  # another study than the RDSR
    s = extract_dose([image], [_rdsr("MG-RDSR-Hologic_2D.dcm")])
    assert s.sources == ["headers"]
    assert s.breasts["L"].agd_mgy == pytest.approx(1.373)
    assert "R" not in s.breasts


def test_rdsr_wins_over_headers_and_headers_fill_gaps():
    rdsr = _rdsr("MG-RDSR-Hologic_2D.dcm")
    # An image header of the report's first event (same SOP Instance UID), with the
    # force and glandularity the report lacks, and a header AGD that must not be used.
    first_uid = extract_dose([], [rdsr]).views[0].sop_instance_uid
    img = Dataset()
    img.SOPInstanceUID = first_uid
    img.StudyInstanceUID = rdsr.StudyInstanceUID
    img.ImageLaterality = "L"
    img.ViewPosition = "CC"
    img.OrganDose = "0.5"            # 50 mGy: must not replace the report's 1.30
    img.CompressionForce = "95"
    img.CommentsOnRadiationDose = "%GLANDULAR=22"
    s = extract_dose([img], [rdsr])
    assert s.sources == ["rdsr", "headers"]
    assert s.breasts["L"].agd_mgy == pytest.approx(1.30)
    left = s.views[0]
    assert left.agd_mgy == pytest.approx(1.30)
    assert left.force_n == 95 and left.percent_glandular == 22
    assert s.breasts["L"].mean_force_n == 95


def test_no_dose_anywhere():
    ds = Dataset()
    ds.ImageLaterality = "R"
    ds.ViewPosition = "CC"
    ds.SOPInstanceUID = "1.2.3"
    s = extract_dose([ds])
    assert s.total_agd_mgy is None
    assert s.breasts["R"].agd_source == "none"
    assert s.missing


def test_extract_dose_from_files_mixes_images_and_reports(tmp_path):
    # The Hologic 2D report with an unreadable file and a GE image of another study: the
    # report does not belong to the image's study, so only the header counts.
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    from mammo_density.worker.dose import extract_dose_from_files

    s = extract_dose_from_files([require_testdata(*OPENREM, "MG-RDSR-Hologic_2D.dcm"), junk])
    assert s.breasts["L"].agd_mgy == pytest.approx(1.30) and s.sources == ["rdsr"]
    assert any("unreadable" in m for m in s.missing)
    s2 = extract_dose_from_files([require_testdata(*OPENREM, "MG-Im-GE-SenDS-scaled.dcm"),
                                  require_testdata(*OPENREM, "MG-RDSR-Hologic_2D.dcm")])
    assert s2.sources == ["headers"] and s2.breasts["L"].agd_mgy == pytest.approx(1.373)


def test_header_of_same_exposure_matched_without_uids():
    # A For Presentation image whose UIDs the report does not name: matched by laterality,
    # view, AGD and thickness (Hologic 2D event R CC: AGD 1.28 mGy, 43 mm).
    rdsr = _rdsr("MG-RDSR-Hologic_2D.dcm")
    img = Dataset()
    img.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.777"
    img.StudyInstanceUID = rdsr.StudyInstanceUID
    img.ImageLaterality = "R"
    img.ViewPosition = "CC"
    img.OrganDose = "0.0128"
    img.BodyPartThickness = "43"
    img.CompressionForce = "120"
    s = extract_dose([img], [rdsr])
    right = next(v for v in s.views if v.laterality == "R")
    assert right.force_n == 120 and right.sop_instance_uid == img.SOPInstanceUID
    left = next(v for v in s.views if v.laterality == "L")
    assert left.force_n is None


def test_quality_control_images_are_not_exposures():
    """The Hologic flat-field QA image (R, OrganDose 0.0026 dGy) is not a patient exposure:
    next to a real R-MLO (0.01521 dGy) the right breast has one exposure of 1.521 mGy."""
    from tests import mgdata

    mlo = _read("real-mg", "fo-dicom", "GH133.dcm")
    flat_field = _read(*OPENREM, "MG-Im-Hologic-PropProj.dcm")
    phantom, _ = mgdata.gate_cases(str(mlo.StudyInstanceUID))["phantom"]
    phantom.OrganDose = "0.01"
    summary = extract_dose([mlo, flat_field, phantom])
    assert [v.sop_instance_uid for v in summary.views] == [str(mlo.SOPInstanceUID)]
    assert summary.breasts["R"].exposures == 1
    assert summary.breasts["R"].agd_mgy == pytest.approx(1.521)
    with_qa = extract_dose([flat_field])
    assert with_qa.views == [] and with_qa.total_agd_mgy is None
