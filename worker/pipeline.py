"""One study in, one density result out: four stages that read as a sentence.

Stages (plain methods; the Celery tasks and the embedded runner call the same ones)::

    prepare(job)                 read + decode + preprocess every slotted image (CPU)
      -> infer(prepared)         per-view ONNX networks (GPU when present)
      -> decide(job, ...)        the method's rules -> StudyResult, + dose from headers
      -> report(job, result)     screening rules; SR -> outbox; hooks; state
    run(job) = the four in a row (embedded mode, ``classify``, the one-task Celery path)

The pipeline is composed, not self-wiring: where images come from
(:class:`~mammo_density.spool_layout.ImageSource`) and where results go (state marks,
SR outbox, hooks: the interfaces in :mod:`mammo_density.worker.sinks`) are handed in by
the composition roots in ``mammo_density/commands`` (``serve``, ``worker``,
``classify``). Nothing here imports the listener (``plugin/``).

``Prepared`` carries only model-ready arrays and a little metadata, so it can cross from
a CPU host to a GPU host (:meth:`Prepared.to_payload`: 16-bit fixed point, zstd, base64).

Failure policy: an image that cannot be found in the image source, read or decoded is a
poison input. It is left out (the study becomes partial, with a warning naming the slot
and why); a study with no usable image is not assessable and is marked failed with the
reasons. ``run`` never raises for a bad study. A model that cannot be loaded is not the
study's fault: :class:`~mammo_density.worker.models.ModelError` propagates (after the
study is marked failed) so that the operator sees it.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mammo_density.config import Settings
from mammo_density.job import StudyJob
from mammo_density.logsetup import uid_hash
from mammo_density.manifest import MANIFEST_NAME, ModelManifest, manifest_digest, read_manifest
from mammo_density.result import ModelRef, SRRef, StudyResult, ViewResult
from mammo_density.spool_layout import ImageSource, NotInSpool, SpoolImages
from mammo_density.study import gate, sop
from mammo_density.study.reasons import Reason
from mammo_density.study.slots import SLOTS
from mammo_density.study.unused import describe, unused_image
from mammo_density.study.views import view_info
from mammo_density.worker import prepcache
from mammo_density.worker.combine import combine
from mammo_density.worker.decode import DecodeError
from mammo_density.worker.models import (
    INSTALL_HINT,
    ModelError,
    ModelNotInstalled,
    ModelSet,
    OrtTuning,
    check_preprocessing_version,
    resolve_model_dir,
)
from mammo_density.worker.preprocess import preprocess_dataset
from mammo_density.worker.quality import exam_confidence, view_quality
from mammo_density.worker.sinks import ResultHooks, SROutbox, StudyStates

log = logging.getLogger(__name__)



def default_decode_workers() -> int:
    """Images decoded in parallel per study (the codecs release the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Prepared:
    """Model-ready inputs of one study (output of :meth:`Pipeline.prepare`).

    ``inputs[size][slot]`` is the float32 ``(size, size)`` image; ``failed[slot]`` the
    reason a slotted image could not be used; ``timings_ms`` summed per stage over images
    plus the stage's wall time (``prepare``).
    """

    study_instance_uid: str
    inputs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    sop_uids: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    headers: dict[str, Dataset] = field(default_factory=dict, repr=False)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: small uint8 copies of the model inputs, for the summary image (:data:`THUMBNAIL`)
    thumbnails: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def slots(self) -> list[str]:
        return [s for s in SLOTS if s in self.sop_uids]

    def to_payload(self) -> dict[str, Any]:
        """JSON-ready form (headers are not included).

        Arrays travel as 16-bit fixed point (``round(x * 65535)``, max error 7.6e-6),
        zstd-compressed (level 1: the padding compresses well; as small as zlib level 1
        for a tenth of its time, benchmarks/README.md), base64; the thumbnails as zstd,
        base64. float16 was measured too: its 5e-4 steps moved test-model probabilities by
        up to 0.025.
        """
        arrays = {
            str(size): {slot: encode_array(arr) for slot, arr in per_slot.items()}
            for size, per_slot in self.inputs.items()}
        thumbnails = {slot: _pack(t.tobytes()) for slot, t in self.thumbnails.items()}
        return {"study_instance_uid": self.study_instance_uid, "arrays": arrays,
                "thumbnails": thumbnails,
                "encoding": ARRAY_ENCODING, "sop_uids": self.sop_uids,
                "failed": self.failed, "warnings": self.warnings,
                "timings_ms": self.timings_ms, "quality": self.quality}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Prepared:
        encoding = payload.get("encoding", ARRAY_ENCODING)
        if encoding not in _DECOMPRESS:
            raise ValueError(f"unknown array encoding {encoding!r}")
        inputs: dict[int, dict[str, np.ndarray]] = {}
        for size_text, per_slot in payload.get("arrays", {}).items():
            size = int(size_text)
            inputs[size] = {slot: decode_array(text, size, encoding)
                            for slot, text in per_slot.items()}
        thumbnails = {}
        for slot, text in (payload.get("thumbnails") or {}).items():
            raw = np.frombuffer(_unpack(text, encoding), dtype=np.uint8)
            if raw.size == THUMBNAIL * THUMBNAIL:
                thumbnails[slot] = raw.reshape(THUMBNAIL, THUMBNAIL)
        return cls(study_instance_uid=payload["study_instance_uid"], inputs=inputs,
                   thumbnails=thumbnails,
                   sop_uids=dict(payload.get("sop_uids", {})),
                   failed=dict(payload.get("failed", {})),
                   warnings=list(payload.get("warnings", [])),
                   timings_ms=dict(payload.get("timings_ms", {})),
                   quality=dict(payload.get("quality", {})))


ARRAY_ENCODING = "u16-fixed-zstd-b64"
#: Payload encodings read: the current one and the one before it (zlib level 1), so a
#: message queued before an upgrade is still understood.
_DECOMPRESS = {"u16-fixed-zstd-b64": lambda data: imagecodecs.zstd_decode(data),
               "u16-fixed-zlib-b64": zlib.decompress}
#: Side of the thumbnails kept for the summary image (uint8; travel with the payload).
THUMBNAIL = 192


def thumbnail(arr: np.ndarray) -> np.ndarray:
    """A model input as a ``THUMBNAIL`` x ``THUMBNAIL`` uint8 picture (area average)."""
    import cv2

    grey = (np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)


def _pack(data: bytes) -> str:
    return base64.b64encode(imagecodecs.zstd_encode(data, level=1)).decode("ascii")


def _unpack(text: str, encoding: str = ARRAY_ENCODING) -> bytes:
    return _DECOMPRESS[encoding](base64.b64decode(text))


def encode_array(arr: np.ndarray) -> str:
    """[0, 1] float image -> text (16-bit fixed point, zstd level 1, base64)."""
    q = np.round(np.clip(arr, 0.0, 1.0) * 65535.0).astype("<u2")
    return _pack(q.tobytes())


def decode_array(text: str, size: int, encoding: str = ARRAY_ENCODING) -> np.ndarray:
    raw = _unpack(text, encoding)
    q = np.frombuffer(raw, dtype="<u2")
    if q.size != size * size:
        raise ValueError(f"array payload holds {q.size} values, expected {size}x{size}")
    return (q.reshape(size, size).astype(np.float32) / np.float32(65535.0))


@dataclass
class Inferred:
    """Per-view probabilities (output of :meth:`Pipeline.infer`)."""

    probabilities: dict[str, list[float]] = field(default_factory=dict)
    p_dense: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "p_dense": self.p_dense,
                "timings_ms": self.timings_ms}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Inferred:
        return cls(probabilities={k: list(v) for k, v in payload["probabilities"].items()},
                   p_dense=dict(payload.get("p_dense", {})),
                   timings_ms=dict(payload.get("timings_ms", {})))


