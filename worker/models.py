"""Per-view ONNX models: load a registry entry, verify it, run it with ONNX Runtime.

A registry entry (``onnx_models/<name>/``) holds one ONNX file per screening view and a
``manifest.json`` (:mod:`mammo_density.manifest`). :meth:`ModelSet.load` refuses an entry
whose files do not match the manifest's sha256, or whose preprocessing version is not
the one this worker implements, with a message saying what to do. One
``InferenceSession`` per distinct network file (views sharing a file share a session and
run as one batch), created once per process; CUDA execution provider when onnxruntime-gpu
finds a GPU, else CPU. Session options come from :class:`OrtTuning` (defaults measured on
the 2-core node: ``benchmarks/ort_tuning.py``, figures in benchmarks/README.md). A
manifest may list variants of the networks beside the fp32 files (``int8``: static
quantisation, ``mammo-density quantize``); ``variant=`` picks one.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")
VARIANTS = ("fp32", "int8")


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class OrtTuning:
    """How ONNX Runtime runs the networks (settings ``ort_*``).

    The defaults are the measured best on the 2-core node (benchmarks/README.md, "ONNX
    Runtime tuning"): full graph optimisation, two view networks at a time, each with
    half the cores this process may use (1 thread each on 2 cores: the least CPU per
    study and the lowest median of the options that do not oversubscribe the cores),
    sequential execution inside a network, no spinning (the decoders share the cores).

    Attributes
    ----------
    threads
        Intra-op threads per session; 0 = available cores // ``parallel_views``;
        -1 = ONNX Runtime's own default (its count of physical cores).
    inter_threads
        Inter-op threads (used by the ``parallel`` execution mode only).
    graph_optimization
        ``disable``, ``basic``, ``extended`` or ``all``.
    execution_mode
        ``sequential`` or ``parallel`` (independent graph branches at once).
    spinning
        Let idle intra-op threads busy-wait for work.
    parallel_views
        Networks run at the same time, in threads, for one study.
    batch_shared
        Views whose network is the same file run as one batch.
    """

    threads: int = 0
    inter_threads: int = 1
    graph_optimization: str = "all"
    execution_mode: str = "sequential"
    spinning: bool = False
    parallel_views: int = 2
    batch_shared: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(f"graph_optimization must be one of {GRAPH_OPTIMIZATION}")
        if self.execution_mode not in EXECUTION_MODES:
            raise ValueError(f"execution_mode must be one of {EXECUTION_MODES}")
        if self.threads < -1 or self.inter_threads < 1 or self.parallel_views < 1:
            raise ValueError("threads >= 0, inter_threads >= 1, parallel_views >= 1")

    @classmethod
    def from_settings(cls, settings: object) -> OrtTuning:
        """The node's ``ort_*`` settings (defaults for those a settings object lacks)."""
        base = cls()
        return cls(
            threads=int(getattr(settings, "ort_threads", base.threads)),
            inter_threads=int(getattr(settings, "ort_inter_threads", base.inter_threads)),
            graph_optimization=str(getattr(settings, "ort_graph_optimization",
                                           base.graph_optimization)),
            execution_mode=str(getattr(settings, "ort_execution_mode", base.execution_mode)),
            spinning=bool(getattr(settings, "ort_spinning", base.spinning)),
            parallel_views=int(getattr(settings, "ort_parallel_views", base.parallel_views)),
            batch_shared=bool(getattr(settings, "ort_batch_shared", base.batch_shared)))

    def intra_threads(self) -> int:
        if self.threads != 0:
            return self.threads
        return max(1, available_cores() // self.parallel_views)

    def session_options(self):
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[self.graph_optimization]
        opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL
                               if self.execution_mode == "parallel"
                               else ort.ExecutionMode.ORT_SEQUENTIAL)
        opts.inter_op_num_threads = self.inter_threads
        if self.threads >= 0:
            opts.intra_op_num_threads = self.intra_threads()
        # Busy-waiting between runs takes cores from the decoders that share them.
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      "1" if self.spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning",
                                      "1" if self.spinning else "0")
        opts.log_severity_level = 3
        return opts


