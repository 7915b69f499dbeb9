"""Converters from a dataset as its owners distribute it to a layout the trainer reads.

Each module exposes ``prepare(raw_dir, out_dir, **options) -> Path`` and writes atomically
(temporary files renamed into place), so an interrupted conversion never leaves a file that
looks complete.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ...errors import InputError

__all__ = ["PREPARERS", "prepare_dataset"]

#: dataset name -> module of this package that converts it
PREPARERS: dict[str, str] = {
    "synapse": "synapse_raw",
    "acdc": "acdc_raw",
    "isic2018": "isic",
    "segpc2021": "segpc",
}


def prepare_dataset(name: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> Path:
    """Convert the raw download of dataset ``name`` found in ``raw_dir`` into ``out_dir``."""
    if name not in PREPARERS:
        raise InputError(f"unknown dataset {name!r} for prepare; choose one of {sorted(PREPARERS)}")
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise InputError(f"{raw}: raw dataset folder not found")
    module = importlib.import_module(f"{__name__}.{PREPARERS[name]}")
    return module.prepare(raw, Path(out_dir), **options)
