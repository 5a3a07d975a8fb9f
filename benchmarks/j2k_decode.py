"""Reduced-resolution JPEG 2000 decoding: the node's in-memory OpenJPEG stream against
glymur's file reader (a temporary file in /dev/shm, ``Jp2k(path)[::s, ::s]``: what the
node did before), on the full-field test study's four frames, interleaved.

    .venv/bin/python -m benchmarks.j2k_decode [--level 2] [--rounds 8] [--cores 1] [--json]

Both call the same libopenjp2 with one thread; CPU milliseconds an image (median of the
rounds, each round decoding the four frames once per way, in alternating order) and
whether the arrays are identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import full_field_study, pin_cores, study_files


def _glymur_file(frame: bytes, level: int) -> np.ndarray:
    import glymur

    with tempfile.NamedTemporaryFile(suffix=".j2k", dir="/dev/shm") as fh:
        fh.write(frame)
        fh.flush()
        step = 2 ** level
        return np.asarray(glymur.Jp2k(fh.name)[::step, ::step])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import glymur
    import pydicom

    from mammo_density.worker.decode import _first_frame, _openjpeg_reduced

    cores = pin_cores(args.cores)
    glymur.set_option("lib.num_threads", 1)
    frames = [_first_frame(pydicom.dcmread(f)) for f in study_files(full_field_study())]
    ways = {"glymur_file": lambda f: _glymur_file(f, args.level),
            "memory_stream": lambda f: _openjpeg_reduced(f, args.level, 1)}
    same = all(np.array_equal(ways["glymur_file"](f), ways["memory_stream"](f))
               for f in frames)
    per_image: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(args.rounds):
        for name in (list(ways) if i % 2 == 0 else list(ways)[::-1]):
            c0 = time.process_time()
            for frame in frames:
                ways[name](frame)
            per_image[name].append((time.process_time() - c0) / len(frames) * 1000.0)
    out = {"level": args.level, "rounds": args.rounds, "cores": cores,
           "frames": len(frames), "identical": same,
           **{f"{name}_cpu_ms_per_image": round(statistics.median(v), 1)
              for name, v in per_image.items()}}
    out["ratio_memory_over_file"] = round(out["memory_stream_cpu_ms_per_image"]
                                          / out["glymur_file_cpu_ms_per_image"], 3)
    print(json.dumps(out, indent=2) if args.json else
          " ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
