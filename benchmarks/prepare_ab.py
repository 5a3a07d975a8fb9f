"""CPU of reading and preprocessing one study: this tree's modules against another
revision's, in one process, interleaved.

    .venv/bin/python -m benchmarks.prepare_ab [--base main] [--rounds 20] [--size 650]
        [--json]

``worker/decode.py`` and ``worker/preprocess.py`` as they were at git revision ``BASE``
are loaded beside this tree's (``benchmarks.common.module_at``: what they import from the
package is this tree's), and on the full-field J2K study two things are timed, each side
in turn, the order alternating by round:

- ``read``: ``pydicom.dcmread`` of the four files, the first frame of each and the JPEG
  2000 header checks (frame size, decomposition levels, EOC);
- ``preprocess``: ``preprocess_dataset`` at ``--size`` with the decoded frames given
  ready (OpenJPEG's ~45 ms an image is the same code on both sides and would drown a
  difference of a few milliseconds).

Prints the medians per side (CPU ms a study) and the paired median difference, and
fails when the two sides' model inputs differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from benchmarks.common import full_field_study, module_at, study_files


def _read(decode: ModuleType, files: list[Path]) -> None:
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        frame = decode._first_frame(ds)
        decode._check_eoc(frame)
        decode.j2k_size(frame)
        decode.j2k_decomposition_levels(frame)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--size", type=int, default=650)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import cv2
    import pydicom

    from mammo_density.worker import decode as decode_now
    from mammo_density.worker import preprocess as preprocess_now

    cv2.setNumThreads(1)  # a pool process's share on 2 cores
    sides = {
        "this tree": (decode_now, preprocess_now),
        "before": (module_at(args.base, "worker/decode.py"),
                   module_at(args.base, "worker/preprocess.py")),
    }
    files = study_files(full_field_study())
    datasets = [pydicom.dcmread(f) for f in files]
    decoded: dict[tuple[int, int], object] = {}

    def ready(ds, level=0, threads=1):  # the decode, done once for both sides
        key = (id(ds), level)
        if key not in decoded:
            decoded[key] = decode_now.decode_frame(ds, level=level, threads=threads)
        return decoded[key]

    inputs = {}
    for name, (_, preprocess) in sides.items():
        preprocess.decode_frame = ready
        inputs[name] = [preprocess.preprocess_dataset(ds, args.size, threads=1)[0]
                        for ds in datasets]
    same = all(np.array_equal(a, b) for a, b in zip(*inputs.values(), strict=True))
    times: dict[str, dict[str, list[float]]] = {n: {"read": [], "preprocess": []}
                                                for n in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            decode, preprocess = sides[name]
            t = time.process_time()
            _read(decode, files)
            times[name]["read"].append((time.process_time() - t) * 1e3)
            t = time.process_time()
            for ds in datasets:
                preprocess.preprocess_dataset(ds, args.size, threads=1)
            times[name]["preprocess"].append((time.process_time() - t) * 1e3)
    report = {"base": args.base, "rounds": args.rounds, "size": args.size,
              "same_model_inputs": same, "cpu_ms_a_study": {}, "paired_difference_ms": {}}
    for stage in ("read", "preprocess"):
        now, old = times["this tree"][stage], times["before"][stage]
        report["cpu_ms_a_study"][stage] = {"this tree": round(statistics.median(now), 2),
                                           "before": round(statistics.median(old), 2)}
        report["paired_difference_ms"][stage] = round(
            statistics.median(a - b for a, b in zip(now, old, strict=True)), 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for stage, medians in report["cpu_ms_a_study"].items():
            print(f"{stage}: this tree {medians['this tree']} ms, before {medians['before']} "
                  f"ms a study; paired median difference "
                  f"{report['paired_difference_ms'][stage]} ms")
        print("model inputs identical" if same else "MODEL INPUTS DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
