"""One :class:`~mammo_density.result.UnusedImage` per image not used, the same way
wherever the decision is taken (listener, ``classify``, pipeline)."""

from __future__ import annotations

from mammo_density.logsetup import uid_hash
from mammo_density.result import UnusedImage
from mammo_density.study.reasons import Reason, parse_note, sentence
from mammo_density.study.slots import SLOTS, slot_name, split_slot


def unused_image(sop_uid: str, reason: Reason, detail: str = "", *, slot: str | None = None,
                 laterality: str | None = None, view: str | None = None) -> UnusedImage:
    """The record of one image not used (its SOP Instance UID only as a hash)."""
    if slot in SLOTS:
        laterality, view = split_slot(slot)
    else:  # the slot it would have filled, as the header reads
        slot = slot_name(laterality, view)
    return UnusedImage(image=uid_hash(sop_uid), slot=slot, laterality=laterality, view=view,
                       reason=reason, text=sentence(reason, detail))


def from_note(sop_uid: str, stored_note: str, *,
              default: Reason = Reason.NON_STANDARD_VIEW) -> UnusedImage:
    """The record of an image the gate kept out, from the note the listener stored
    (:func:`mammo_density.study.reasons.note`). Notes written before the reasons were
    coded read as ``default`` with their old text."""
    reason, laterality, view, detail = parse_note(stored_note)
    if reason is None:
        return unused_image(sop_uid, default, detail)
    return unused_image(sop_uid, reason, detail, laterality=laterality, view=view)


#: Images that are no patient's exposure: a study made only of these gets no report.
NOT_PATIENT_IMAGES = frozenset({Reason.QUALITY_CONTROL})


def worth_a_report(images: list[UnusedImage]) -> bool:
    """Whether a study none of whose images is usable still gets a (not assessable) result
    and SR: yes when it holds an image of a patient, so that the radiologist sees why."""
    return any(u.reason not in NOT_PATIENT_IMAGES for u in images)


def describe(images: list[UnusedImage]) -> str:
    """One line for tables and the SR: ``R-CC too_small; L-MLO stereotactic``."""
    return "; ".join(f"{u.slot or (u.laterality or '?') + '-' + (u.view or '?')} "
                     f"{u.reason.value}" for u in images)


__all__ = ["NOT_PATIENT_IMAGES", "describe", "from_note", "unused_image", "worth_a_report"]