def variant_views(manifest: ModelManifest, variant: str) -> dict[str, str]:
    """slot -> file of ``variant`` (``fp32`` = the manifest's ``views``)."""
    if variant == "fp32":
        return dict(manifest.views)
    views = manifest.variants.get(variant)
    if not views:
        have = ", ".join(["fp32", *manifest.variants]) or "fp32"
        raise ModelError(f"model {manifest.name} has no {variant} variant (it has: {have}); "
                         "create one with `mammo-density quantize`")
    return dict(views)


def check_variant_parity(manifest: ModelManifest, variant: str) -> None:
    """Refuse a variant whose recorded parity with fp32 failed; warn when none is recorded."""
    parity = manifest.metrics.get(f"{variant}_parity")
    if not isinstance(parity, dict) or "holds" not in parity:
        log.warning("model %s: the %s variant has no parity report in its manifest; "
                    "run `mammo-density quantize --parity MANIFEST` before clinical use",
                    manifest.name, variant)
        return
    if parity["holds"] is not True:
        raise ModelError(
            f"model {manifest.name}: the {variant} variant failed its parity check against "
            f"fp32 (exam agreement {parity.get('exam_agreement')}, accuracy change "
            f"{parity.get('exam_accuracy_change')}, kappa change "
            f"{parity.get('exam_kappa_change')}); use model_variant=fp32")


