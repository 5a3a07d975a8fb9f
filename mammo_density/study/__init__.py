"""Every study rule of mammo-density, in one place.

=================  =====================================================================
module             the rule
=================  =====================================================================
``sop``            the SOP classes the product knows, what each is to a study, and the
                   one "For Presentation" rule
``codes``          CID 4014 views, CID 4015 view modifiers, CID 6000 density, CID 244
                   laterality: one table each
``slots``          the screening slots (R-CC, L-CC, R-MLO, L-MLO) and "complete"
``views``          laterality, view and modifiers read from a header
``gate``           the screening-image gate: which images may fill a slot, and why not
``reasons``        the coded reasons an image is not used, with their sentences
``selection``      which image fills each slot, and the retake order
``exam``           the exam combination rule (denser breast; P(dense))
``unused``         the record of an image not used, the same wherever it is decided
``identity``       who an instance belongs to; when two instances may be one exam (same
                   patient) and when a re-sent SOP Instance UID is the same instance
=================  =====================================================================

The listener, ``classify``, the pipeline, the SR, the dose code, preprocessing and the
training metrics import these; nothing here imports from the rest of the product.
"""

from mammo_density.study.reasons import Reason
from mammo_density.study.slots import SCREENING_VIEWS, SIDES, SLOTS

__all__ = ["SCREENING_VIEWS", "SIDES", "SLOTS", "Reason"]
