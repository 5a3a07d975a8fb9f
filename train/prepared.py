"""Prepared model inputs: a training set that travels without its DICOM files.

A hospital's images stay on the machine that reads the PACS; the GPU box that trains on
them needs only what the network sees. ``prepare`` runs the one shared preprocessing
(:func:`mammo_density.worker.preprocess.load_model_input`) over a labelled manifest at one
input size and writes the inputs as 8- or 16-bit grey PNGs with a new manifest beside
them. The folder is small (about 100 kB an image at 650 px, 8 bits) and holds no DICOM
header: file names are sequence numbers; the manifest keeps the exam, patient and
laterality keys the folds and the exam rule need (pseudonymise them first where they are
identifiers).

A ``prepared.json`` in the inputs folder states the input size, preprocessing version and
bit depth. :class:`mammo_density.train.dataset.ArrayCache` reads such a file directly and
refuses one made at another size or with another preprocessing, so a model can never be
trained on inputs that inference would not produce.

    python -m mammo_density.train.prepared MANIFEST.csv --size 650 --out DIR [--bits 8]
    mammo-density train --manifest DIR/manifest.csv --input-size 650 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from mammo_density.train.data import ImageRecord, read_manifest_csv, write_manifest_csv

#: Written beside the inputs; its presence makes a folder's PNGs prepared inputs.
DESCRIPTOR = "prepared.json"
INPUTS_DIR = "inputs"


class PreparedInputError(ValueError):
    """A prepared input that does not fit the run (size, preprocessing, bit depth)."""


def descriptor_of(path: Path) -> Path | None:
    """The ``prepared.json`` that makes ``path`` a prepared input, if any."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        return None
    d = path.parent / DESCRIPTOR
    return d if d.is_file() else None


def _read_descriptor(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PreparedInputError(f"{path}: unreadable ({err})") from err
    for key in ("size", "preprocessing", "bits"):
        if key not in meta:
            raise PreparedInputError(f"{path}: no {key!r}")
    return meta


def load_prepared(path: Path, size: int, version: str) -> np.ndarray:
    """The float32 ``(size, size)`` [0, 1] model input stored at ``path``.

    Raises
    ------
    PreparedInputError
        When the file was prepared at another size, with another preprocessing version or
        is not the stated grey PNG.
    """
    desc = descriptor_of(path)
    if desc is None:
        raise PreparedInputError(f"{path}: not a prepared input (no {DESCRIPTOR} beside it)")
    meta = _read_descriptor(desc)
    if int(meta["size"]) != size:
        raise PreparedInputError(
            f"{path}: prepared at {meta['size']} px, this run needs {size} px; prepare the "
            "inputs again from the DICOM manifest")
    if str(meta["preprocessing"]) != version:
        raise PreparedInputError(
            f"{path}: prepared with preprocessing {meta['preprocessing']}, this code runs "
            f"{version}; prepare the inputs again from the DICOM manifest")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    bits = int(meta["bits"])
    dtype = np.uint8 if bits == 8 else np.uint16
    if img is None or img.dtype != dtype or img.shape != (size, size):
        raise PreparedInputError(f"{path}: not a {size} x {size} {bits}-bit grey PNG")
    return img.astype(np.float32) / float(np.iinfo(dtype).max)


def _encode(arr: np.ndarray, bits: int) -> np.ndarray:
    top = 255 if bits == 8 else 65535
    q = np.rint(np.clip(arr, 0.0, 1.0) * top)
    return q.astype(np.uint8 if bits == 8 else np.uint16)


def prepare(records: Sequence[ImageRecord], size: int, out: Path, *, bits: int = 16,
            progress: bool = True) -> list[ImageRecord]:
    """Write the model inputs of ``records`` and ``out/manifest.csv``; returns the records.

    The inputs go to ``out/inputs/NNNNN.png`` in manifest order; each one is written to a
    temporary name and renamed, and the descriptor is written last, so an interrupted run
    leaves no folder that reads as complete.
    """
    from tqdm import tqdm

    from mammo_density.train.dataset import ArrayCache

    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    out = Path(out)
    inputs = out / INPUTS_DIR
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / DESCRIPTOR).unlink(missing_ok=True)
    cache = ArrayCache(None, size, memory=False)
    written: list[ImageRecord] = []
    for i, r in enumerate(tqdm(records, desc=f"prepare {size}px", disable=not progress)):
        target = inputs / f"{i:05d}.png"
        tmp = inputs / f".{i:05d}.tmp.png"
        if not cv2.imwrite(str(tmp), _encode(cache.load(r.path), bits)):
            raise OSError(f"could not write {tmp}")
        tmp.replace(target)
        written.append(replace(r, path=target))
    meta = {"size": size, "preprocessing": cache.version, "bits": bits,
            "images": len(written)}
    (inputs / DESCRIPTOR).write_text(json.dumps(meta, indent=1) + "\n")
    write_manifest_csv(out / "manifest.csv", written)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mammo_density.train.prepared",
                                description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path, help="labelled manifest of DICOM images")
    p.add_argument("--size", type=int, required=True, help="model input size (px)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--bits", type=int, choices=(8, 16), default=16,
                   help="grey levels stored (8 bits halve the folder; default 16)")
    args = p.parse_args(argv)
    records = read_manifest_csv(args.manifest)
    written = prepare(records, args.size, args.out, bits=args.bits)
    print(f"{len(written)} inputs at {args.size} px ({args.bits} bits) -> "
          f"{args.out / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
