"""Vendor profiles for the synthetic mammograms: detector geometry and header style.

The three detectors are the ones docs/method.md lists. Geometry is written rows x columns with
the long side along the chest wall (portrait), as the detectors are mounted: Hologic
Selenia Dimensions 4096 x 3328 at 70 um, GE Senographe DS 2294 x 1914 at 100 um (the
the method's "2294x1914" read as rows x columns; 22.9 x 19.1 cm), IMS Giotto 3584 x 2816 at
85 um. Bit depth, photometric interpretation and VOI style differ per vendor on purpose,
so consumers cannot assume one convention (IMS is MONOCHROME1, i.e. low values white).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VendorProfile:
    """Header style and detector of one mammography system."""

    key: str
    manufacturer: str
    model: str
    station: str
    software: str
    rows: int
    columns: int
    spacing_mm: float
    bits_stored: int
    photometric: str
    detector_type: str
    detector_id: str
    voi_function: str | None
    source_to_detector_mm: float
    #: (max thickness mm, anode, filter) in ascending thickness; the AEC picks the first row
    #: whose limit is not below the breast's thickness.
    target_filters: tuple[tuple[float, str, str], ...]
    #: kVp = kvp_base + kvp_per_cm * thickness_cm, rounded, clipped 24-35
    kvp_base: float
    kvp_per_cm: float
    tube_current_ma: float
    #: how the vendor writes its glandularity estimate in CommentsOnRadiationDose
    glandular_comment: str
    #: the stored images are 'DERIVED' or 'ORIGINAL' for presentation
    presentation_image_type: tuple[str, ...]

    def shape(self, divisor: int) -> tuple[int, int]:
        """Rows and columns at 1/divisor of full resolution."""
        return max(64, round(self.rows / divisor)), max(52, round(self.columns / divisor))


PROFILES: dict[str, VendorProfile] = {
    "hologic": VendorProfile(
        key="hologic",
        manufacturer="HOLOGIC, Inc.",
        model="Selenia Dimensions",
        station="SYNTH_SELENIA",
        software="1.10.2.5",
        rows=4096,
        columns=3328,
        spacing_mm=0.07,
        bits_stored=12,
        photometric="MONOCHROME2",
        detector_type="DIRECT",
        detector_id="SYN70001",
        voi_function=None,
        source_to_detector_mm=700.0,
        target_filters=((60.0, "TUNGSTEN", "RHODIUM"), (999.0, "TUNGSTEN", "SILVER")),
        kvp_base=24.0,
        kvp_per_cm=1.2,
        tube_current_ma=160.0,
        glandular_comment="Glandular Tissue: {pct} %",
        presentation_image_type=("DERIVED", "PRIMARY"),
    ),
    "ge": VendorProfile(
        key="ge",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Senographe DS ADS_43.10.1",
        station="SYNTH_SENODS",
        software="ADS_43.10.1",
        rows=2294,
        columns=1914,
        spacing_mm=0.1,
        bits_stored=14,
        photometric="MONOCHROME2",
        detector_type="SCINTILLATOR",
        detector_id="SYNPM980",
        voi_function="SIGMOID",
        source_to_detector_mm=660.0,
        target_filters=(
            (35.0, "MOLYBDENUM", "MOLYBDENUM"),
            (60.0, "MOLYBDENUM", "RHODIUM"),
            (999.0, "RHODIUM", "RHODIUM"),
        ),
        kvp_base=22.0,
        kvp_per_cm=1.3,
        tube_current_ma=100.0,
        glandular_comment="%GLANDULAR={pct}",
        presentation_image_type=("DERIVED", "PRIMARY", ""),
    ),
    "ims": VendorProfile(
        key="ims",
        manufacturer="I.M.S. s.r.l.",
        model="GIOTTO IMAGE 3DL",
        station="SYNTH_GIOTTO",
        software="4.2.1",
        rows=3584,
        columns=2816,
        spacing_mm=0.085,
        bits_stored=16,
        photometric="MONOCHROME1",
        detector_type="DIRECT",
        detector_id="SYNGI085",
        voi_function="LINEAR",
        source_to_detector_mm=680.0,
        target_filters=((50.0, "TUNGSTEN", "RHODIUM"), (999.0, "TUNGSTEN", "SILVER")),
        kvp_base=23.0,
        kvp_per_cm=1.25,
        tube_current_ma=140.0,
        glandular_comment="GLANDULARITY {pct}%",
        presentation_image_type=("ORIGINAL", "PRIMARY"),
    ),
}

VENDORS: tuple[str, ...] = tuple(PROFILES)
