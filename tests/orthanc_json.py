"""Helpers for the Orthanc plugin tests: pydicom datasets in Orthanc's "simplified" JSON form.

Orthanc's ``/instances/{id}/simplified-tags`` (and ``tags?simplify``) maps keyword ->
string, sequences to lists of such dicts, multi-valued strings joined with a backslash.
The integration tests check the plugin against Orthanc's real output; these helpers let the
plain-function tests feed the same shape without an Orthanc.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def simplify(ds: Dataset) -> dict[str, Any]:
    """``ds`` as Orthanc's simplified JSON (pixel data and binary values left out)."""
    out: dict[str, Any] = {}
    for elem in ds:
        if not elem.keyword or elem.tag.group == 0x0002 or elem.VR in ("OB", "OW", "OF",
                                                                          "OD", "OL", "UN"):
            continue
        if elem.VR == "SQ":
            out[elem.keyword] = [simplify(item) for item in elem.value]
        elif elem.value is None:
            out[elem.keyword] = None
        elif isinstance(elem.value, MultiValue):
            out[elem.keyword] = "\\".join(str(v) for v in elem.value)
        else:
            out[elem.keyword] = str(elem.value)
    return out
