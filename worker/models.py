"""Per-view ONNX models: load a registry entry, verify it, run it with ONNX Runtime.

A registry entry (``onnx_models/<name>/``) holds one ONNX file per screening view and a
``manifest.json`` (:mod:`mammo_density.manifest`). :meth:`ModelSet.load` refuses an entry
whose files do not match the manifest's sha256, or whose preprocessing version is not
the one this worker implements, with a message saying what to do. One
``InferenceSession`` per view, created once per process; CUDA execution provider when
onnxruntime-gpu finds a GPU, else CPU.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammo_density.manifest import (
    MANIFEST_NAME,
    ModelManifest,
    manifest_digest,
    read_manifest,
    sha256_file,
)
from mammo_density.result import ModelRef
from mammo_density.worker.preprocess import PREPROCESSING_VERSION

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install a model registry entry (a folder with manifest.json and one ONNX file per "
    "view) and point --model-dir / MAMMO_DENSITY_MODEL_DIR at it, or train one: "
    "`mammo-density synth DIR && mammo-density train ... && mammo-density export ...`"
)


class ModelError(RuntimeError):
    """A model registry entry cannot be used (the message says why and what to do)."""


class ModelNotInstalled(ModelError):
    """No model where one was looked for."""


def default_model_dir() -> Path:
    """The bundled demo model: the registry entry shipped in ``mammo_density.onnx_models``.

    When the package names one (``DEFAULT_MODEL`` in ``mammo_density/onnx_models``) that
    folder is used; otherwise the single BI-RADS entry found there.

    Raises
    ------
    ModelNotInstalled
        No (or no unambiguous) bundled model.
    """
    import mammo_density.onnx_models as registry

    root = Path(str(importlib.resources.files(registry)))
    named = getattr(registry, "DEFAULT_MODEL", None)
    if named:
        folder = root / str(named)
        if (folder / MANIFEST_NAME).is_file():
            return folder
        raise ModelNotInstalled(f"bundled model {named!r} is missing from {root}; "
                                + INSTALL_HINT)
    entries = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}"))
    birads = []
    for entry in entries:
        try:
            if read_manifest(entry).task == "birads4":
                birads.append(entry)
        except Exception:  # a broken entry is reported when it is loaded explicitly
            continue
    if len(birads) == 1:
        return birads[0]
    if not birads:
        raise ModelNotInstalled(f"no model is installed (no registry entry in {root}); "
                                + INSTALL_HINT)
    raise ModelNotInstalled(f"several bundled models in {root} "
                            f"({', '.join(p.name for p in birads)}); choose one with "
                            "--model-dir / MAMMO_DENSITY_MODEL_DIR")


def resolve_model_dir(model_dir: Path | str | None) -> Path:
    """``model_dir`` when given, else the bundled demo model."""
    return Path(model_dir) if model_dir else default_model_dir()


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: as given (those available), else CUDA then CPU."""
    have = available_providers()
    if providers:
        chosen = [p for p in providers if p in have]
        missing = [p for p in providers if p not in have]
        if missing:
            log.warning("execution providers not available here: %s", ", ".join(missing))
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen
    if "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_preprocessing_version(manifest: ModelManifest) -> None:
    """Raise :class:`ModelError` unless the model was trained with this preprocessing."""
    if manifest.preprocessing_version != PREPROCESSING_VERSION:
        raise ModelError(
            f"model {manifest.name} {manifest.version} was trained with preprocessing "
            f"version {manifest.preprocessing_version!r}, this worker implements "
            f"{PREPROCESSING_VERSION!r}: retrain/export the model with this version, "
            "or install the mammo-density release that matches the model")


