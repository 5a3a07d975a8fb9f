"""Model registry entry: one folder per model, one ONNX file per view + ``manifest.json``.

Written by ``mammo-density export`` (train/), read and verified by the worker. The schema
lives here, in the core, so neither side imports the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from mammo_density.study.slots import SLOTS

MANIFEST_NAME = "manifest.json"
TASK_CLASSES = {"birads4": ["A", "B", "C", "D"], "dense2": ["non-dense", "dense"]}


class Normalisation(BaseModel):
    """Intensity normalisation applied after preprocessing: ``(x - mean) / std``."""

    mean: float = 0.0
    std: float = 1.0


class ModelManifest(BaseModel):
    """What a model is, what it expects, what it was trained on, and its files' sha256."""

    name: str
    version: str
    task: Literal["birads4", "dense2"]
    classes: list[str]
    views: dict[str, str] = Field(description="slot (R-CC, ...) -> ONNX file name in the folder")
    input_size: int = Field(gt=0, description="square input side in pixels")
    preprocessing_version: str
    normalisation: Normalisation = Field(default_factory=Normalisation)
    files_sha256: dict[str, str]
    variants: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="other versions of the networks beside the fp32 ``views``: variant name "
        "(``int8``) -> slot -> ONNX file name; each file has its sha256 in files_sha256")
    input_name: str = "image"
    output_name: str = "probabilities"
    architecture: dict[str, object] = Field(default_factory=dict)
    training_data: str
    metrics: dict[str, object] = Field(default_factory=dict)
    intended_use: str = ""
    not_for_clinical_use: bool = False
    created: str = ""
    commands: list[str] = Field(default_factory=list, description="how it was made")

    def check_views(self) -> None:
        unknown = set(self.views) - set(SLOTS)
        if unknown:
            raise ValueError(f"manifest names unknown views: {sorted(unknown)}")
        for variant, views in self.variants.items():
            if set(views) != set(self.views):
                raise ValueError(f"variant {variant} must cover the views {sorted(self.views)}")
        if self.classes != TASK_CLASSES[self.task]:
            raise ValueError(f"task {self.task} needs classes {TASK_CLASSES[self.task]}, "
                             f"manifest has {self.classes}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> ModelManifest:
    """Parse and check a registry entry's manifest (not the file hashes; see worker)."""
    path = Path(folder) / MANIFEST_NAME
    manifest = ModelManifest.model_validate(json.loads(path.read_text()))
    manifest.check_views()
    return manifest


def write_manifest(folder: Path, manifest: ModelManifest) -> Path:
    manifest.check_views()
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def manifest_digest(folder: Path) -> str:
    """sha256 of the manifest file: the model's identity in results and SRs."""
    return sha256_file(Path(folder) / MANIFEST_NAME)
