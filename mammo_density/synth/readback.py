"""Read synthetic images back as display values (for the preview and the baselines).

Stored values -> display sense (0 = black background, 1 = densest): MONOCHROME1 is
inverted, values are divided by the BitsStored maximum. No VOI is applied here; callers
choose whether to window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread


def display_image(path: str | Path, apply_window: bool = False) -> np.ndarray:
    """The image of ``path`` as float32 in [0, 1], background 0, dense tissue bright."""
    ds = dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    maxv = float((1 << int(ds.BitsStored)) - 1)
    if apply_window and "WindowCenter" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        lo = center - width / 2.0
        out = np.clip((arr - lo) / max(width, 1.0), 0.0, 1.0)
        background = arr == (maxv if ds.PhotometricInterpretation == "MONOCHROME1" else 0)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            out = 1.0 - out
        out[background] = 0.0
        return out
    out = arr / maxv
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return out
