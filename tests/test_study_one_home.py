"""Each SOP Class UID and each view code is written in one place in product code
(mammo_density/, plugin/, worker/, train/): mammo_density/study/sop.py and
mammo_density/study/codes.py. The Orthanc plugin's stdlib copy is the one allowed
exception, checked value for value by tests/test_orthanc_logic.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mammo_density.study import codes, sop

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("mammo_density", "plugin", "worker", "train")
ORTHANC_COPY = "plugin/orthanc/mammo_density_routing.py"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8")
            for top in PRODUCT for p in sorted((REPO / top).rglob("*.py"))}


SOURCES = _sources()
SOP_UIDS = sorted({v for k, v in vars(sop).items()
                   if k.isupper() and isinstance(v, str) and v.startswith("1.2.840.10008.")
                   and not v.endswith(".")})
VIEW_CODE_VALUES = sorted({v for c in codes.VIEWS.values() for v in c.values})
OTHER_CODE_VALUES = sorted({v for table in (codes.MODIFIERS, codes.DENSITY, codes.LATERALITY)
                            for c in table.values() for v in c.values})


def _files_with(literal: str) -> list[str]:
    pattern = re.compile(r"(?<![\w.-])" + re.escape(literal) + r"(?![\w-]|\.\d)")
    return [name for name, text in SOURCES.items() if pattern.search(text)]


@pytest.mark.parametrize("uid", SOP_UIDS)
def test_each_sop_class_uid_in_one_place(uid: str) -> None:
    found = [f for f in _files_with(uid) if f != ORTHANC_COPY]
    assert found == ["mammo_density/study/sop.py"]


@pytest.mark.parametrize("code", VIEW_CODE_VALUES)
def test_each_view_code_in_one_place(code: str) -> None:
    found = [f for f in _files_with(code) if f != ORTHANC_COPY]
    assert found == ["mammo_density/study/codes.py"]


@pytest.mark.parametrize("code", OTHER_CODE_VALUES)
def test_each_modifier_density_and_laterality_code_in_one_place(code: str) -> None:
    found = [f for f in _files_with(code) if f != ORTHANC_COPY]
    assert found == ["mammo_density/study/codes.py"]


def test_the_scan_finds_a_copy() -> None:
    """The scan is not blind: a copied UID or code would be found."""
    SOURCES["worker/copy.py"] = 'X = "1.2.840.10008.5.1.4.1.1.1.2"\nV = "R-10242"\n'
    try:
        assert "worker/copy.py" in _files_with(sop.MG_FOR_PRESENTATION)
        assert "worker/copy.py" not in _files_with(sop.MG_FOR_PROCESSING)
        assert "worker/copy.py" in _files_with("R-10242")
    finally:
        del SOURCES["worker/copy.py"]
