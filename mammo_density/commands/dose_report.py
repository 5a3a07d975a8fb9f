"""``mammo-density dose-report``: the dose registry as CSV, and a plot of AGD against
compressed thickness coloured by density class.

The plot has one point per breast (its accumulated AGD against its mean compressed
thickness, coloured by that breast's BI-RADS class) and the dose reference curve of the
screening rules (``dose_reference_mgy`` scaled per exposure, times two exposures per
breast), so the screening programme sees where dense breasts sit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mammo_density.config import Settings

log = logging.getLogger(__name__)

CLASS_COLOURS = {"A": "#4daf4a", "B": "#377eb8", "C": "#ff7f00", "D": "#e41a1c"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dose-report", help="export the dose registry (CSV) and plot AGD "
                       "against compressed thickness by density class (PNG)")
    p.add_argument("--out", metavar="CSV", help="write the CSV here (default: standard output)")
    p.add_argument("--png", metavar="PNG", help="also draw the plot into this PNG file")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                   help="data directory holding the registry")
    p.set_defaults(func=run)


def breast_points(rows: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(thickness mm, AGD mGy, class) per breast with all three known."""
    points = []
    for row in rows:
        for side in ("r", "l"):
            t, agd, cat = (row.get(f"thickness_{side}_mm"), row.get(f"agd_{side}_mgy"),
                           row.get(f"category_{side}"))
            if t is not None and agd is not None and cat:
                points.append((float(t), float(agd), str(cat)))
    return points


def draw_png(rows: list[dict[str, Any]], path: Path, reference_mgy: float) -> int:
    """Draw the scatter plot; returns the number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mammo_density.worker.screening_rules import reference_agd_mgy

    points = breast_points(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for cat, colour in CLASS_COLOURS.items():
            sel = [(t, a) for t, a, c in points if c == cat]
            if sel:
                xs, ys = zip(*sel, strict=True)
                ax.scatter(xs, ys, s=28, c=colour, label=f"BI-RADS {cat} (n={len(sel)})",
                           edgecolors="black", linewidths=0.4, alpha=0.85)
        lo = min([t for t, _, _ in points] + [20.0])
        hi = max([t for t, _, _ in points] + [90.0])
        grid = np.linspace(lo, hi, 100)
        ax.plot(grid, [2 * reference_agd_mgy(t, reference_mgy) for t in grid], "k--", lw=1,
                label=f"reference, 2 exposures ({reference_mgy:g} mGy/exposure at 45 mm)")
        ax.set_xlabel("mean compressed breast thickness (mm)")
        ax.set_ylabel("accumulated AGD per breast (mGy)")
        ax.set_title(f"Dose against thickness by density class ({len(rows)} exams)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return len(points)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mammo_density.worker.registry import Registry

    try:
        registry = Registry(settings)
        rows = registry.rows()
    except Exception as err:
        print(f"mammo-density dose-report: cannot read the registry: {err}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            registry.write_csv(fh)
        print(f"{len(rows)} exam(s) written to {out}", file=sys.stderr)
    else:
        registry.write_csv(sys.stdout)
    if args.png:
        n = draw_png(rows, Path(args.png), settings.dose_reference_mgy)
        print(f"plot of {n} breast(s) written to {args.png}", file=sys.stderr)
    return 0
