"""The coded concepts of mammography, one table each (PS3.16).

- CID 4014 "View for Mammography": :data:`VIEWS`, short name -> SNOMED CT code, the
  legacy SNOMED RT (SRT/SNM3) code of the same concept, and its meaning;
- CID 4015 "View Modifier for Mammography": :data:`MODIFIERS`;
- CID 6000 "Overall Breast Composition" (BI-RADS A-D): :data:`DENSITY`;
- CID 244 "Laterality": :data:`LATERALITY`.

Every other module (header reading, the SR, dose reports, the synthetic generator) takes
its codes from here; ``tests/test_study_codes.py`` checks them against pydicom's copy of
PS3.16. The Orthanc plugin's stdlib copy (plugin/orthanc/mammo_density_routing.py) is the
one exception, checked against these tables by ``tests/test_orthanc_logic.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.coding import Code


@dataclass(frozen=True)
class Concept:
    """One coded concept: SNOMED CT code, legacy SNOMED RT code (``""`` if none), meaning."""

    sct: str
    srt: str
    meaning: str

    @property
    def code(self) -> Code:
        """The current (SCT) code as a pydicom :class:`~pydicom.sr.coding.Code`."""
        return Code(self.sct, "SCT", self.meaning)

    @property
    def values(self) -> tuple[str, ...]:
        """Every code value that means this concept (SCT first)."""
        return tuple(v for v in (self.sct, self.srt) if v)


# CID 4014, keyed by the ViewPosition spelling of each concept.
VIEWS: dict[str, Concept] = {
    "CC": Concept("399162004", "R-10242", "cranio-caudal"),
    "MLO": Concept("399368009", "R-10226", "medio-lateral oblique"),
    "ML": Concept("399260004", "R-10224", "medio-lateral"),
    "LM": Concept("399352003", "R-10228", "latero-medial"),
    "LMO": Concept("399099002", "R-10230", "latero-medial oblique"),
    "XCCL": Concept("399192008", "R-1024A", "cranio-caudal exaggerated laterally"),
    "XCCM": Concept("399101009", "R-1024B", "cranio-caudal exaggerated medially"),
    "FB": Concept("399196006", "R-10244", "caudo-cranial (from below)"),
    "SIO": Concept("399188001", "R-102D0", "superolateral to inferomedial oblique"),
    "ISO": Concept("441555000", "R-40AAA", "inferomedial to superolateral oblique"),
    "SPECIMEN": Concept("127457009", "G-8310", "tissue specimen from breast"),
    # exaggerated cranio-caudal: a retired SNM3 code without an SCT successor in
    # CID 4014, still found in old headers
    "XCC": Concept("", "R-102CF", "exaggerated cranio-caudal"),
}

# CID 4015, keyed by a short readable name.
MODIFIERS: dict[str, Concept] = {
    "cleavage": Concept("399161006", "R-102D2", "cleavage"),
    "axillary tail": Concept("399011000", "R-102D1", "axillary tail"),
    "rolled lateral": Concept("399197002", "R-102D3", "rolled lateral"),
    "rolled medial": Concept("399226006", "R-102D4", "rolled medial"),
    "rolled inferior": Concept("414493004", "R-102CA", "rolled inferior"),
    "rolled superior": Concept("415670009", "R-102C9", "rolled superior"),
    "implant displaced": Concept("399209000", "R-102D5", "implant displaced"),
    "magnification": Concept("399163009", "R-102D6", "magnification"),
    "spot compression": Concept("399055006", "R-102D7", "spot compression"),
    "tangential": Concept("399110001", "R-102C2", "tangential"),
    "nipple in profile": Concept("442581004", "R-40AB3", "nipple in profile"),
    "anterior compression": Concept("441752004", "P2-00161", "anterior compression"),
    "infra-mammary fold": Concept("442593008", "R-40ABE", "infra-mammary fold"),
    "axillary tissue": Concept("442580003", "R-40AB2", "axillary tissue"),
}

# CID 6000 (BI-RADS 5th edition composition categories).
DENSITY: dict[str, Concept] = {
    "A": Concept("129716005", "", "Almost entirely fat"),
    "B": Concept("129717001", "", "Scattered fibroglandular densities"),
    "C": Concept("129718006", "", "Heterogeneously dense"),
    "D": Concept("129719003", "", "Extremely dense"),
}

# CID 244 (R, L, and B for both).
LATERALITY: dict[str, Concept] = {
    "R": Concept("24028007", "G-A100", "Right"),
    "L": Concept("7771000", "G-A101", "Left"),
    "B": Concept("51440002", "G-A102", "Right and left"),
}


def _by_value(table: dict[str, Concept]) -> dict[str, str]:
    return {value: name for name, concept in table.items() for value in concept.values}


#: Code value (SCT or SRT) -> view short name (``"399162004"`` and ``"R-10242"`` -> ``"CC"``).
VIEW_BY_CODE: dict[str, str] = _by_value(VIEWS)
#: Code value (SCT or SRT) -> modifier name.
MODIFIER_BY_CODE: dict[str, str] = _by_value(MODIFIERS)
#: Code value -> BI-RADS letter.
DENSITY_BY_CODE: dict[str, str] = _by_value(DENSITY)
#: Code value (SCT or SRT) -> ``"R"``, ``"L"`` or ``"B"``.
LATERALITY_BY_CODE: dict[str, str] = _by_value(LATERALITY)

__all__ = [
    "DENSITY", "DENSITY_BY_CODE", "LATERALITY", "LATERALITY_BY_CODE", "MODIFIERS",
    "MODIFIER_BY_CODE", "VIEWS", "VIEW_BY_CODE", "Concept",
]
