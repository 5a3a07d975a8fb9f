"""Plain functions of the Orthanc plugin: what to forward, when, and what the SR says.

Runs inside Orthanc on Debian's Python 3.11 (imported by ``mammo_density_orthanc.py`` from
the script's folder) and in the tests as
``mammo_density.plugin.orthanc.mammo_density_routing``: standard library only, no
``orthanc``, no project imports. Tags arrive in Orthanc's "simplified" JSON form
(``/instances/{id}/simplified-tags``, ``DicomInstance.GetInstanceSimplifiedJson``):
keyword -> string, sequences as lists of dicts.

This is a stdlib copy of rules whose one home is :mod:`mammo_density.study` (it cannot
import the project inside Orthanc): the SOP classes (``study.sop``), the slots
(``study.slots``), the view codes and view reading (``study.codes``, ``study.views``) and
the header checks of the screening-image gate (``study.gate``).
``tests/test_orthanc_logic.py`` checks that every table here equals the study package's
and that both give the same slot and gate reason on the same headers; change the study
package first, then this copy, and the test tells you when they differ.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SIDES: tuple[str, ...] = ("R", "L")
SCREENING_VIEWS: tuple[str, ...] = ("CC", "MLO")
SLOTS: tuple[str, ...] = ("R-CC", "L-CC", "R-MLO", "L-MLO")

# SOP classes the AI node classifies or reads.
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MAMMO_IMAGE_CLASSES = frozenset({MG_FOR_PRESENTATION, MG_FOR_PROCESSING})

# View codes of CID 4014 (SNOMED CT and legacy SNOMED RT) -> the view's short name.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC", "R-10242": "CC",
    "399368009": "MLO", "R-10226": "MLO",
    "399260004": "ML", "R-10224": "ML",
    "399352003": "LM", "R-10228": "LM",
    "399099002": "LMO", "R-10230": "LMO",
    "399192008": "XCCL", "R-1024A": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM",
    "399196006": "FB", "R-10244": "FB",
    "399188001": "SIO", "R-102D0": "SIO",
    "441555000": "ISO", "R-40AAA": "ISO",
    "127457009": "SPECIMEN", "G-8310": "SPECIMEN",
    "R-102CF": "XCC",
}
_VIEW_POSITIONS = frozenset(VIEW_CODES.values())
# ViewPosition spellings of modified views -> the SCT code of their CID 4015 modifier.
_MODIFIED_POSITIONS: dict[str, str] = {"RL": "399197002", "RM": "399226006",
                                       "AT": "399011000", "CV": "399161006"}
_IMPLANT_DISPLACED_SUFFIX = "ID"
_IMPLANT_DISPLACED = "399209000"

# The header checks of the screening-image gate that Orthanc's tags allow.
MIN_FIELD_MM = 80.0
MIN_MATRIX_PX = 128
HINT_FIELDS = ("ImageType", "SeriesDescription", "ProtocolName", "BodyPartExamined",
               "ViewPosition", "PerformedProcedureStepDescription")
QC_WORDS = ("QC", "QA", "PHANTOM", "FLATFIELD", "FLAT FIELD", "CALIBRATION", "CONSTANCY",
            "UNIFORMITY", "QUALITY CONTROL")
STEREO_WORDS = ("STEREO", "STEREOTACTIC", "STEREOTAXIS", "BIOPSY")
SPECIMEN_WORDS = ("SPECIMEN",)
_WORD = re.compile(r"[A-Z0-9]+")

# SR codes (docs/sr.md).
CODE_REPORT = "126000"              # Imaging Measurement Report (DCM)
CODE_BREAST_COMPOSITION = "129715009"  # SCT
CODE_FINDING = "121071"             # DCM, TEXT summary line
CODE_FINDING_SITE = "363698007"     # SCT
CODE_LATERALITY = "272741003"       # SCT
CODE_ALGORITHM_NAME = "111001"      # DCM
CODE_ALGORITHM_VERSION = "111003"   # DCM
CODE_AGD = "111637"                 # DCM, Accumulated Average Glandular Dose
CLASS_CODES: dict[str, str] = {
    "129716005": "A",  # Almost entirely fat
    "129717001": "B",  # Scattered fibroglandular densities
    "129718006": "C",  # Heterogeneously dense
    "129719003": "D",  # Extremely dense
}
#: Per-class probabilities (0-1), private scheme 99MDENS (docs/sr.md); SRs written before
#: 0.2 used the CID 6000 class codes as the NUM names, in %.
PROBABILITY_CODES: dict[str, str] = {f"PROB-{c}": c for c in "ABCD"}
CODE_DENSE = "DENSE"                # 99MDENS
CODE_PARTIAL = "PARTIAL"            # 99MDENS
SIDE_CODES: dict[str, str] = {"24028007": "R", "7771000": "L", "51440002": "B"}
YES_NO_CODES: dict[str, bool] = {"373066001": True, "373067005": False}


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginSettings:
    """The ``MammoDensity`` section of Orthanc's configuration.

    Attributes
    ----------
    modality
        DicomModalities name of the AI node (``"Modality"``, required).
    forward_on_four_views
        Forward as soon as R-CC, L-CC, R-MLO and L-MLO are stored (``"ForwardOnFourViews"``);
        otherwise only on STABLE_STUDY.
    forward_each_image
        Send each screening image (one that fills R-CC, L-CC, R-MLO or L-MLO) as soon as it
        is stored while its study is waiting (``"ForwardEachImage"``, default on), so the
        node prepares it while the rest arrive; the fourth view then goes alone, and
        STABLE_STUDY still sends whatever is left.
    retry_seconds, max_retry_seconds, max_retries
        Back-off after a failed forward: ``retry_seconds * 2**(n-1)`` capped at
        ``max_retry_seconds``; give up (state ``failed``) after ``max_retries`` failures.
    forward_tomosynthesis, forward_dose_reports
        Also send Breast Tomosynthesis images / X-Ray Radiation Dose SRs of the study.
    forward_digitised_film
        Also send Secondary Capture images with Modality MG (digitised film; the node
        assesses them only with its ``digitised_film`` setting).
    metadata
        Name (declared in ``UserMetadata``) or index (>= 1024) of the study metadata
        holding the forward state; by default ``"MammoDensity"`` where ``UserMetadata``
        declares it, else index ``"4242"``.
    global_property
        Index (>= 1024) of the global property listing unfinished studies (restart-safe).
    recovery_delay_seconds
        After a restart, studies that were still arriving are forwarded after this delay.
    store_timeout_seconds
        DICOM timeout of one forward (``"Timeout"`` of ``/modalities/{name}/store``).
    """

    modality: str
    forward_on_four_views: bool = True
    forward_each_image: bool = True
    retry_seconds: float = 10.0
    max_retry_seconds: float = 600.0
    max_retries: int = 30
    forward_tomosynthesis: bool = False
    forward_dose_reports: bool = False
    forward_digitised_film: bool = False
    metadata: str = "MammoDensity"
    global_property: int = 9301
    recovery_delay_seconds: float = 60.0
    store_timeout_seconds: int = 120
    explorer: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "Modality": self.modality,
            "ForwardOnFourViews": self.forward_on_four_views,
            "ForwardEachImage": self.forward_each_image,
            "RetrySeconds": self.retry_seconds,
            "MaxRetrySeconds": self.max_retry_seconds,
            "MaxRetries": self.max_retries,
            "ForwardTomosynthesis": self.forward_tomosynthesis,
            "ForwardDoseReports": self.forward_dose_reports,
            "ForwardDigitisedFilm": self.forward_digitised_film,
            "Metadata": self.metadata,
            "GlobalProperty": self.global_property,
            "RecoveryDelaySeconds": self.recovery_delay_seconds,
            "StoreTimeoutSeconds": self.store_timeout_seconds,
            "Explorer": self.explorer,
        }


_KEYS = {
    "Modality": ("modality", str),
    "ForwardOnFourViews": ("forward_on_four_views", bool),
    "ForwardEachImage": ("forward_each_image", bool),
    "RetrySeconds": ("retry_seconds", float),
    "MaxRetrySeconds": ("max_retry_seconds", float),
    "MaxRetries": ("max_retries", int),
    "ForwardTomosynthesis": ("forward_tomosynthesis", bool),
    "ForwardDoseReports": ("forward_dose_reports", bool),
    "ForwardDigitisedFilm": ("forward_digitised_film", bool),
    "Metadata": ("metadata", str),
    "GlobalProperty": ("global_property", int),
    "RecoveryDelaySeconds": ("recovery_delay_seconds", float),
    "StoreTimeoutSeconds": ("store_timeout_seconds", int),
    "Explorer": ("explorer", bool),
}


def parse_settings(config: Mapping[str, Any]) -> PluginSettings:
    """Read the ``MammoDensity`` section from Orthanc's whole configuration.

    Raises
    ------
    ValueError
        Naming the key (``MammoDensity.Modality`` ...) that is missing or invalid.
    """
    section = config.get("MammoDensity")
    if not isinstance(section, Mapping):
        raise ValueError("configuration has no \"MammoDensity\" section (an object with "
                         "at least \"Modality\")")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise ValueError(f"MammoDensity: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(_KEYS)}")
    values: dict[str, Any] = {}
    for key, (attr, kind) in _KEYS.items():
        if key not in section:
            continue
        raw = section[key]
        if kind is bool:
            if not isinstance(raw, bool):
                raise ValueError(f"MammoDensity.{key} must be true or false, not {raw!r}")
            values[attr] = raw
        elif kind is str:
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(f"MammoDensity.{key} must be a non-empty string, not {raw!r}")
            values[attr] = raw.strip()
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"MammoDensity.{key} must be a number, not {raw!r}")
            if kind is int and raw != int(raw):
                raise ValueError(f"MammoDensity.{key} must be an integer, not {raw!r}")
            if raw < 0 or not math.isfinite(raw):
                raise ValueError(f"MammoDensity.{key} must be >= 0, not {raw!r}")
            values[attr] = kind(raw)
    if "modality" not in values:
        raise ValueError("MammoDensity.Modality is required: the DicomModalities name of "
                         "the mammo-density AI node")
    if values.get("global_property", 9301) < 1024:
        raise ValueError("MammoDensity.GlobalProperty must be >= 1024 (lower indexes are "
                         "Orthanc's own)")
    if values.get("retry_seconds", 1.0) <= 0:
        raise ValueError("MammoDensity.RetrySeconds must be > 0")
    if "recovery_delay_seconds" not in values:
        stable = config.get("StableAge", 60)
        if isinstance(stable, int | float) and not isinstance(stable, bool) and stable >= 0:
            values["recovery_delay_seconds"] = float(stable)
    user_metadata = config.get("UserMetadata") or {}
    if "metadata" in values:
        values["metadata"] = resolve_metadata_name(values["metadata"], user_metadata)
    else:  # "MammoDensity" where declared, else an undeclared numeric index
        values["metadata"] = "MammoDensity" if "MammoDensity" in user_metadata else "4242"
        resolve_metadata_name(values["metadata"], user_metadata)
    return PluginSettings(**values)


def resolve_metadata_name(name: str, user_metadata: Mapping[str, Any]) -> str:
    """The name to use in ``/studies/{id}/metadata/{name}``.

    A name declared in Orthanc's ``UserMetadata`` is used as is; a number must be an index
    >= 1024 (Orthanc accepts numeric metadata without declaration).

    Raises
    ------
    ValueError
        When the name is neither declared nor a valid index.
    """
    if name in user_metadata:
        index = user_metadata[name]
        if not isinstance(index, int) or index < 1024:
            raise ValueError(f"UserMetadata.{name} must be an integer >= 1024")
        return name
    if name.isdigit():
        if int(name) < 1024:
            raise ValueError(f"MammoDensity.Metadata index {name} must be >= 1024")
        return name
    raise ValueError(f"MammoDensity.Metadata {name!r} is not declared in \"UserMetadata\" "
                     f"(add \"{name}\": 4242 there) and is not a numeric index >= 1024")


# --------------------------------------------------------------------------------------
# Instances: laterality, view, slot, whether to forward
# --------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # multi-valued element in simplified JSON
        value = value[0] if value else ""
    return str(value).strip()


def _items(tags: Mapping[str, Any], keyword: str) -> list[Mapping[str, Any]]:
    value = tags.get(keyword)
    if isinstance(value, list):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _code(item: Mapping[str, Any]) -> str:
    return _text(item.get("CodeValue")) or _text(item.get("LongCodeValue"))


def laterality_of(tags: Mapping[str, Any]) -> str | None:
    """ImageLaterality, else Laterality, else FrameLaterality of the first frame."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(tags.get(keyword)).upper()
        if value in ("R", "L", "B"):
            return value
    for groups_key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = _items(tags, groups_key)
        if not groups:
            continue
        for anatomy in _items(groups[0], "FrameAnatomySequence"):
            value = _text(anatomy.get("FrameLaterality")).upper()
            if value in ("R", "L", "B"):
                return value
    return None


