"""A picture of the classes: one synthetic study per BI-RADS class, four views each.

The studies are drawn with a one-class mix (same seed, vendor and size as asked), written
to a temporary folder, read back from the DICOM files (MONOCHROME1 inverted, the file's
window applied) and hung in the standard order R-CC, L-CC, R-MLO, L-MLO.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mammo_density.study.slots import SLOTS, split_slot
from mammo_density.synth.generate import CLASSES, generate
from mammo_density.synth.readback import display_image

ORDER = tuple(split_slot(s) for s in SLOTS)


def write_preview(png: str | Path, seed: int = 0, vendor: str = "hologic",
                  size: str | int = "small") -> Path:
    """Draw one study per class (rows A-D, columns R-CC L-CC R-MLO L-MLO) into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    fig, axes = plt.subplots(4, 4, figsize=(10, 12.5))
    with tempfile.TemporaryDirectory(prefix="synth-preview-") as tmp:
        for row, cls in enumerate(CLASSES):
            mix = [1.0 if c == cls else 0.0 for c in CLASSES]
            (rec,) = generate(Path(tmp) / cls, studies=1, seed=seed, size=size, vendor=vendor,
                              class_mix=mix, label_noise=0.0, breast_differ=0.0,
                              manifest=False)
            by_slot = {(im.laterality, im.view): im for im in rec.standard_images()}
            for col, slot in enumerate(ORDER):
                ax = axes[row][col]
                ax.set_xticks([])
                ax.set_yticks([])
                im = by_slot.get(slot)
                if im is None:
                    continue
                ax.imshow(display_image(im.path, apply_window=True), cmap="gray",
                          vmin=0.0, vmax=1.0)
                ax.set_title(f"{cls}  {slot[0]}-{slot[1]}  "
                             f"gland {100 * im.glandular_fraction:.0f}%", fontsize=9)
    fig.suptitle(f"mammo-density synth: one study per BI-RADS class ({vendor}, seed {seed})")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
