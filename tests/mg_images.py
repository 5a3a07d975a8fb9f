"""Small hand-made mammograms for the inference tests (independent of mammo_density.synth).

A breast-like half ellipse against the chest wall, a textured interior, a bright burned-in
label in a background corner, written as a Digital Mammography For Presentation image in
any transfer syntax the listener accepts (frames encoded with imagecodecs / pydicom).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "j2k": "1.2.840.10008.1.2.4.90",
    "j2k-lossy": "1.2.840.10008.1.2.4.91",
    "jp2": "1.2.840.10008.1.2.4.90",  # JP2-wrapped frames, as real Hologic files carry
    "htj2k": "1.2.840.10008.1.2.4.201",
    "jpegls": "1.2.840.10008.1.2.4.80",
    "ljpeg": "1.2.840.10008.1.2.4.70",
    "ljpeg57": "1.2.840.10008.1.2.4.57",
    "rle": "1.2.840.10008.1.2.5",
    "deflate": "1.2.840.10008.1.2.1.99",
    "bigendian": "1.2.840.10008.1.2.2",
    "jpeg-extended": "1.2.840.10008.1.2.4.51",
    "jpegls-near": "1.2.840.10008.1.2.4.81",
    "htj2k-rpcl": "1.2.840.10008.1.2.4.202",
    "htj2k-any": "1.2.840.10008.1.2.4.203",
}
#: Lossy encodings (compared with a tolerance).
LOSSY = {"j2k-lossy", "jpeg-extended", "jpegls-near"}


def breast_image(rows: int = 512, cols: int = 416, *, seed: int = 0, density: float = 0.5,
                 bits: int = 12, label: bool = True) -> np.ndarray:
    """uint16 image, chest wall on the LEFT, values within ``bits`` bits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, a, b = rows * 0.5, cols * 0.75, rows * 0.42
    inside = ((xx / a) ** 2 + ((yy - cy) / b) ** 2) <= 1.0
    noise = rng.standard_normal((rows, cols)).astype(np.float32)
    k = max(3, (min(rows, cols) // 24) | 1)
    texture = cv2.GaussianBlur(noise, (k, k), 0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
    tissue = 0.35 + 0.45 * density * texture + 0.15 * (1.0 - xx / (a + 1))
    # soft skin line (a few pixels wide), as in real mammograms
    edge = max(3, (min(rows, cols) // 64) | 1)
    soft = cv2.GaussianBlur(inside.astype(np.float32), (edge, edge), 0)
    soft[:, : edge] = inside[:, : edge]  # the chest wall stays a hard image edge
    img = (tissue * soft).astype(np.float32)
    maxval = (1 << bits) - 1
    out = np.clip(img * maxval * 0.9, 0, maxval).astype(np.uint16)
    if label:  # burned-in label: bright block in the bottom-right background corner
        out[rows - rows // 10: rows - rows // 40, cols - cols // 5: cols - cols // 20] = maxval
    return out


def mg_dataset(pixels: np.ndarray, *, laterality: str = "L", view: str = "CC",
               orientation: tuple[str, str] | None = ("A", "R"), monochrome1: bool = False,
               bits_stored: int = 12, window: tuple[float, float] | None = None,
               study_uid: str | None = None, sop_uid: str | None = None,
               for_presentation: bool = True, voi_function: str | None = None) -> Dataset:
    """An uncompressed (Explicit VR LE) MG image dataset around ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_PRESENTATION
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = MG_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.PatientID = "TEST"
    ds.PatientName = "Test^Phantom"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    if orientation is not None:
        ds.PatientOrientation = list(orientation)
    ds.PresentationIntentType = "FOR PRESENTATION" if for_presentation else "FOR PROCESSING"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        if voi_function:
            ds.VOILUTFunction = voi_function
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def encode(ds: Dataset, syntax: str) -> Dataset:
    """Re-encode ``ds``'s pixel data in the transfer syntax named by ``syntax`` (SYNTAXES)."""
    ts = SYNTAXES.get(syntax, syntax)
    arr = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    bits = int(ds.BitsStored)
    if ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"):
        ds.file_meta.TransferSyntaxUID = UID(ts)
        return ds
    if ts == SYNTAXES["bigendian"]:
        ds.PixelData = arr.astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = UID(ts)
        return ds
    if ts == SYNTAXES["rle"]:
        ds.compress(ts, arr, encoding_plugin="pydicom")
        return ds
    if syntax == "jp2":
        frame = imagecodecs.jpeg2k_encode(arr, codecformat="jp2", reversible=True,
                                          bitspersample=bits)
    elif ts == SYNTAXES["j2k"]:
        frame = imagecodecs.jpeg2k_encode(arr, codecformat="j2k", reversible=True,
                                          bitspersample=bits)
    elif ts == SYNTAXES["j2k-lossy"]:
        frame = imagecodecs.jpeg2k_encode(arr, level=40, codecformat="j2k", reversible=False,
                                          bitspersample=bits)
    elif ts in (SYNTAXES["htj2k"], SYNTAXES["htj2k-rpcl"], SYNTAXES["htj2k-any"]):
        frame = imagecodecs.htj2k_encode(arr, reversible=True)
    elif ts == SYNTAXES["jpegls"]:
        frame = imagecodecs.jpegls_encode(arr)
    elif ts == SYNTAXES["jpegls-near"]:
        frame = imagecodecs.jpegls_encode(arr, level=2)  # NEAR = 2
    elif ts == SYNTAXES["jpeg-extended"]:
        frame = imagecodecs.jpeg8_encode(arr, level=95, bitspersample=bits)
    elif ts in (SYNTAXES["ljpeg"], SYNTAXES["ljpeg57"]):
        frame = imagecodecs.ljpeg_encode(arr, bitspersample=bits)
    else:
        raise ValueError(f"no encoder for {ts}")
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=ts == "1.2.840.10008.1.2",
               little_endian=ts != "1.2.840.10008.1.2.2", enforce_file_format=True)
    return path


def mirror_orientation(orientation: tuple[str, str]) -> tuple[str, str]:
    swap = {"A": "P", "P": "A"}
    return ("".join(swap.get(c, c) for c in orientation[0]), orientation[1])
