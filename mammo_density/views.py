"""Laterality and view of a mammogram: moved to :mod:`mammo_density.study.views` (with the
slots of :mod:`mammo_density.study.slots` and the codes of
:mod:`mammo_density.study.codes`). This module keeps the old import path working; it
defines nothing of its own."""

from mammo_density.study.codes import MODIFIER_BY_CODE as MODIFIER_CODES
from mammo_density.study.codes import VIEW_BY_CODE as VIEW_CODES
from mammo_density.study.slots import SCREENING_VIEWS, SLOTS
from mammo_density.study.views import ViewInfo, laterality_of, view_info

__all__ = ["MODIFIER_CODES", "SCREENING_VIEWS", "SLOTS", "VIEW_CODES", "ViewInfo",
           "laterality_of", "view_info"]
