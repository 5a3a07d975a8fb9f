"""How good is mean brightness alone on synthetic studies? (it must be a poor cue)

    .venv/bin/python -m benchmarks.synth_baseline [--studies 400] [--seed 11] [--vendor hologic]
        [--size small] [--jobs 2] [--json]

Writes ``--studies`` synthetic studies (default class mix) to a temporary folder, then for
each exam takes the mean display value of the breast over its four views and fits a 1-D
Gaussian classifier (shared variance, priors) on a random half of the exams, scoring the
other half against the true exam class: raw (stored / BitsStored max, MONOCHROME1
inverted) and windowed (the file's VOI applied). A crude texture measure (share of pixels
above the breast's 5th-95th percentile midpoint) is scored the same way for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from mammo_density.synth import generate
from mammo_density.synth.baseline import mean_intensity_baseline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=400)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--vendor", default="hologic")
    ap.add_argument("--size", default="small")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synth-baseline-") as tmp:
        records = generate(tmp, studies=args.studies, seed=args.seed, vendor=args.vendor,
                           size=args.size, jobs=args.jobs)
        results = mean_intensity_baseline(records, seed=args.seed)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"studies": args.studies, "seed": args.seed, "vendor": args.vendor,
                          "results": [vars(r) for r in results], "seconds": elapsed,
                          "loadavg_1min": os.getloadavg()[0]}, indent=2))
        return
    print(f"{args.studies} studies, seed {args.seed}, {args.vendor}, {args.size}:")
    for res in results:
        print("  " + res.line())
    print(f"{elapsed:.0f} s in all, 1-min load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
