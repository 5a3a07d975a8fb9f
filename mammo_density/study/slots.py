"""The screening slots and what "complete" means.

A screening study has one image per breast side and standard view: R-CC, L-CC, R-MLO,
L-MLO. Adding a view type to the screening set is a change of :data:`SCREENING_VIEWS`
here (the result schema, assembly, the SR and training derive from it); the Orthanc
plugin's stdlib copy is checked against it by a test.

A study is **complete** when every slot holds a For Presentation image: then the
listener queues it at once. Otherwise it waits for the stable timeout and is assessed
from what it has (partial), or is not assessable when no slot is filled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SIDES: tuple[str, ...] = ("R", "L")
SCREENING_VIEWS: tuple[str, ...] = ("CC", "MLO")
#: R-CC, L-CC, R-MLO, L-MLO: the order in which results and SRs list them.
SLOTS: tuple[str, ...] = tuple(f"{side}-{view}" for view in SCREENING_VIEWS for side in SIDES)


def slot_name(laterality: str | None, view: str | None,
              modifiers: Iterable[str] = ()) -> str | None:
    """The slot an unmodified ``view`` of side ``laterality`` fills, else ``None``."""
    if laterality in SIDES and view in SCREENING_VIEWS and not tuple(modifiers):
        return f"{laterality}-{view}"
    return None


def split_slot(slot: str) -> tuple[str, str]:
    """``"R-CC"`` -> ``("R", "CC")``."""
    side, _, view = slot.partition("-")
    return side, view


def slots_of_side(side: str) -> list[str]:
    return [s for s in SLOTS if split_slot(s)[0] == side]


def missing_slots(filled: Iterable[str]) -> list[str]:
    """Slots not among ``filled``, in slot order."""
    have = set(filled)
    return [s for s in SLOTS if s not in have]


def is_complete(for_presentation_by_slot: Mapping[str, bool]) -> bool:
    """Whether a study with these chosen images (slot -> is it For Presentation) is complete."""
    return all(for_presentation_by_slot.get(slot, False) for slot in SLOTS)


__all__ = ["SCREENING_VIEWS", "SIDES", "SLOTS", "is_complete", "missing_slots", "slot_name",
           "slots_of_side", "split_slot"]
