"""Convert the SegPC-2021 download into the fast folder2d form.

Reads the ``x/`` pictures and per-cell ``y/`` masks with the ``segpc2021`` layout
(`simmpnet.data.layouts.segpc`), merges each picture's cells into one label map and
writes, atomically::

    <out>/images/<id>.png   RGB, resized to ``size`` x ``size`` (default 256, bicubic)
    <out>/masks/<id>.png    0 background / 1 cytoplasm / 2 nucleus (nearest neighbour)
    <out>/splits.json       train / val / test (seeded 80/10/10 of every labelled picture, or
                            the given split file) and official_* splits
    <out>/dataset.json      n_classes 3, class names, channels 3, size, source

Train on the result with ``layout: folder2d``, ``n_classes: 3``, ``in_channels: 3``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simmpnet.errors import InputError

from ..layouts.folder2d import DEFAULT_FRACTIONS, DEFAULT_SEED, export_folder2d
from ..layouts.segpc import SegPC2021Layout

__all__ = ["prepare"]


def prepare(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: Any = 256,
    seed: int = DEFAULT_SEED,
    split_file: str | os.PathLike | None = None,
    fractions: Any = DEFAULT_FRACTIONS,
    **unknown: Any,
) -> Path:
    """Convert SegPC-2021 from ``raw_dir`` into ``out_dir`` (folder2d layout).

    Args:
        raw_dir: folder holding the download (``TCIA_SegPC_dataset`` or any folder above its
            ``x/`` and ``y/`` folders).
        out_dir: output folder (created).
        size: output side (int), ``(H, W)``, or None to keep each picture's size.
        seed: seed of the 80/10/10 split (default 2222).
        split_file: a JSON split file to use instead of the seeded split (relative to
            ``raw_dir`` unless absolute); default ``raw_dir/splits.json`` when it exists.
        fractions: (train, val, test) fractions of the seeded split.

    Returns:
        ``out_dir``.

    Raises:
        InputError: unknown options, or any problem of the raw data (see
            `simmpnet.data.layouts.folder2d.export_folder2d`).
    """
    if unknown:
        raise InputError(f"unknown option(s) {sorted(unknown)} for prepare segpc2021; known: size, seed, split_file, fractions")
    layout = SegPC2021Layout(raw_dir, 3, seed=seed, split_file=split_file, fractions=fractions)
    return export_folder2d(layout, out_dir, size=size)