def verify_entry(folder: Path | str, variant: str = "fp32") -> ModelManifest:
    """Check a registry entry without creating sessions: manifest valid, preprocessing
    version this worker's, every view file of ``variant`` present with the manifest's
    sha256.

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
    for slot, filename in variant_views(manifest, variant).items():
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

    tuning: OrtTuning = field(default_factory=OrtTuning)
    variant: str = "fp32"
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

    @classmethod
    def load(cls, folder: Path | str, *, threads: int = 0,
             providers: Sequence[str] | None = None, tuning: OrtTuning | None = None,
             variant: str = "fp32", check_parity: bool = True) -> ModelSet:
        """Read, verify and open a registry entry.

        Parameters
        ----------
        folder
            The entry's folder (``manifest.json`` + ONNX files).
        threads
            ONNX Runtime intra-op threads per session (0 = auto); overrides ``tuning``'s.
        providers
            Execution providers to try in order; default CUDA when present, else CPU.
        tuning
            Session options and how views run (default :class:`OrtTuning`).
        variant
            ``fp32`` (the exported networks) or another variant the manifest lists
            (``int8``).
        check_parity
            Refuse a variant whose parity report in the manifest
            (``metrics.<variant>_parity.holds``) failed; warn when there is none.
            False only for the parity report itself.

        Raises
        ------
        ModelNotInstalled
            The folder or its manifest does not exist.
        ModelError
            Invalid manifest, a file missing or not matching its sha256, a preprocessing
            version other than :data:`PREPROCESSING_VERSION`, no such variant, or ONNX
            Runtime refusing a file.
        """
        import onnxruntime as ort

        folder = Path(folder)
        tuning = tuning or OrtTuning()
        if threads:
            tuning = OrtTuning(**{**tuning.__dict__, "threads": threads})
        manifest = verify_entry(folder, variant)
        if variant != "fp32" and check_parity:
            check_variant_parity(manifest, variant)
        chosen = choose_providers(providers)
        opts = tuning.session_options()
        sessions: dict[str, object] = {}
        by_file: dict[str, object] = {}
        for slot, filename in variant_views(manifest, variant).items():
            key = manifest.files_sha256[filename]
            if key not in by_file:  # views sharing one network share its session
                try:
                    by_file[key] = ort.InferenceSession(str(folder / filename),
                                                        sess_options=opts, providers=chosen)
                except Exception as err:
                    raise ModelError(f"model {manifest.name}: ONNX Runtime cannot load "
                                     f"{filename}: {err}") from None
            sessions[slot] = by_file[key]
        used = list(next(iter(sessions.values())).get_providers())  # type: ignore[attr-defined]
        log.info("loaded model %s %s%s (%s, %d views, %d networks, input %d px) on %s, "
                 "%d intra-op threads x %d views at once", manifest.name, manifest.version,
                 "" if variant == "fp32" else f" {variant}", manifest.task, len(sessions),
                 len(by_file), manifest.input_size, ",".join(used), tuning.intra_threads(),
                 tuning.parallel_views)
        return cls(folder=folder, manifest=manifest, digest=manifest_digest(folder),
                   sessions=sessions, providers=used, tuning=tuning, variant=variant)

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

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.tuning.parallel_views),
                                            thread_name_prefix="md-infer")
        return self._pool

    def _units(self, slots: Iterable[str]) -> list[list[str]]:
        """How :meth:`predict_views` runs ``slots``: its batches, in its order."""
        groups: dict[int, list[str]] = {}
        for slot in slots:
            session = self.sessions.get(slot)
            if session is not None:
                groups.setdefault(id(session), []).append(slot)
        units: list[list[str]] = []
        for group in groups.values():
            units.extend([group] if self.tuning.batch_shared else [[s] for s in group])
        return units

    def view_order(self, slots: Iterable[str]) -> list[str]:
        """The slots that have a network, in the order :meth:`predict_views` returns
        them."""
        return [slot for unit in self._units(slots) for slot in unit]

    def runs_alone(self, slot: str) -> bool:
        """True when :meth:`predict_views` runs ``slot``'s image as a batch of its own
        (its network serves no other view, or shared views are not batched), so that
        :meth:`submit` gives exactly its probabilities."""
        session = self.sessions.get(slot)
        return session is not None and (not self.tuning.batch_shared or sum(
            1 for other in self.sessions.values() if other is session) == 1)

    def submit(self, slot: str, image: np.ndarray) -> Future:
        """``slot``'s network on one preprocessed ``(S, S)`` image, in the set's inference
        threads (the ``parallel_views`` of :meth:`predict_views`): a future of its class
        probabilities ``(classes,)``."""
        return self._executor().submit(lambda: self.predict(slot, np.stack([image]))[0])

    def predict_views(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Class probabilities ``(classes,)`` per slot for one study's images
        (``slot -> (S, S)`` float32 in [0, 1]); slots without a network are left out.

        Views sharing a network run as one batch (``tuning.batch_shared``); distinct
        networks run one after another, or ``tuning.parallel_views`` at a time in threads.
        """
        units = self._units(images)

        def run(slots: list[str]) -> list[tuple[str, np.ndarray]]:
            probs = self.predict(slots[0], np.stack([images[s] for s in slots]))
            return list(zip(slots, probs, strict=True))

        if self.tuning.parallel_views > 1 and len(units) > 1:
            done = list(self._executor().map(run, units))
        else:
            done = [run(u) for u in units]
        return {slot: p for pairs in done for slot, p in pairs}

    def ref(self) -> ModelRef:
        """The result's ``model`` block (a variant other than fp32 is named in the
        version, e.g. ``0.1.0+int8``, so results and SRs say which networks ran)."""
        m = self.manifest
        version = m.version if self.variant == "fp32" else f"{m.version}+{self.variant}"
        return ModelRef(name=m.name, version=version, sha256=self.digest, task=m.task,
                        not_for_clinical_use=m.not_for_clinical_use,
                        training_data=m.training_data)


__all__ = [
    "INSTALL_HINT",
    "VARIANTS",
    "ModelError",
    "ModelNotInstalled",
    "ModelSet",
    "OrtTuning",
    "available_cores",
    "available_providers",
    "check_preprocessing_version",
    "check_variant_parity",
    "choose_providers",
    "default_model_dir",
    "resolve_model_dir",
    "variant_views",
    "verify_entry",
]
