"""Who an instance belongs to, and when two instances may be treated as one exam.

The rule (applied at the door, :mod:`mammo_density.plugin.ingest`, and when a study is
queued, :mod:`mammo_density.plugin.assembly`):

Two instances belong to the same patient when, for each attribute below, their values
agree after normalisation (leading/trailing spaces and NULs removed, inner runs of spaces
collapsed, upper case; for PatientName also trailing ``^``/``=`` component separators
removed):

=====================  ==============================================
attribute              compared
=====================  ==============================================
PatientID              yes
IssuerOfPatientID      yes
PatientName            yes
PatientBirthDate       yes
=====================  ==============================================

An empty (or absent) value is *unknown*: it agrees with anything. Two instances conflict
as soon as one attribute has two different non-empty values. (Dose reports and other
objects often leave patient attributes out, and one system fills in what another left
empty, so a missing value is no evidence of another patient; a different value is. The
price: an instance without any patient attribute agrees with every patient.)

Consequences:

- The same SOP Instance UID received again must carry the same patient (this rule), the
  same Study Instance UID and the same pixel data (same transfer syntax, same bytes:
  :func:`content_digest`); anything else is refused and the first copy is kept.
- A study whose instances do not all agree with each other is never assessed as one
  exam: it is held as ``conflicting`` with the reason, and no SR is produced.

Identities are stored as digests of the normalised values (:class:`Identity`), so the
state database and the log lines never hold a name, an ID or a birth date; reasons name
the attributes that differ, never their values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from pydicom.dataset import Dataset

# attribute -> True when an empty value is itself a value (must match exactly); the
# rule above makes every empty value unknown. Kept as data so the rule has one home.
ATTRIBUTES: dict[str, bool] = {
    "PatientID": False,
    "IssuerOfPatientID": False,
    "PatientName": False,
    "PatientBirthDate": False,
}

_SPACES = re.compile(r"\s+")


def normalise(keyword: str, value: object) -> str:
    """The comparable form of one attribute's value (``""`` when empty)."""
    text = "" if value is None else str(value)
    text = _SPACES.sub(" ", text.replace("\x00", " ")).strip().upper()
    if keyword == "PatientName":
        text = text.rstrip("^= ").strip()
    return text


def _digest(text: str) -> str:
    if not text:
        return ""
    return hashlib.sha256(("mammo-density/identity/" + text).encode("utf-8",
                                                                   "surrogateescape")
                          ).hexdigest()[:24]


@dataclass(frozen=True)
class Identity:
    """Digests of the normalised patient attributes of one instance (``""``: empty)."""

    patient_id: str = ""
    issuer: str = ""
    name: str = ""
    birth_date: str = ""

    @classmethod
    def of(cls, ds: Dataset) -> Identity:
        """The identity a data set carries (header only; never raises for odd values)."""
        def get(keyword: str) -> str:
            try:
                value = ds.get(keyword, "")
            except Exception:  # a value pydicom cannot convert: compare its raw form
                elem = ds.get_item(keyword) if keyword in ds else None
                value = getattr(elem, "value", b"") if elem is not None else ""
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
            return _digest(normalise(keyword, value))

        return cls(patient_id=get("PatientID"), issuer=get("IssuerOfPatientID"),
                   name=get("PatientName"), birth_date=get("PatientBirthDate"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Identity | None:
        """The stored form back (None for rows recorded before identities were kept)."""
        if not text:
            return None
        data = json.loads(text)
        return cls(**{k: str(data.get(k, "")) for k in ("patient_id", "issuer", "name",
                                                        "birth_date")})


_FIELDS = {"PatientID": "patient_id", "IssuerOfPatientID": "issuer",
           "PatientName": "name", "PatientBirthDate": "birth_date"}


def differences(a: Identity, b: Identity) -> list[str]:
    """The attributes (keywords) on which ``a`` and ``b`` disagree under the rule."""
    out = []
    for keyword, empty_is_value in ATTRIBUTES.items():
        x, y = getattr(a, _FIELDS[keyword]), getattr(b, _FIELDS[keyword])
        if x == y:
            continue
        if not empty_is_value and (not x or not y):
            continue
        out.append(keyword)
    return out


def same_patient(a: Identity, b: Identity) -> bool:
    """True when ``a`` and ``b`` may be the same patient under the rule."""
    return not differences(a, b)


def conflict(identities: Iterable[Identity | None]) -> str:
    """Why a set of instances cannot be one patient's exam (``""`` when it can).

    Every pair must agree (agreement is not transitive when values are empty: an image
    without a name agrees with two images whose names differ)."""
    known = list(dict.fromkeys(i for i in identities if i is not None))
    differing: set[str] = set()
    for i, a in enumerate(known):
        for b in known[i + 1:]:
            differing.update(differences(a, b))
    if not differing:
        return ""
    attrs = ", ".join(k for k in ATTRIBUTES if k in differing)
    return f"instances of this study name different patients ({attrs} differ)"


def content_digest(transfer_syntax: str, chunks: Iterable[bytes]) -> str:
    """Digest of an instance's pixel data as sent (transfer syntax + the bytes from the
    pixel data element to the end of the data set): equal digests, same image."""
    h = hashlib.sha256(str(transfer_syntax).encode() + b"\x00")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


__all__ = ["ATTRIBUTES", "Identity", "conflict", "content_digest", "differences",
           "normalise", "same_patient"]
