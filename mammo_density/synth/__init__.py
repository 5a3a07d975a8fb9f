"""Synthetic screening mammography studies with known BI-RADS density (``mammo-density synth``).

Public API::

    from mammo_density.synth import generate, StudyRecord
    records = generate("/tmp/synth", studies=20, seed=1, size="small", vendor="mixed",
                       transfer_syntax="jpeg2000", extras=("retake", "xccl"))

Modules: :mod:`.profiles` (vendor detectors), :mod:`.phantom` (pixels),
:mod:`.dose` (exposure and dose), :mod:`.dicom` (headers, encoding), :mod:`.generate`
(studies, manifest), :mod:`.send` (C-STORE), :mod:`.preview`, :mod:`.baseline`.
Importing this package does not import torch.
"""

from mammo_density.synth.generate import (
    CLASSES,
    DEFAULT_CLASS_MIX,
    EXTRAS,
    MANIFEST_COLUMNS,
    ImageRecord,
    StudyRecord,
    generate,
    generate_study,
    write_manifest,
)

__all__ = ["CLASSES", "DEFAULT_CLASS_MIX", "EXTRAS", "MANIFEST_COLUMNS", "ImageRecord",
           "StudyRecord", "generate", "generate_study", "write_manifest"]
