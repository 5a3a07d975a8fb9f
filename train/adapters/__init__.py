"""Adapters: public datasets' own files -> the training manifest CSV (docs/manifest.md).

Each module has ``convert(root, out_csv, ...) -> list[ImageRecord]``; run one with
``python -m mammo_density.train.adapters NAME ROOT --out manifest.csv``.
"""

from __future__ import annotations

from importlib import import_module

ADAPTERS = {"vindr": "vindr", "cbis-ddsm": "cbis_ddsm", "rsna": "rsna", "embed": "embed",
            "inbreast": "inbreast", "mias": "mias"}


def get(name: str):
    """The adapter module of dataset ``name`` (one of :data:`ADAPTERS`)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(ADAPTERS)}")
    return import_module(f"mammo_density.train.adapters.{ADAPTERS[name]}")
