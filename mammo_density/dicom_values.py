"""Values copied from a source header, made valid for their VR or left empty.

Real headers carry values that break a strict reader of the object they are copied into:
a PatientAge of ``732.0m``, dates written ``2026-01-01``, names longer than a PN
component group allows, lower-case code strings, UIDs that are not UIDs. Before such
values go into an object this product writes (the density SR copies the patient and
study attributes of its source images), :func:`clean_dataset` checks every string value
with pydicom's validators (``pydicom.valuerep.validate_value``), corrects what has one
clear reading, and empties the rest:

- AS ``732.0m`` / ``61 Y`` -> ``732M`` / ``061Y`` (a number up to 999 and a unit D/W/M/Y);
- DA ``2026-01-01`` / ``2026.01.01`` -> ``20260101`` (must be a real date); TM
  ``12:30:00`` -> ``123000``; DT separators removed;
- PN: each component group cut to 64 characters; LO/SH/ST/LT/AE/UC: cut to the VR's
  maximum length; DS re-formatted to at most 16 characters; CS upper-cased;
- UI, IS, anything still invalid: left empty; a sequence item holding an invalid UID (a
  reference to nothing) is dropped, and a sequence left without items is removed.

Values are never invented: a correction only removes separators, changes case, pads
digits or shortens. Sequences are cleaned item by item. Binary and numeric VRs are kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import format_number_as_ds, validate_value

log = logging.getLogger(__name__)

#: Maximum value length (characters) of the text VRs shortened rather than emptied.
MAX_LENGTH = {"AE": 16, "SH": 16, "LO": 64, "UC": 1024 ** 2, "ST": 1024, "LT": 10240,
              "CS": 16}
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
               "TM", "UC", "UI", "UR", "UT"}
_AS = re.compile(r"^\s*(\d{1,3})(?:\.0*)?\s*([DWMY])\s*$", re.IGNORECASE)
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def is_valid(vr: str, value: object) -> bool:
    """True when ``value`` (one value, not a multi-value) is valid for ``vr``."""
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError):
        return False
    if vr == "DA" and value:
        return _real_date(str(value))
    return True


def _real_date(text: str) -> bool:
    import datetime

    if len(text) != 8 or not text.isdigit():
        return False
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def valid_uid(value: object) -> bool:
    """True for a syntactically valid UID (digits and dots, <= 64 characters, no
    leading zeros in a component)."""
    return bool(value) and is_valid("UI", str(value))


def _correct(vr: str, text: str) -> str:
    """A corrected form of ``text`` for ``vr`` (may still be invalid)."""
    text = text.strip(" \x00")
    if vr == "AS":
        m = _AS.match(text)
        return f"{int(m.group(1)):03d}{m.group(2).upper()}" if m else ""
    if vr == "DA":
        return re.sub(r"[-./ ]", "", text)
    if vr == "TM":
        return re.sub(r"[: ]", "", text)
    if vr == "DT":
        return re.sub(r"[-/: T]", "", text)
    if vr == "DS":
        try:
            return format_number_as_ds(float(text))
        except (ValueError, OverflowError):
            return ""
    if vr == "CS":
        return text.upper()[:MAX_LENGTH["CS"]]
    if vr == "PN":
        groups = text.split("=")[:3]
        return "=".join("^".join(c.strip() for c in g.split("^")[:5])[:64] for g in groups)
    if vr in MAX_LENGTH:
        return text[:MAX_LENGTH[vr]]
    return text


def clean_value(vr: str, value: object) -> str:
    """``value`` valid for ``vr``: unchanged, corrected, or ``""``."""
    if value is None or value == "":
        return ""
    text = str(value)
    if is_valid(vr, text):
        return text
    fixed = _correct(vr, text)
    return fixed if fixed and is_valid(vr, fixed) else ""


def _values(elem: DataElement) -> list[object]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _has_invalid_uid(item: Dataset) -> bool:
    return any(e.VR == "UI" and any(not valid_uid(v) for v in _values(e)) for e in item)


def clean_element(elem: DataElement) -> bool:
    """Make ``elem`` valid in place; True when it changed."""
    if elem.VR == "SQ":  # an item referring to something by an invalid UID is dropped
        items = list(elem.value or [])
        kept = [item for item in items if not _has_invalid_uid(item)]
        changed = len(kept) != len(items)
        for item in kept:
            changed |= clean_dataset(item)
        if changed:
            elem.value = kept
        return changed
    if elem.VR not in _STRING_VRS:
        return False
    values = _values(elem)
    if not values:
        return False
    cleaned = [clean_value(elem.VR, v) for v in values]
    if cleaned == [str(v) for v in values]:
        return False
    kept = [v for v in cleaned if v != ""]
    if not kept:
        elem.value = None
    elif len(kept) == 1:
        elem.value = kept[0]
    else:
        elem.value = kept
    return True


def clean_dataset(ds: Dataset, *, keywords: Iterable[str] | None = None) -> bool:
    """Make every string value of ``ds`` (recursively) valid for its VR, in place.

    ``keywords`` limits the top level to those attributes. Returns True when anything
    changed; what changed is logged by keyword only (never the value: it may identify
    the patient).
    """
    wanted = set(keywords) if keywords is not None else None
    changed = False
    emptied = []
    for elem in ds:
        if wanted is not None and elem.keyword not in wanted:
            continue
        if elem.tag.is_private:
            continue
        try:
            if clean_element(elem):
                changed = True
                if elem.VR == "SQ" and not elem.value:  # all items dropped
                    emptied.append(elem.tag)
                    continue
                log.info("source %s not valid for its VR (%s): %s", elem.keyword or elem.tag,
                         elem.VR, "corrected" if elem.value not in (None, "") else "left empty")
        except Exception as err:  # an undecodable value: drop it rather than copy it
            log.info("source %s unreadable (%s); left empty", elem.keyword or elem.tag,
                     type(err).__name__)
            elem.value = None
            changed = True
    for tag in emptied:  # most such sequences are optional: absent, not empty
        del ds[tag]
    return changed


def invalid_uids(ds: Dataset, keywords: Iterable[str] = _UID_KEYWORDS) -> list[str]:
    """Keywords among ``keywords`` whose value in ``ds`` is not a valid UID."""
    return [k for k in keywords if k in ds and not valid_uid(ds.get(k))]


__all__ = ["MAX_LENGTH", "clean_dataset", "clean_element", "clean_value", "invalid_uids",
           "is_valid", "valid_uid"]
