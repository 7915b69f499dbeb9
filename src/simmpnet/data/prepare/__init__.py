"""Converters from a dataset as its owners distribute it to a layout the trainer reads.

Each module exposes ``prepare(raw_dir, out_dir, **options) -> Path`` and writes atomically
(temporary files renamed into place), so an interrupted conversion never leaves a file that
looks complete.  `prepare_dataset` (the ``simmpnet prepare`` command) goes further: the
converter writes into a hidden staging folder next to the output folder, and only a
conversion that succeeds is moved into place, so a failed one leaves nothing in the output
folder.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..io import check_output_folder, default_mode

__all__ = ["PREPARERS", "prepare_dataset"]

#: dataset name -> module of this package that converts it
PREPARERS: dict[str, str] = {
    "synapse": "synapse_raw",
    "acdc": "acdc_raw",
    "isic2018": "isic",
    "segpc2021": "segpc",
}


def _move_into(staging: Path, out: Path) -> None:
    """Move the finished conversion ``staging`` to ``out``: one rename when ``out`` is absent or
    empty, else file by file (replacing files of the same names), with the top-level files and
    ``lists/`` -- the dataset descriptions that make a folder usable -- moved last."""
    if not out.exists() or not any(out.iterdir()):
        os.replace(staging, out)
        return
    files = [p for p in staging.rglob("*") if p.is_file()]

    def describes(path: Path) -> bool:
        rel = path.relative_to(staging)
        return len(rel.parts) == 1 or rel.parts[0] == "lists"

    for path in sorted(files, key=lambda p: (describes(p), str(p))):
        target = out / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def prepare_dataset(name: str, raw_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> Path:
    """Convert the raw download of dataset ``name`` found in ``raw_dir`` into ``out_dir``.

    Raises:
        InputError: unknown dataset, missing raw folder, an output that is the raw folder or
            not a folder, any problem of the raw data (then ``out_dir`` is left as it was), or
            an output folder that cannot be written.
    """
    if name not in PREPARERS:
        raise InputError(f"unknown dataset {name!r} for prepare; choose one of {sorted(PREPARERS)}")
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise InputError(f"{raw}: raw dataset folder not found")
    check_output_folder(out)
    if out.resolve() == raw.resolve():
        raise InputError(f"{out}: the output folder must differ from the raw dataset folder")
    module = importlib.import_module(f"{__name__}.{PREPARERS[name]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        os.chmod(staging, default_mode(0o777))  # mkdtemp makes 0700; the output folder gets the usual mode
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    try:
        try:
            module.prepare(raw, staging, **options)
        except InputError as err:
            raise InputError(f"{err}; nothing was written to {out}") from err
        try:
            _move_into(staging, out)
        except OSError as exc:
            raise InputError(f"{out}: cannot move the conversion into place ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