def _session_options(threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads > 0:
        opts.intra_op_num_threads = threads
    # Do not busy-wait between runs: decoding threads share the same cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def verify_entry(folder: Path | str) -> ModelManifest:
    """Check a registry entry without creating sessions: manifest valid, preprocessing
    version this worker's, every view file present with the manifest's sha256.

    Raises :class:`ModelNotInstalled` / :class:`ModelError` (see :meth:`ModelSet.load`).
    """
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file():
        raise ModelNotInstalled(f"no model at {folder} (no {MANIFEST_NAME}); " + INSTALL_HINT)
    try:
        manifest = read_manifest(folder)
    except Exception as err:
        raise ModelError(f"invalid model manifest {folder / MANIFEST_NAME}: {err}") from None
    check_preprocessing_version(manifest)
    if not manifest.views:
        raise ModelError(f"model {manifest.name} names no views")
    for slot, filename in manifest.views.items():
        path = folder / filename
        if not path.is_file():
            raise ModelError(f"model {manifest.name}: file {filename} for {slot} is missing")
        expected = manifest.files_sha256.get(filename)
        if not expected:
            raise ModelError(f"model {manifest.name}: manifest has no sha256 for {filename}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"model {manifest.name}: sha256 mismatch for {filename} (manifest "
                f"{expected[:12]}..., file {actual[:12]}...): the file is corrupt or was "
                "changed after export; reinstall the model")
    return manifest


@dataclass
class ModelSet:
    """The verified ONNX sessions of one registry entry (one per view).

    Create with :meth:`load`. ``predict`` is safe to call from several threads.
    """

    folder: Path
    manifest: ModelManifest
    digest: str
    sessions: dict[str, object]
    providers: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path | str, *, threads: int = 0,
             providers: Sequence[str] | None = None) -> ModelSet:
        """Read, verify and open a registry entry.

        Parameters
        ----------
        folder
            The entry's folder (``manifest.json`` + ONNX files).
        threads
            ONNX Runtime intra-op threads per session (0 = ONNX Runtime's default).
        providers
            Execution providers to try in order; default CUDA when present, else CPU.

        Raises
        ------
        ModelNotInstalled
            The folder or its manifest does not exist.
        ModelError
            Invalid manifest, a file missing or not matching its sha256, a preprocessing
            version other than :data:`PREPROCESSING_VERSION`, or ONNX Runtime refusing a file.
        """
        import onnxruntime as ort

        folder = Path(folder)
        manifest = verify_entry(folder)
        chosen = choose_providers(providers)
        opts = _session_options(threads)
        sessions: dict[str, object] = {}
        for slot, filename in manifest.views.items():
            try:
                sessions[slot] = ort.InferenceSession(str(folder / filename), sess_options=opts,
                                                      providers=chosen)
            except Exception as err:
                raise ModelError(f"model {manifest.name}: ONNX Runtime cannot load "
                                 f"{filename}: {err}") from None
        used = list(next(iter(sessions.values())).get_providers())  # type: ignore[attr-defined]
        log.info("loaded model %s %s (%s, %d views, input %d px) on %s", manifest.name,
                 manifest.version, manifest.task, len(sessions), manifest.input_size,
                 ",".join(used))
        return cls(folder=folder, manifest=manifest, digest=manifest_digest(folder),
                   sessions=sessions, providers=used)

    @property
    def input_size(self) -> int:
        return self.manifest.input_size

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """``[0, 1]`` preprocessed images ``(N, S, S)`` -> the model's input ``(N, 1, S, S)``."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3:
            x = x[:, None]
        size = self.manifest.input_size
        if x.ndim != 4 or x.shape[1:] != (1, size, size):
            raise ValueError(f"batch must be (N, {size}, {size}), got {tuple(np.shape(batch))}")
        norm = self.manifest.normalisation
        if norm.mean != 0.0 or norm.std != 1.0:
            x = (x - np.float32(norm.mean)) / np.float32(norm.std)
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, slot: str, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` of ``slot``'s network for a batch of
        preprocessed images (``(N, S, S)`` or ``(N, 1, S, S)`` float32 in [0, 1])."""
        session = self.sessions.get(slot)
        if session is None:
            raise KeyError(f"model {self.manifest.name} has no network for view {slot}")
        x = self.normalise(batch)
        # InferenceSession.run is thread-safe: no lock.
        out = session.run([self.manifest.output_name],  # type: ignore[attr-defined]
                          {self.manifest.input_name: x})[0]
        return np.asarray(out, dtype=np.float64)

    def ref(self) -> ModelRef:
        """The result's ``model`` block."""
        m = self.manifest
        return ModelRef(name=m.name, version=m.version, sha256=self.digest, task=m.task,
                        not_for_clinical_use=m.not_for_clinical_use,
                        training_data=m.training_data)


__all__ = [
    "INSTALL_HINT", "ModelError", "ModelNotInstalled", "ModelSet", "available_providers",
    "check_preprocessing_version", "choose_providers", "default_model_dir", "resolve_model_dir",
    "verify_entry",
]
