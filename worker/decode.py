"""Pixel decoding of mammograms, the fastest path per transfer syntax
(docs/decoding.md).

- JPEG 2000 (.90/.91, JPIP-free HTJ2K .201/.202/.203): OpenJPEG through imagecodecs at
  full resolution, or through glymur's bindings at a reduced resolution level (OpenJPEG's
  *reduce*: the wavelet's low-pass band, 2**level smaller per side) when the model input
  is small, the codestream read from memory (:class:`_MemoryStream`).
  HTJ2K reduced through imagecodecs ``htj2k_decode(skipres=level)``.
- JPEG-LS (.80/.81): imagecodecs (CharLS); JPEG Lossless (.57/.70): imagecodecs ljpeg;
  RLE (.5): pydicom with the pylibjpeg-rle plugin; uncompressed and anything else:
  pydicom's ``pixel_array``.
- The codec is chosen from the frame's first bytes as well as the transfer syntax (a file
  labelled JPEG Lossless was seen holding a JPEG 2000 image), and the decoded shape is
  checked against Rows x Columns: a mismatch is a :class:`DecodeError`, never silent
  garbage. Raw J2K/HTJ2K codestreams must end with the EOC marker (OpenJPH returns an
  array for a truncated stream).

The decoders release the GIL, so one process decodes several images in threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
HTJ2K_SYNTAXES = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"}
JPEGLS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
JPEG_LOSSLESS_SYNTAXES = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
JPEG_BASELINE_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}

_J2K_SOC = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_JPEG_SOI = b"\xff\xd8"


class DecodeError(ValueError):
    """The pixel data cannot be decoded into the image the header describes."""


@dataclass(frozen=True)
class Decoded:
    """A decoded frame and how it was obtained.

    ``level`` is the resolution level actually decoded: the array is about ``2**level``
    smaller per side than Rows x Columns (``ceil(Rows / 2**level)`` rows).
    """

    pixels: np.ndarray
    level: int
    codec: str


def reduced_shape(rows: int, cols: int, level: int) -> tuple[int, int]:
    """Shape of an image of ``rows`` x ``cols`` at resolution ``level`` (OpenJPEG's rule)."""
    f = 2 ** level
    return math.ceil(rows / f), math.ceil(cols / f)


def _first_frame(ds: Dataset) -> memoryview:
    """The first frame of encapsulated pixel data. A single frame held in one fragment
    (what modalities write) is a view into the pixel data, not a copy: copying costs
    ~1 ms a megabyte, about as much as the rest of reading the file."""
    from io import BytesIO

    from pydicom.encaps import get_frame, parse_basic_offsets, parse_fragments

    data = ds.PixelData
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frames == 1:
            stream = BytesIO(data)  # shares ``data``
            parse_basic_offsets(stream)  # past the Basic Offset Table item
            count, offsets = parse_fragments(stream)
            if count == 1:
                start = offsets[0] + 8
                length = int.from_bytes(data[offsets[0] + 4:start], "little")
                if start + length > len(data):
                    raise ValueError("the fragment runs past the end of the pixel data")
                return memoryview(data)[start:start + length]
        return memoryview(get_frame(data, 0, number_of_frames=frames))
    except Exception as err:  # malformed encapsulation
        raise DecodeError(f"cannot read the encapsulated frame: {err}") from None


def _starts(frame: bytes | memoryview, prefix: bytes) -> bool:
    return frame[:len(prefix)] == prefix


def _j2k_codestream_start(frame: bytes | memoryview) -> int:
    if _starts(frame, _J2K_SOC):  # a raw codestream
        return 0
    pos = bytes(frame[:1 << 16]).find(_J2K_SOC)  # JP2: the codestream box follows others
    if pos < 0:
        pos = bytes(frame).find(_J2K_SOC)
    if pos < 0:
        raise DecodeError("JPEG 2000 frame has no codestream (SOC/SIZ markers missing)")
    return pos


def j2k_decomposition_levels(frame: bytes | memoryview) -> int:
    """Number of wavelet decomposition levels in a J2K/JP2/HTJ2K frame's COD segment."""
    pos = _j2k_codestream_start(frame) + 2
    for _ in range(64):
        marker = frame[pos:pos + 2]
        if len(marker) < 2 or marker[0] != 0xFF:
            break
        length = int.from_bytes(frame[pos + 2:pos + 4], "big")
        if marker[1] == 0x52:  # COD
            return int(frame[pos + 9])
        if marker[1] == 0x90:  # SOT: first tile, main header over
            break
        pos += 2 + length
    raise DecodeError("JPEG 2000 codestream has no COD segment")


def j2k_size(frame: bytes | memoryview) -> tuple[int, int]:
    """Full-resolution ``(rows, columns)`` of a J2K/JP2/HTJ2K frame, from its SIZ segment."""
    siz = _j2k_codestream_start(frame) + 2
    if frame[siz:siz + 2] != b"\xff\x51" or len(frame) < siz + 22:
        raise DecodeError("JPEG 2000 codestream has no SIZ segment")
    xsiz, ysiz, xosiz, yosiz = (int.from_bytes(frame[siz + 6 + 4 * i:siz + 10 + 4 * i], "big")
                                for i in range(4))
    return ysiz - yosiz, xsiz - xosiz


def _check_size(rows: int, cols: int, got: tuple[int, int], what: str) -> None:
    if got != (rows, cols):
        raise DecodeError(f"{what} is {got[0]}x{got[1]} pixels, header says {rows}x{cols} "
                          "(Rows x Columns)")


def _has_cap_marker(frame: bytes | memoryview) -> bool:
    """True for an HTJ2K (Part 15) codestream: the marker after SIZ is CAP (FF50)."""
    siz = _j2k_codestream_start(frame) + 2
    length = int.from_bytes(frame[siz + 2:siz + 4], "big")
    return frame[siz + 2 + length:siz + 4 + length] == b"\xff\x50"


def _check_eoc(frame: bytes | memoryview) -> None:
    """Raw codestreams end with EOC (FFD9); DICOM pads fragments to even length."""
    if _starts(frame, _JP2_SIGNATURE):
        return
    tail = bytes(frame[-64:]).rstrip(b"\x00")
    if len(tail) < 2 and len(frame) > 64:  # padding reaches further: look at it all
        tail = bytes(frame).rstrip(b"\x00")
    if not tail.endswith(b"\xff\xd9"):
        raise DecodeError("JPEG 2000 codestream is truncated (no EOC marker)")


class _MemoryStream:
    """An OpenJPEG input stream over bytes already in memory (no temporary file).

    OpenJPEG reads through three callbacks (read, skip, seek) declared with ctypes over
    the library glymur loaded; one stream per decode, so threads never share one. The
    callbacks only copy bytes: the decoding itself runs with the GIL released."""

    _READ = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_void_p)
    _SKIP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
    _SEEK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)
    _END = ctypes.c_size_t(-1).value  # OpenJPEG's "no more bytes"
    _declared = False

    def __init__(self, opj2, data: bytes) -> None:
        self._source = np.frombuffer(data, dtype=np.uint8)  # keeps ``data`` alive
        self._base, self._size, self._pos = self._source.ctypes.data, len(data), 0
        self._callbacks = (self._READ(self._read), self._SKIP(self._skip),
                           self._SEEK(self._seek))  # referenced until the stream goes
        lib = opj2.OPENJP2
        if not _MemoryStream._declared:
            lib.opj_stream_create.argtypes = [ctypes.c_size_t, ctypes.c_int32]
            lib.opj_stream_create.restype = opj2.STREAM_TYPE_P
            for name, kind in (("read", self._READ), ("skip", self._SKIP),
                               ("seek", self._SEEK)):
                fn = getattr(lib, f"opj_stream_set_{name}_function")
                fn.argtypes, fn.restype = [opj2.STREAM_TYPE_P, kind], None
            lib.opj_stream_set_user_data_length.argtypes = [opj2.STREAM_TYPE_P,
                                                            ctypes.c_uint64]
            lib.opj_stream_set_user_data_length.restype = None
            _MemoryStream._declared = True
        self.stream = lib.opj_stream_create(min(self._size, 1 << 20) or 1, 1)
        if not self.stream:
            raise MemoryError("OpenJPEG could not create a stream")
        read, skip, seek = self._callbacks
        lib.opj_stream_set_read_function(self.stream, read)
        lib.opj_stream_set_skip_function(self.stream, skip)
        lib.opj_stream_set_seek_function(self.stream, seek)
        lib.opj_stream_set_user_data_length(self.stream, self._size)

    def _read(self, buffer: int, n: int, _user: object) -> int:
        n = min(n, self._size - self._pos)
        if n <= 0:
            return self._END
        ctypes.memmove(buffer, self._base + self._pos, n)
        self._pos += n
        return n

    def _skip(self, n: int, _user: object) -> int:
        new = min(max(self._pos + n, 0), self._size)
        moved, self._pos = new - self._pos, new
        return moved

    def _seek(self, offset: int, _user: object) -> int:
        if not 0 <= offset <= self._size:
            return 0
        self._pos = offset
        return 1