def read_headers(images: ImageSource, study_uid: str,
                 sop_uids: Sequence[str]) -> list[Dataset]:
    """Headers (no pixel data) of the instances of ``sop_uids`` that ``images`` has and
    that can be read; the others are skipped with a warning (hashed UIDs only)."""
    out = []
    for sop_uid in sop_uids:
        try:
            out.append(pydicom.dcmread(images.locate(study_uid, sop_uid),
                                       stop_before_pixels=True))
        except Exception as err:
            log.warning("instance %s skipped for dose/SR: %s", uid_hash(sop_uid),
                        err if isinstance(err, NotInSpool) else type(err).__name__)
    return out


def _view_probabilities(models: ModelSet, slots: Sequence[str],
                        inputs: dict[int, dict[str, np.ndarray]],
                        started: dict[str, Future]) -> dict[str, np.ndarray]:
    """``models``' class probabilities for ``slots``, in :meth:`ModelSet.predict_views`'
    order: the futures already ``started`` for some views (:class:`EarlyInference`), the
    other views run now."""
    done = {slot: started[slot].result() for slot in slots if slot in started}
    ran = models.predict_views({slot: inputs[models.input_size][slot] for slot in slots
                                if slot not in done})
    out: dict[str, np.ndarray] = {}
    for slot in models.view_order(slots):
        probs = done[slot] if slot in done else ran.get(slot)
        if probs is not None:
            out[slot] = probs
    return out


