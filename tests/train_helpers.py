"""Small synthetic training data and tiny runs shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from mammo_density.synth.generate import generate


def tiny_manifest(folder: Path, studies: int = 8, seed: int = 5) -> Path:
    """``studies`` synthetic 4-view studies at 1/16 resolution; returns the manifest CSV."""
    if not (folder / "manifest.csv").exists():
        generate(folder, studies=studies, seed=seed, size=16)
    return folder / "manifest.csv"


def train_argv(manifest: Path, out: Path, *extra: str) -> list[str]:
    """A tiny, fast training command line (32 px, width 4, batch 4, 1 thread)."""
    return ["--manifest", str(manifest), "--out", str(out), "--input-size", "32",
            "--width", "4", "--batch-size", "4", "--threads", "1", "--no-progress",
            "--val-fraction", "0.25", "--test-fraction", "0.0", "--rotation", "20",
            "--cache-dir", str(out.parent / "cache"), *extra]
