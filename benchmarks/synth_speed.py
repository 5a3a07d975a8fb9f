"""Time ``mammo-density synth``: studies per second at a size, vendor and transfer syntax.

    .venv/bin/python -m benchmarks.synth_speed [--studies 100] [--size small]
        [--vendor hologic] [--transfer-syntax explicit] [--jobs 1]

Prints wall-clock seconds, this process tree's CPU seconds (less disturbed by other load
on the machine) and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from mammo_density.synth import generate


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", default="small")
    ap.add_argument("--vendor", default="hologic")
    ap.add_argument("--transfer-syntax", default="explicit")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="synth-speed-") as tmp:
        cpu0, t0 = _cpu(), time.monotonic()
        recs = generate(tmp, studies=args.studies, seed=args.seed, size=args.size,
                        vendor=args.vendor, transfer_syntax=args.transfer_syntax,
                        jobs=args.jobs)
        wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    images = sum(len(r.images) for r in recs)
    print(f"{args.studies} studies ({images} images), {args.size}, {args.vendor}, "
          f"{args.transfer_syntax}, jobs {args.jobs}: {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"{wall / max(args.studies, 1) * 1000:.0f} ms/study; "
          f"1-min load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