class EarlyInference:
    """The networks of the views whose images are ready, started while the study's other
    images are still being prepared (:meth:`Pipeline.run`): only for a view that
    :meth:`~mammo_density.worker.models.ModelSet.predict_views` would run on its own
    (``runs_alone``), so the probabilities are the same as running them after."""

    def __init__(self, models: ModelSet, dense: ModelSet | None = None) -> None:
        self.models = models
        self.dense_models = dense
        self.birads: dict[str, Future] = {}
        self.dense: dict[str, Future] = {}

    def ready(self, slot: str, arrays: dict[int, np.ndarray]) -> None:
        models, dense = self.models, self.dense_models
        if models.runs_alone(slot) and models.input_size in arrays:
            self.birads[slot] = models.submit(slot, arrays[models.input_size])
        if dense is not None and slot in models.sessions and dense.runs_alone(slot) \
                and dense.input_size in arrays:
            self.dense[slot] = dense.submit(slot, arrays[dense.input_size])


class Pipeline:
    """prepare -> infer -> decide -> report, for one study at a time (thread-safe).

    Parameters
    ----------
    settings
        The node's settings (model dirs, ONNX Runtime threads/providers, SR options).
    images
        Where the job's images are found; default: the spool of ``settings`` and nothing
        outside it.
    states, outbox, hooks
        The sinks (:mod:`mammo_density.worker.sinks`); ``None``: not written.
    models, dense_models
        Already loaded model sets (tests, benchmarks); by default loaded lazily, once.
    decode_workers
        Images decoded in parallel within one study.
    reduced_decode
        Decode JPEG 2000 at the working resolution (default); False: the naive path
        (full decode, then area average), for benchmarks.
    """

    def __init__(self, settings: Settings, *, images: ImageSource | None = None,
                 states: StudyStates | None = None, outbox: SROutbox | None = None,
                 hooks: ResultHooks | None = None, models: ModelSet | None = None,
                 dense_models: ModelSet | None = None,
                 decode_workers: int | None = None, reduced_decode: bool = True) -> None:
        self.settings = settings
        self.images: ImageSource = images if images is not None else \
            SpoolImages(settings.spool_dir)
        self.states = states
        self.outbox = outbox
        self.hooks = hooks
        self.reduced_decode = reduced_decode
        self._models = models
        self._dense_models = dense_models
        self._dense_checked = dense_models is not None
        self._lock = threading.Lock()
        self.decode_workers = decode_workers or default_decode_workers()
        self._manifests: list[tuple[ModelManifest, str]] | None = None

    # --- models -----------------------------------------------------------------------
    @property
    def models(self) -> ModelSet:
        """The BI-RADS model set (loaded on first use, once per process)."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    self._models = ModelSet.load(
                        resolve_model_dir(self.settings.model_dir),
                        providers=self.settings.ort_providers or None,
                        tuning=OrtTuning.from_settings(self.settings),
                        variant=self.settings.model_variant)
                    if self._models.task != "birads4":
                        raise ModelError(f"model {self._models.manifest.name} is a "
                                         f"{self._models.task} model; model_dir needs a "
                                         "birads4 model (dense2 goes in dense_model_dir)")
        return self._models

    @property
    def dense_models(self) -> ModelSet | None:
        """The optional dense2 model set (``settings.dense_model_dir``)."""
        if not self._dense_checked:
            with self._lock:
                if not self._dense_checked:
                    if self.settings.dense_model_dir:
                        ms = ModelSet.load(self.settings.dense_model_dir,
                                           providers=self.settings.ort_providers or None,
                                           tuning=OrtTuning.from_settings(self.settings),
                                           variant=self.settings.model_variant)
                        if ms.task != "dense2":
                            raise ModelError(f"dense_model_dir holds a {ms.task} model, "
                                             "not a dense2 one")
                        self._dense_models = ms
                    self._dense_checked = True
        return self._dense_models

    def _manifest_info(self) -> list[tuple[ModelManifest, str]]:
        """(manifest, digest) of the birads4 set and, when configured, the dense2 set,
        read without creating ONNX sessions (CPU-only hosts need no sessions)."""
        if self._manifests is None:
            with self._lock:
                if self._manifests is None:
                    folders = [resolve_model_dir(self.settings.model_dir)]
                    if self.settings.dense_model_dir:
                        folders.append(Path(self.settings.dense_model_dir))
                    infos = []
                    for folder in folders:
                        if not (folder / MANIFEST_NAME).is_file():
                            raise ModelNotInstalled(f"no model at {folder} (no "
                                                    f"{MANIFEST_NAME}); {INSTALL_HINT}")
                        try:
                            manifest = read_manifest(folder)
                        except Exception as err:
                            raise ModelError(f"invalid model manifest in {folder}: "
                                             f"{err}") from None
                        check_preprocessing_version(manifest)
                        infos.append((manifest, manifest_digest(folder)))
                    self._manifests = infos
        return self._manifests

    @property
    def manifest(self) -> ModelManifest:
        """The birads4 model's manifest (no ONNX session needed)."""
        if self._models is not None:
            return self._models.manifest
        return self._manifest_info()[0][0]

    def model_ref(self) -> ModelRef:
        """The result's ``model`` block (no ONNX session needed)."""
        if self._models is not None:
            return self._models.ref()
        manifest, digest = self._manifest_info()[0]
        variant = self.settings.model_variant
        version = manifest.version if variant == "fp32" else f"{manifest.version}+{variant}"
        return ModelRef(name=manifest.name, version=version, sha256=digest,
                        task=manifest.task,
                        not_for_clinical_use=manifest.not_for_clinical_use,
                        training_data=manifest.training_data)

    def dense_manifest(self) -> ModelManifest | None:
        if self._dense_models is not None:
            return self._dense_models.manifest
        if not self.settings.dense_model_dir:
            return None
        return self._manifest_info()[-1][0]

    def input_sizes(self) -> list[int]:
        """Model input sizes needed (from the manifests; no session is created)."""
        if self._models is not None:
            sets = [self._models] + ([self._dense_models] if self._dense_models else [])
            if self._dense_models is not None or not self.settings.dense_model_dir:
                return sorted({ms.input_size for ms in sets})
        return sorted({m.input_size for m, _ in self._manifest_info()})

    # --- stages -----------------------------------------------------------------------
    def _prepare_one(self, study_uid: str, slot: str, sop_uid: str, sizes: list[int],
                     threads: int, quality: dict[str, dict[str, Any]] | None = None,
                     ) -> tuple[str, dict[int, np.ndarray] | None, Dataset | None,
                                dict[str, float], list[str], str]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            path = self.images.locate(study_uid, sop_uid)
        except NotInSpool as err:
            return slot, None, None, timings, [], f"image not found: {err}"
        if self.settings.prepare_on_arrival:  # prepared as it arrived (worker/prepcache.py)
            hit = prepcache.lookup(path, sizes)
            if hit is not None:
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True)
                except Exception:
                    hit = None
            if hit is not None:
                timings["read"] = (time.perf_counter() - t0) * 1000.0
                timings["prepared_on_arrival"] = 1.0  # summed: images taken from the cache
                last = hit[sizes[-1]]
                if quality is not None and last.quality is not None:
                    quality[slot] = last.quality
                warnings = [f"{slot}: {w}" for e in hit.values() for w in e.warnings]
                return (slot, {s: e.array for s, e in hit.items()}, header, timings,
                        warnings, "")
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:
            return slot, None, None, timings, [], (f"not a readable DICOM file "
                                                    f"({type(err).__name__}: {err})")
        timings["read"] = (time.perf_counter() - t0) * 1000.0
        warnings: list[str] = []
        arrays: dict[int, np.ndarray] = {}
        try:
            for size in sizes:
                arr, info = preprocess_dataset(ds, size, threads=threads,
                                               reduced=self.reduced_decode)
                arrays[size] = arr
                if quality is not None:  # one key per slot: safe across threads
                    quality[slot] = view_quality(info).model_dump()
                for key, value in info.timings_ms.items():
                    timings[key] = timings.get(key, 0.0) + value
                warnings.extend(f"{slot}: {w}" for w in info.warnings)
        except DecodeError as err:
            return slot, None, _header_only(ds), timings, warnings, str(err)
        except Exception as err:  # a bug or an image our code cannot handle: poison too
            log.exception("study image %s: preprocessing failed", slot)
            return slot, None, _header_only(ds), timings, warnings, (
                f"preprocessing failed ({type(err).__name__}: {err})")
        return slot, arrays, _header_only(ds), timings, warnings, ""

    def prepare(self, job: StudyJob, *, sizes: Sequence[int] | None = None,
                on_ready: Callable[[str, dict[int, np.ndarray]], object] | None = None,
                ) -> Prepared:
        """Read, decode and preprocess the job's slotted images (threads, GIL released).

        ``on_ready(slot, arrays)`` is called (from the decoding threads) as soon as each
        usable image's model inputs are ready, while the others are still prepared."""
        t0 = time.perf_counter()
        sizes = list(sizes) if sizes else self.input_sizes()
        prepared = Prepared(study_instance_uid=job.study_instance_uid)
        images = [im for im in job.images if im.slot in SLOTS]
        workers = max(1, min(self.decode_workers, len(images)))
        codec_threads = max(1, self.decode_workers // max(1, len(images)))

        def one(im):
            outcome = self._prepare_one(job.study_instance_uid, im.slot, im.sop_instance_uid,
                                        sizes, codec_threads, prepared.quality)
            if on_ready is not None and outcome[1] and not outcome[5]:
                on_ready(outcome[0], outcome[1])
            return outcome

        if workers == 1:
            outcomes = [one(im) for im in images]
        else:
            with ThreadPoolExecutor(max_workers=workers,
                                    thread_name_prefix="md-decode") as pool:
                outcomes = list(pool.map(one, images))
        by_slot = {im.slot: im for im in images}
        for slot, arrays, header, timings, warnings, error in outcomes:
            for key, value in timings.items():
                prepared.timings_ms[key] = prepared.timings_ms.get(key, 0.0) + value
            prepared.warnings.extend(warnings)
            if header is not None:
                prepared.headers[slot] = header
            if error:
                prepared.quality.pop(slot, None)
                prepared.failed[slot] = error
                prepared.warnings.append(f"{slot}: image not used: {error}")
                log.warning("study %s: %s not used: %s", uid_hash(job.study_instance_uid),
                            slot, error)
                continue
            prepared.sop_uids[slot] = by_slot[slot].sop_instance_uid
            for size, arr in (arrays or {}).items():
                prepared.inputs.setdefault(size, {})[slot] = arr
            if arrays and self.settings.sr_summary_image:
                prepared.thumbnails[slot] = thumbnail(arrays[max(arrays)])
        prepared.timings_ms["prepare"] = (time.perf_counter() - t0) * 1000.0
        return prepared

    def infer(self, prepared: Prepared, *, early: EarlyInference | None = None) -> Inferred:
        """Run each view's network on its image (and the dense2 set's, when installed).

        ``early``: networks :meth:`run` started on views whose images were ready while
        the others were still being prepared; their results are taken, the other views
        are run now (the probabilities are the same either way)."""
        t0 = time.perf_counter()
        out = Inferred()
        models = self.models
        dense = self.dense_models
        for slot, probs in _view_probabilities(
                models, prepared.slots, prepared.inputs,
                early.birads if early is not None else {}).items():
            out.probabilities[slot] = [float(v) for v in probs]
        if dense is not None:
            dense_index = dense.classes.index("dense")
            for slot, probs in _view_probabilities(
                    dense, [slot for slot in prepared.slots if slot in out.probabilities],
                    prepared.inputs, early.dense if early is not None else {}).items():
                out.p_dense[slot] = float(probs[dense_index])
        if early is not None and early.birads:
            out.timings_ms["inferred_early"] = float(len(early.birads))
        out.timings_ms["inference"] = (time.perf_counter() - t0) * 1000.0
        return out

    def decide(self, job: StudyJob, prepared: Prepared, inferred: Inferred, *,
               started: float | None = None) -> StudyResult:
        """The method's rules and the result object (+ dose from the headers).

        ``prepared.headers`` are the slotted images' headers; when ``prepare`` ran in
        another process they are read again from the image source."""
        t0 = time.perf_counter()
        if not prepared.headers:
            for im in job.images:
                hdrs = read_headers(self.images, job.study_instance_uid,
                                    [im.sop_instance_uid])
                if hdrs:
                    prepared.headers[im.slot] = hdrs[0]
        manifest = self.manifest
        classes = list(manifest.classes)
        comb = combine(inferred.probabilities, dense_probs=inferred.p_dense or None,
                       classes=classes)
        warnings = list(prepared.warnings)
        if manifest.not_for_clinical_use:
            warnings.append(f"model {manifest.name} {manifest.version} is "
                            "NOT FOR CLINICAL USE")
        if job.partial and job.source == "files":  # classify: no stable timeout offline
            warnings.append("partial study: views missing "
                            f"({', '.join(job.missing_views) or 'unknown'})")
        elif job.partial:
            warnings.append("study assessed after the stable timeout with views missing")
        unused = list(job.unused_images) + [
            unused_image(im.sop_instance_uid, Reason.UNREADABLE, prepared.failed[im.slot],
                         slot=im.slot) for im in job.images if im.slot in prepared.failed]
        implants = any(gate.implant_present(h) for h in prepared.headers.values())
        if implants:
            warnings.append("breast implants present (BreastImplantPresent YES): density "
                            "of implant-bearing breasts is less reliable")
        if not comb.assessable:
            reasons = "; ".join(f"{s}: {r}" for s, r in prepared.failed.items())
            gated = [u for u in unused if u.reason is not Reason.UNREADABLE]
            if gated:
                reasons += ("; " if reasons else "") + "images not used: " + describe(gated)
            warnings.append("not assessable: " + (reasons or "no screening image (R/L CC/MLO)"))
        views = []
        header_by_slot = dict(prepared.headers)
        for slot in SLOTS:
            if slot not in inferred.probabilities:
                continue
            side, view = slot.split("-")
            hdr = header_by_slot.get(slot)
            if hdr is not None:
                info = view_info(hdr)
                if info.slot and info.slot != slot:
                    warnings.append(f"{slot}: header says {info.slot}")
            views.append(ViewResult(
                laterality=side, view=view, sop_instance_uid=prepared.sop_uids.get(slot, ""),
                probabilities=dict(zip(classes, inferred.probabilities[slot],
                                       strict=True)),
                p_dense=inferred.p_dense.get(slot),
                quality=prepared.quality.get(slot)))
        model_ref = self.model_ref()
        dm = self.dense_manifest()
        if dm is not None and inferred.p_dense:
            model_ref.dense_model = f"{dm.name} {dm.version}"
        study_date = next((str(h.StudyDate) for h in header_by_slot.values()
                           if str(h.get("StudyDate", "") or "")), None)
        result = StudyResult(
            study_instance_uid=job.study_instance_uid, revision=job.revision,
            study_date=study_date, exam=comb.exam, breasts=comb.breasts, views=views,
            partial=comb.partial, assessable=comb.assessable,
            missing_views=comb.missing_views, unused_images=unused, implant_present=implants,
            model=model_ref, warnings=warnings)
        result.low_confidence, result.low_confidence_reasons = exam_confidence(result)
        timings = {k: round(v, 2) for k, v in prepared.timings_ms.items()}
        timings.update({k: round(v, 2) for k, v in inferred.timings_ms.items()})
        timings["decide"] = round((time.perf_counter() - t0) * 1000.0, 2)
        # dose from the image headers and dose reports received with the study
        try:
            from mammo_density.worker.dose import extract_dose

            image_headers = list(prepared.headers.values())
            others = read_headers(self.images, job.study_instance_uid, job.other_sop_uids)
            rdsr = [ds for ds in others if str(ds.get("SOPClassUID", "")) in sop.RDSR_CLASSES]
            extra_images = [ds for ds in others if str(ds.get("Modality", "")) == "MG"
                            and str(ds.get("SOPClassUID", "")) not in sop.RDSR_CLASSES]
            result.dose = extract_dose(image_headers + extra_images, rdsr,
                                       study_uid=job.study_instance_uid)
        except Exception as err:
            log.exception("study %s: dose extraction failed", uid_hash(job.study_instance_uid))
            result.warnings.append(f"dose figures unavailable: {type(err).__name__}: {err}")
        if started is not None:
            timings["total"] = round((time.perf_counter() - started) * 1000.0, 2)
        else:  # stages ran in different tasks/hosts: the sum of their wall times
            timings["total"] = round(sum(timings.get(k, 0.0) for k in
                                         ("prepare", "inference", "decide")), 2)
        result.timings_ms = timings
        return result

    # --- reporting ----------------------------------------------------------------------
    def record_state(self, what: str, job: StudyJob, *args: Any) -> None:
        """Call ``states.<what>(study_uid, revision, *args)`` when a state sink is set; a
        failure is logged, never raised (the result and the SR must not be lost to a
        state hiccup)."""
        if self.states is None:
            return
        try:
            getattr(self.states, what)(job.study_instance_uid, job.revision, *args)
        except Exception:
            log.exception("study %s: state %s failed", uid_hash(job.study_instance_uid), what)

    def claim(self, job: StudyJob, *, stale_after: float, owner: str = "") -> bool:
        """Claim the job's revision in the state sink (False: another copy of the task is
        on it, or the revision is finished or superseded). ``owner`` names the
        submission: its own earlier claim is taken again at once. True without a state
        sink."""
        if self.states is None:
            return True
        return bool(self.states.mark_processing(job.study_instance_uid, job.revision,
                                                stale_after=stale_after, owner=owner))

    def claim_held_for(self, job: StudyJob, *, stale_after: float) -> float | None:
        """After :meth:`claim` was refused: seconds until the other claim on the job's
        revision is ``stale_after`` seconds old (0 when it already is); None when no
        claim holds this revision (it is finished, failed or superseded)."""
        if self.states is None:
            return None
        row = self.states.study(job.study_instance_uid)
        if not row or row.get("status") != "processing" \
                or int(row.get("revision") or 0) != job.revision:
            return None
        age = time.time() - float(row.get("updated_at") or 0.0)
        return max(0.0, stale_after - age)

    def already_done(self, job: StudyJob) -> bool:
        """True when the state sink shows this revision (or a newer one) done."""
        if self.states is None:
            return False
        row = self.states.study(job.study_instance_uid)
        return bool(row and row.get("status") == "done"
                    and int(row.get("result_revision") or 0) >= job.revision)

    def sr_sources(self, job: StudyJob, result: StudyResult,
                   sources: Sequence[Dataset]) -> list[Dataset]:
        """The SR's evidence: the images used; with none used, the images looked at and
        not used, so that the radiologist sees why the study was not assessable."""
        if sources or not result.unused_images:
            return list(sources)
        return [ds for ds in read_headers(self.images, job.study_instance_uid,
                                          job.other_sop_uids)
                if str(ds.get("Modality", "")).upper() == "MG"
                and not sop.is_structured_report(str(ds.get("SOPClassUID", "")))]

    def report(self, job: StudyJob, result: StudyResult, *,
               sources: Sequence[Dataset] | None = None,
               thumbnails: dict[str, np.ndarray] | None = None) -> StudyResult:
        """Screening rules, SR and summary image into the outbox, hooks, state: each step
        on its own.

        ``sources`` are the assessed images' headers (the SR's evidence); read from the
        image source when not given. ``thumbnails`` (per slot) are drawn on the summary
        image."""
        t0 = time.perf_counter()
        uid = uid_hash(job.study_instance_uid)
        used = [v.sop_instance_uid for v in result.views]
        if sources is None:
            sources = read_headers(self.images, job.study_instance_uid,
                                   used or [im.sop_instance_uid for im in job.images])
        sources = self.sr_sources(job, result, sources)
        sources = [ds for ds in sources
                   if str(ds.get("SOPInstanceUID", "")) in set(used)] or list(sources)
        if self.outbox is not None:  # one copy of each header for the SR and summary image
            from mammo_density.worker.sr import source_header

            try:
                sources = [source_header(ds) for ds in sources]
            except Exception:  # each builder copies again, and fails on its own
                log.warning("study %s: source headers not copied", uid)
        try:
            from mammo_density.worker.screening_rules import evaluate

            result.recommendations = evaluate(result, self.settings)
        except Exception as err:
            log.exception("study %s: screening rules failed", uid)
            result.warnings.append(f"screening rules failed: {type(err).__name__}")
        if self.outbox is not None:
            try:
                from mammo_density.worker.sr import build_density_sr

                sr = build_density_sr(result, sources, self.manifest,
                                      comprehensive_3d=self.settings.comprehensive_3d_sr)
                path = self.outbox.enqueue(sr, study_uid=job.study_instance_uid,
                                           calling_aet=job.calling_aet,
                                           peer_host=job.peer_host)
                result.sr = SRRef(sop_instance_uid=str(sr.SOPInstanceUID),
                                  series_instance_uid=str(sr.SeriesInstanceUID),
                                  path=str(path))
            except Exception as err:
                log.exception("study %s: SR not written", uid)
                result.warnings.append(f"SR not written: {type(err).__name__}: {err}")
        # after the SR: the outbox may send it meanwhile
        if self.outbox is not None and self.settings.sr_summary_image:
            try:
                from mammo_density.worker.summary import build_summary_image

                t_sc = time.perf_counter()
                sc = build_summary_image(result, sources, self.manifest,
                                         view_images=thumbnails)
                self.outbox.enqueue(sc, study_uid=job.study_instance_uid,
                                    calling_aet=job.calling_aet, peer_host=job.peer_host)
                result.timings_ms["summary_image"] = round(
                    (time.perf_counter() - t_sc) * 1000.0, 2)
            except Exception as err:
                log.exception("study %s: summary image not written", uid)
                result.warnings.append(
                    f"summary image not written: {type(err).__name__}: {err}")
        if self.hooks is not None:
            try:
                self.hooks.dispatch(result)
            except Exception as err:
                log.exception("study %s: hooks not dispatched", uid)
                result.warnings.append(f"hooks not dispatched: {type(err).__name__}")
        result.timings_ms["report"] = round((time.perf_counter() - t0) * 1000.0, 2)
        if result.assessable:
            self.record_state("mark_done", job, result.model_dump_json())
        else:
            self.record_state("mark_failed", job, "; ".join(
                w for w in result.warnings if w.startswith("not assessable")) or
                "not assessable")
        return result

    def run(self, job: StudyJob) -> StudyResult:
        """prepare -> infer -> decide -> report; never raises for a bad study.

        Bad images never raise (they are left out, with warnings); a model that cannot be
        loaded raises :class:`~mammo_density.worker.models.ModelError` after the study is
        marked failed.
        """
        uid = uid_hash(job.study_instance_uid)
        started = time.perf_counter()
        self.record_state("mark_processing", job)
        try:
            # each view's network starts as soon as its image is ready, beside the
            # preparation of the others (the last image of a study prepared on arrival)
            early = EarlyInference(self.models, self.dense_models)
            prepared = self.prepare(job, on_ready=early.ready)
            inferred = self.infer(prepared, early=early)
            result = self.decide(job, prepared, inferred, started=started)
        except ModelError as err:
            self.record_state("mark_failed", job, f"model unavailable: {err}")
            raise
        except Exception as err:  # the study broke something unexpected: record, go on
            log.exception("study %s: assessment failed", uid)
            reason = f"assessment failed: {type(err).__name__}: {err}"
            self.record_state("mark_failed", job, reason)
            return StudyResult(study_instance_uid=job.study_instance_uid,
                               revision=job.revision, assessable=False, partial=job.partial,
                               missing_views=list(job.missing_views),
                               unused_images=list(job.unused_images), warnings=[reason])
        sources = [prepared.headers[s] for s in SLOTS if s in prepared.headers]
        result = self.report(job, result, sources=sources, thumbnails=prepared.thumbnails)
        log.info("study %s revision %d: %s in %.0f ms", uid, job.revision,
                 result.exam.category if result.exam else "not assessable",
                 result.timings_ms.get("total", 0.0))
        return result


def _header_only(ds: Dataset) -> Dataset:
    """Drop the pixel data (kept headers feed the SR and dose)."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


__all__ = ["EarlyInference", "Inferred", "Pipeline", "Prepared", "default_decode_workers",
           "read_headers"]