def view_of(tags: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """(view, modifier codes) from ViewPosition, else ViewCodeSequence."""
    view: str | None = None
    modifiers: list[str] = []
    position = _text(tags.get("ViewPosition")).upper()
    if position in _VIEW_POSITIONS:
        view = position
    elif position in _MODIFIED_POSITIONS:
        modifiers.append(_MODIFIED_POSITIONS[position])
    elif position.endswith(_IMPLANT_DISPLACED_SUFFIX) and \
            position[:-len(_IMPLANT_DISPLACED_SUFFIX)] in _VIEW_POSITIONS:
        view = position[:-len(_IMPLANT_DISPLACED_SUFFIX)]
        modifiers.append(_IMPLANT_DISPLACED)
    for item in _items(tags, "ViewCodeSequence"):
        if view is None and _code(item) in VIEW_CODES:
            view = VIEW_CODES[_code(item)]
        for mod in _items(item, "ViewModifierCodeSequence"):
            if _code(mod) and _code(mod) not in modifiers:
                modifiers.append(_code(mod))
    for mod in _items(tags, "ViewModifierCodeSequence"):
        if _code(mod) and _code(mod) not in modifiers:
            modifiers.append(_code(mod))
    return view, tuple(modifiers)


def _words(tags: Mapping[str, Any]) -> str:
    parts = []
    for keyword in HINT_FIELDS:
        value = tags.get(keyword)
        if value is None:
            continue
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        parts.append(" ".join(_WORD.findall(str(value).upper())))
    return " " + " ".join(p for p in parts if p) + " "


def _float(value: Any) -> float | None:
    try:
        return float(_text(value))
    except ValueError:
        return None


def _spacing(tags: Mapping[str, Any]) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = tags.get(keyword)
        parts = value if isinstance(value, list) else str(value or "").split("\\")
        numbers = [_float(v) for v in parts[:2]]
        if len(numbers) == 2 and numbers[0] and numbers[1] and \
                numbers[0] > 0 and numbers[1] > 0:
            return numbers[0], numbers[1]
    return None


def gate_reason(tags: Mapping[str, Any]) -> str:
    """The screening-image gate's reason code for the checks the tags allow (quality
    control, stereotactic, specimen, too small); ``""`` when none applies."""
    words = _words(tags)
    view, _ = view_of(tags)
    if any(f" {w} " in words for w in QC_WORDS):
        return "quality_control"
    if any(f" {w} " in words for w in STEREO_WORDS):
        return "stereotactic"
    if view == "SPECIMEN" or any(f" {w} " in words for w in SPECIMEN_WORDS):
        return "specimen"
    rows, cols = _float(tags.get("Rows")), _float(tags.get("Columns"))
    if rows is not None and cols is not None:
        if min(rows, cols) < MIN_MATRIX_PX:
            return "too_small"
        spacing = _spacing(tags)
        if spacing and min(rows * spacing[0], cols * spacing[1]) < MIN_FIELD_MM:
            return "too_small"
    return ""


def slot_of(tags: Mapping[str, Any]) -> str | None:
    """The screening slot (``"R-CC"`` ...) an image fills, or ``None`` (also when the
    gate's header checks keep it out)."""
    laterality = laterality_of(tags)
    view, modifiers = view_of(tags)
    if laterality in SIDES and view in SCREENING_VIEWS and not modifiers \
            and not gate_reason(tags):
        return f"{laterality}-{view}"
    return None


def forwardable_classes(settings: PluginSettings) -> frozenset[str]:
    """SOP classes the plugin sends to the AI node under these settings."""
    classes = set(MAMMO_IMAGE_CLASSES)
    if settings.forward_tomosynthesis:
        classes.add(BREAST_TOMOSYNTHESIS)
    if settings.forward_dose_reports:
        classes.add(XRAY_DOSE_SR)
    if settings.forward_digitised_film:
        classes.add(SECONDARY_CAPTURE)
    return frozenset(classes)


def is_forwardable(sop_class_uid: str, modality: str, settings: PluginSettings) -> bool:
    """Whether an instance goes to the AI node.

    Mammography images (a mammography SOP class, Modality MG or empty: anonymisation
    often strips it) do; the density SR coming back (Comprehensive SR, Modality SR) never
    does, which is what keeps the routing free of loops. Dose SRs only with
    ``ForwardDoseReports``; Secondary Capture only with ``ForwardDigitisedFilm`` and
    Modality MG.
    """
    sop_class_uid = sop_class_uid.strip()
    if sop_class_uid not in forwardable_classes(settings):
        return False
    if sop_class_uid == XRAY_DOSE_SR:
        return True
    if sop_class_uid == SECONDARY_CAPTURE:
        return modality.strip().upper() == "MG"
    return modality.strip().upper() in ("MG", "")


@dataclass(frozen=True)
class InstanceInfo:
    """What the plugin needs to know of a stored instance."""

    instance_id: str
    study_uid: str
    sop_class_uid: str
    modality: str
    slot: str | None


def instance_info(instance_id: str, tags: Mapping[str, Any]) -> InstanceInfo:
    """Read an instance's simplified tags into an :class:`InstanceInfo`."""
    return InstanceInfo(
        instance_id=instance_id,
        study_uid=_text(tags.get("StudyInstanceUID")),
        sop_class_uid=_text(tags.get("SOPClassUID")),
        modality=_text(tags.get("Modality")).upper(),
        slot=slot_of(tags),
    )


@dataclass
class StudySlots:
    """Screening slots seen so far per study, to forward as soon as all four are there."""

    seen: dict[str, set[str]] = field(default_factory=dict)

    def add(self, study_uid: str, slot: str | None) -> bool:
        """Record one image; True when the study now holds all four slots."""
        slots = self.seen.setdefault(study_uid, set())
        if slot:
            slots.add(slot)
        return self.complete(study_uid)

    def complete(self, study_uid: str) -> bool:
        return set(SLOTS) <= self.seen.get(study_uid, set())

    def missing(self, study_uid: str) -> list[str]:
        have = self.seen.get(study_uid, set())
        return [s for s in SLOTS if s not in have]

    def forget(self, study_uid: str) -> None:
        self.seen.pop(study_uid, None)


def to_forward(instances: Iterable[Mapping[str, str]], already: Iterable[str],
               settings: PluginSettings) -> list[str]:
    """Instance IDs to send: forwardable ones not sent before, in the given order.

    ``instances`` are dicts with ``ID``, ``SOPClassUID`` and ``Modality``.
    """
    sent = set(already)
    return [inst["ID"] for inst in instances
            if inst["ID"] not in sent
            and is_forwardable(inst.get("SOPClassUID", ""), inst.get("Modality", ""), settings)]


# --------------------------------------------------------------------------------------
# Retries and persistent state
# --------------------------------------------------------------------------------------


def backoff_delay(failures: int, base: float, maximum: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1, 2, ...).

    ``base, 2*base, 4*base, ...`` capped at ``maximum``.
    """
    if failures < 1:
        return 0.0
    exponent = min(failures - 1, 62)
    return float(min(maximum, base * (2 ** exponent)))


def backoff_schedule(settings: PluginSettings) -> list[float]:
    """The whole sequence of waits before giving up (for the status route and docs)."""
    return [backoff_delay(n, settings.retry_seconds, settings.max_retry_seconds)
            for n in range(1, settings.max_retries + 1)]


# Study states kept in the study's metadata.
WAITING = "waiting"        # MG images arriving (some maybe sent ahead); forward on four
#                            views or stable
QUEUED = "queued"          # decided, about to be sent
RETRYING = "retrying"      # last send failed; next try at next_try
FORWARDED = "forwarded"    # every forwardable instance sent
FAILED = "failed"          # gave up after max_retries; an admin can re-queue it
UNFINISHED = frozenset({WAITING, QUEUED, RETRYING})


def new_state() -> dict[str, Any]:
    return {"state": WAITING, "forwarded": [], "failures": 0, "last_error": "",
            "next_try": None, "forwarded_at": None, "reason": "", "updated": None}


def load_state(text: str | bytes | None) -> dict[str, Any]:
    """Parse the study's metadata (tolerates absence and garbage: starts afresh)."""
    state = new_state()
    if not text:
        return state
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return state
    if isinstance(data, dict):
        for key in state:
            if key in data:
                state[key] = data[key]
    if state["state"] not in UNFINISHED | {FORWARDED, FAILED}:
        state["state"] = WAITING
    if not isinstance(state["forwarded"], list):
        state["forwarded"] = []
    return state


def dump_state(state: Mapping[str, Any], now: float | None = None) -> str:
    data = dict(state)
    data["updated"] = round(time.time() if now is None else now, 3)
    return json.dumps(data, sort_keys=True)


def after_success(state: dict[str, Any], sent: Iterable[str], reason: str,
                  now: float) -> dict[str, Any]:
    forwarded = list(state.get("forwarded", []))
    forwarded += [i for i in sent if i not in forwarded]
    state.update(state=FORWARDED, forwarded=forwarded, failures=0, last_error="",
                 next_try=None, forwarded_at=round(now, 3), reason=reason)
    return state


def after_early_success(state: dict[str, Any], sent: Iterable[str],
                        now: float) -> dict[str, Any]:
    """One image sent ahead of its study (``ForwardEachImage``): recorded as sent, the
    study still ``waiting`` for its four views or STABLE_STUDY."""
    forwarded = list(state.get("forwarded", []))
    forwarded += [i for i in sent if i not in forwarded]
    state.update(state=WAITING, forwarded=forwarded, failures=0, last_error="",
                 next_try=None, reason="each-image")
    return state


def after_failure(state: dict[str, Any], error: str, settings: PluginSettings,
                  now: float) -> dict[str, Any]:
    """Count a failure: schedule the next try, or give up after ``max_retries``."""
    failures = int(state.get("failures", 0)) + 1
    state.update(failures=failures, last_error=error[:500])
    if failures > settings.max_retries:
        state.update(state=FAILED, next_try=None)
    else:
        delay = backoff_delay(failures, settings.retry_seconds, settings.max_retry_seconds)
        state.update(state=RETRYING, next_try=round(now + delay, 3))
    return state


def load_pending(text: str | bytes | None) -> dict[str, list[str]]:
    """The global property: ``{"pending": [study ids], "failed": [study ids]}``."""
    out: dict[str, list[str]] = {"pending": [], "failed": []}
    if not text:
        return out
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return out
    if isinstance(data, dict):
        for key in out:
            value = data.get(key)
            if isinstance(value, list):
                out[key] = [str(v) for v in value]
    return out


# --------------------------------------------------------------------------------------
# The density SR -> result dict
# --------------------------------------------------------------------------------------


def _concept(item: Mapping[str, Any]) -> str:
    names = _items(item, "ConceptNameCodeSequence")
    return _code(names[0]) if names else ""


def _value_code(item: Mapping[str, Any]) -> str:
    codes = _items(item, "ConceptCodeSequence")
    return _code(codes[0]) if codes else ""


def _children(item: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _items(item, "ContentSequence")


def _walk(item: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for child in _children(item):
        yield child
        yield from _walk(child)


def _number(item: Mapping[str, Any]) -> float | None:
    for measured in _items(item, "MeasuredValueSequence"):
        try:
            return float(_text(measured.get("NumericValue")))
        except ValueError:
            return None
    return None


def _group_side(group: Mapping[str, Any]) -> str | None:
    for child in _children(group):
        if _concept(child) == CODE_FINDING_SITE:
            for mod in _children(child):
                if _concept(mod) == CODE_LATERALITY:
                    return SIDE_CODES.get(_value_code(mod))
    return None


def is_density_sr(tags: Mapping[str, Any]) -> bool:
    """A TID 1500 report holding a breast composition finding."""
    if _concept(tags) != CODE_REPORT:
        return False
    return any(_concept(item) == CODE_BREAST_COMPOSITION
               or _value_code(item) == CODE_BREAST_COMPOSITION for item in _walk(tags))


def parse_density_sr(tags: Mapping[str, Any]) -> dict[str, Any] | None:
    """The density result of a mammo-density SR, from Orthanc's simplified tags.

    Returns ``None`` when the instance is not a density SR. Otherwise a dict::

        {"sop_instance_uid", "series_instance_uid", "study_instance_uid",
         "content_datetime", "algorithm": {"name", "version"},
         "breasts": {"R": {"category", "code", "probabilities", "agd_mgy"}, "L": ...},
         "overall": {"category", "code", "dense", "text", "probabilities"} or None,
         "partial": bool, "assessable": bool, "not_for_clinical_use": bool, "series_description"}
    """
    if not is_density_sr(tags):
        return None
    breasts: dict[str, dict[str, Any]] = {}
    overall: dict[str, Any] | None = None
    algorithm = {"name": "", "version": ""}
    for item in _walk(tags):
        if _concept(item) != "125007":  # Measurement Group
            continue
        side = _group_side(item)
        group: dict[str, Any] = {"category": None, "code": None, "probabilities": {},
                                 "agd_mgy": None}
        dense: bool | None = None
        partial: bool | None = None
        text = ""
        for child in _children(item):
            concept = _concept(child)
            value_type = _text(child.get("ValueType")).upper()
            if concept == CODE_BREAST_COMPOSITION and value_type == "CODE":
                group["code"] = _value_code(child)
                group["category"] = CLASS_CODES.get(group["code"])
            elif concept in PROBABILITY_CODES and value_type == "NUM":
                group["probabilities"][PROBABILITY_CODES[concept]] = _number(child)
            elif concept in CLASS_CODES and value_type == "NUM":
                percent = _number(child)
                group["probabilities"][CLASS_CODES[concept]] = (
                    None if percent is None else round(percent / 100.0, 6))
            elif concept == CODE_AGD and value_type == "NUM":
                group["agd_mgy"] = _number(child)
            elif concept == CODE_ALGORITHM_NAME:
                algorithm["name"] = _text(child.get("TextValue"))
            elif concept == CODE_ALGORITHM_VERSION:
                algorithm["version"] = _text(child.get("TextValue"))
            elif concept == CODE_FINDING and value_type == "TEXT":
                text = _text(child.get("TextValue"))
            elif concept == CODE_PARTIAL and value_type == "CODE":
                partial = YES_NO_CODES.get(_value_code(child))
            elif value_type == "CODE" and _value_code(child) in YES_NO_CODES:
                dense = YES_NO_CODES[_value_code(child)]
        if side in ("R", "L"):
            breasts[side] = group
        elif side == "B" or dense is not None or text:
            overall = {"category": group["category"], "code": group["code"],
                       "dense": dense, "partial": partial, "text": text,
                       "probabilities": group["probabilities"]}
    description = _text(tags.get("SeriesDescription"))
    date, tm = _text(tags.get("ContentDate")), _text(tags.get("ContentTime"))
    return {
        "sop_instance_uid": _text(tags.get("SOPInstanceUID")),
        "series_instance_uid": _text(tags.get("SeriesInstanceUID")),
        "study_instance_uid": _text(tags.get("StudyInstanceUID")),
        "content_datetime": (date + tm) if date else "",
        "algorithm": algorithm,
        "breasts": breasts,
        "overall": overall,
        "partial": (overall["partial"] if overall and overall["partial"] is not None
                    else len(breasts) < 2),  # SRs before 0.2 did not code it
        "assessable": bool(breasts) or bool(overall and overall["category"]),
        "not_for_clinical_use": "not for clinical use" in description.lower(),
        "series_description": description,
    }


def latest_result(results: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The most recent of several density SRs (by content date/time)."""
    found = [r for r in results if r]
    if not found:
        return None
    return max(found, key=lambda r: r.get("content_datetime") or "")


__all__ = [
    "FAILED", "FORWARDED", "QUEUED", "RETRYING", "SLOTS", "UNFINISHED", "WAITING",
    "InstanceInfo", "PluginSettings", "StudySlots", "after_failure", "after_success",
    "backoff_delay", "backoff_schedule", "dump_state", "forwardable_classes", "gate_reason",
    "instance_info", "is_density_sr", "is_forwardable", "laterality_of", "latest_result",
    "load_pending", "load_state", "new_state", "parse_density_sr", "parse_settings",
    "resolve_metadata_name", "slot_of", "to_forward", "view_of",
]