def _openjpeg_reduced(frame: bytes | memoryview, level: int, threads: int) -> np.ndarray:
    """Decode a J2K/JP2 frame at resolution ``level`` with OpenJPEG (glymur's bindings),
    reading the codestream from memory."""
    from glymur.lib import openjp2 as opj2

    with contextlib.ExitStack() as stack:
        source = _MemoryStream(opj2, frame)
        stack.callback(opj2.stream_destroy, source.stream)
        codec = opj2.create_decompress(
            opj2.CODEC_JP2 if _starts(frame, _JP2_SIGNATURE) else opj2.CODEC_J2K)
        stack.callback(opj2.destroy_codec, codec)
        opj2.set_error_handler(codec, opj2._ERROR_CALLBACK)
        opj2.set_warning_handler(codec, opj2._WARNING_CALLBACK)
        opj2.set_info_handler(codec, None)
        params = opj2.set_default_decoder_parameters()
        params.cp_reduce = level
        opj2.setup_decoder(codec, params)
        if threads > 1:  # a library built without threads decodes on one
            with contextlib.suppress(opj2.OpenJPEGLibraryError):
                opj2.codec_set_threads(codec, threads)
        image = opj2.read_header(source.stream, codec)
        stack.callback(opj2.image_destroy, image)
        opj2.decode(codec, source.stream, image)
        opj2.end_decompress(codec, source.stream)
        if image.contents.numcomps != 1:
            raise DecodeError(f"JPEG 2000 image has {image.contents.numcomps} components, "
                              "expected 1")
        comp = image.contents.comps[0]
        if comp.prec > 16:
            raise DecodeError(f"JPEG 2000 precision of {comp.prec} bits is not supported")
        dtype = ((np.int8 if comp.sgnd else np.uint8) if comp.prec <= 8
                 else (np.int16 if comp.sgnd else np.uint16))
        # copied out of OpenJPEG's int32 buffer before the image is destroyed
        return np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w)).astype(dtype)


_glymur_warned = False


def _warn_glymur(err: Exception) -> None:
    """Reduced decoding failed: full decoding follows (slower, same model input)."""
    global _glymur_warned
    if not _glymur_warned:
        _glymur_warned = True
        log.warning("reduced-resolution JPEG 2000 decode unavailable (%s: %s); decoding at "
                    "full resolution (install libopenjp2-7 for glymur)",
                    type(err).__name__, err)


def decode_frame(ds: Dataset, *, level: int = 0, threads: int = 2) -> Decoded:
    """Decode the first frame of ``ds``, at resolution ``level`` where the codec allows.

    Parameters
    ----------
    ds
        A dataset with pixel data.
    level
        Wanted resolution level (0 = full). JPEG 2000 decodes at
        ``min(level, decomposition levels)``; other codecs decode at full resolution
        (``Decoded.level`` says which level was obtained).
    threads
        Threads for the codecs that use them.

    Raises
    ------
    DecodeError
        No pixel data, an undecodable frame, or a decoded shape other than the header's.
    """
    import imagecodecs

    if "PixelData" not in ds:
        raise DecodeError("dataset has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DecodeError("Rows/Columns missing or zero")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DecodeError("not a greyscale image (SamplesPerPixel != 1)")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    encapsulated = ts not in ("", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                              "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
    got_level, codec = 0, "pydicom"
    try:
        if encapsulated and ts != RLE_SYNTAX:
            frame = _first_frame(ds)
            is_j2k = _starts(frame, _JP2_SIGNATURE) or _starts(frame, _J2K_SOC)
            if is_j2k:  # full size from the codestream, before any (reduced) decode
                _check_size(rows, cols, j2k_size(frame), "the JPEG 2000 image")
            if is_j2k and (ts in HTJ2K_SYNTAXES or _has_cap_marker(frame)):
                # HTJ2K (a CAP marker follows SIZ in the main header)
                _check_eoc(frame)
                got_level = min(level, j2k_decomposition_levels(frame))
                arr = imagecodecs.htj2k_decode(frame, skipres=got_level or None)
                codec = "htj2k"
            elif is_j2k:
                _check_eoc(frame)
                got_level = min(level, j2k_decomposition_levels(frame))
                arr = None
                if got_level > 0:
                    try:
                        arr = _openjpeg_reduced(frame, got_level, threads)
                        codec = "j2k-reduced"
                    except Exception as err:  # no libopenjp2 for glymur, or a bad frame
                        _warn_glymur(err)
                        got_level = 0
                if arr is None:
                    arr = imagecodecs.jpeg2k_decode(frame, numthreads=threads)
                    codec = "j2k"
            elif _starts(frame, _JPEG_SOI) and ts in JPEGLS_SYNTAXES:
                arr, codec = imagecodecs.jpegls_decode(frame), "jpegls"
            elif _starts(frame, _JPEG_SOI) and ts in JPEG_LOSSLESS_SYNTAXES:
                arr, codec = imagecodecs.ljpeg_decode(frame), "ljpeg"
            else:
                arr, codec = _pydicom_decode(ds), "pydicom"
        elif ts == RLE_SYNTAX:
            arr, codec = _pydicom_decode(ds, plugin="pylibjpeg"), "rle"
        else:
            arr = _pydicom_decode(ds)
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(f"cannot decode pixel data ({ts or 'no transfer syntax'}): "
                          f"{type(err).__name__}: {err}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:  # multi-frame through pydicom: first frame
        arr = arr[0]
    expected = reduced_shape(rows, cols, got_level)
    if arr.shape != expected:
        if got_level:  # name full-resolution sizes, not the reduced ones
            raise DecodeError(
                f"decoded image is about {arr.shape[0] << got_level}x"
                f"{arr.shape[1] << got_level} pixels, header says {rows}x{cols} "
                "(Rows x Columns)")
        _check_size(rows, cols, (int(arr.shape[0]), int(arr.shape[1])), "decoded image")
    return Decoded(arr, got_level, codec)


def _pydicom_decode(ds: Dataset, plugin: str = "") -> np.ndarray:
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRLittleEndian

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    decoder = get_decoder(ts or ExplicitVRLittleEndian)
    if plugin and plugin not in decoder.available_plugins:
        plugin = ""
    arr, _ = decoder.as_array(ds, index=0, raw=True, decoding_plugin=plugin)
    return arr


__all__ = [
    "DecodeError", "Decoded", "decode_frame", "j2k_decomposition_levels", "j2k_size",
    "reduced_shape",
]
