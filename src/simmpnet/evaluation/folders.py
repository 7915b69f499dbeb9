"""Score a folder of existing predictions against a folder of ground truth, with the metrics
and report of ``simmpnet evaluate`` (as ``nnUNetv2_evaluate_folder`` does for nnU-Net).

Files are paired by name without their extension (``case_001.nii.gz`` with
``case_001.nii.gz`` or ``case_001.nrrd``; ``img_7.png`` with ``img_7.png``).  Every prediction
needs its ground truth and every ground truth its prediction: a pair missing on either side is
an error listing the names, before anything is scored, so that a half-written prediction
folder never gives a score of fewer cases.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import IMAGE2D_EXTENSIONS, SUPPORTED_EXTENSIONS, file_extension, read_image
from ..errors import InputError
from .evaluate import score_cases

logger = logging.getLogger(__name__)

__all__ = ["pair_folders", "read_label_map", "evaluate_folders"]


def _label_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ext = file_extension(path)
        if path.name.startswith(".") or not path.is_file() or ext not in SUPPORTED_EXTENSIONS:
            continue
        stem = path.name[: -len(ext)] if ext else path.name
        if stem in found:
            raise InputError(f"{folder}: {found[stem].name} and {path.name} are both {role} of {stem!r}")
        found[stem] = path
    if not found:
        raise InputError(f"{folder}: no label maps found (any of {', '.join(sorted(SUPPORTED_EXTENSIONS))})")
    return found


def pair_folders(predictions: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(name, prediction file, ground-truth file)`` of every case, sorted by name.

    Raises:
        InputError: a folder is missing or holds no label map, or a case lacks its prediction
            or its ground truth (the names are listed).
    """
    pred_files = _label_files(Path(predictions), "prediction")
    true_files = _label_files(Path(labels), "ground truth")
    problems = []
    for missing, side, folder in (
        (sorted(set(true_files) - set(pred_files)), "no prediction", predictions),
        (sorted(set(pred_files) - set(true_files)), "no ground truth", labels),
    ):
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            problems.append(f"{len(missing)} case(s) with {side} in {folder}: {shown}")
    if problems:
        raise InputError("; ".join(problems))
    return [(name, pred_files[name], true_files[name]) for name in sorted(pred_files)]


def _read_plain_labels(path: Path, ext: str) -> np.ndarray:
    """The ``label`` array of an npz / h5 file (what ``simmpnet predict`` and the Synapse
    layout store)."""
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "label" in archive.files:
                    return np.asarray(archive["label"])
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                if "label" in handle:
                    return np.asarray(handle["label"][()])
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable {ext[1:]} file ({err})") from err
    raise InputError(f"{path}: no 'label' array (the key simmpnet predict writes)")


def read_label_map(path: Path, n_classes: int | None) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Class ids and spacing (mm, None when unknown) of a label map file: a picture's pixel
    values (grey or palette indices, as ``simmpnet predict`` writes them), the ``label`` array
    of an npz / h5 file, or a volume's voxels (NIfTI, NRRD, MHA)."""
    ext = file_extension(path)
    if ext in IMAGE2D_EXTENSIONS:
        from ..data.layouts.folder2d import read_mask

        array, spacing = read_mask(path), None
    elif ext in (".npz", ".h5"):
        array, spacing = _read_plain_labels(path, ext), None
    else:
        loaded = read_image(path)
        array, spacing = loaded.array, loaded.spacing
    if not np.array_equal(array, np.round(array)) or array.min() < 0:
        raise InputError(f"{path}: not a label map (values must be non-negative integers)")
    labels = array.astype(np.int64)
    if n_classes is not None and labels.max() >= n_classes:
        raise InputError(f"{path}: label {int(labels.max())} is not below n_classes {n_classes}")
    return labels, spacing


def evaluate_folders(
    predictions: str | os.PathLike,
    labels: str | os.PathLike,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the label maps in ``predictions`` against those in ``labels``.

    Args:
        predictions: folder of predicted label maps (any format `read_image`
            reads: PNG, NIfTI, NRRD, MHA, npz, h5).
        labels: folder of ground-truth label maps, paired by name (module docstring).
        n_classes: classes including background; None: the largest label found in either
            folder, plus one (every file is then read twice).
        class_names: names of all classes, background first (default ``class_1`` ...).
        workers: processes computing the metrics.
        progress: show a progress bar of the cases on stderr.

    Returns:
        The `score_cases` summary, with the two folders
        named.  Distances are in mm where the ground-truth files record a spacing.

    Raises:
        InputError: unpaired cases, a file that is not a label map, shapes that differ within
            a pair, a label not below ``n_classes``, or names that do not fit ``n_classes``;
            all before any case is scored where the pairing is concerned.
    """
    pairs = pair_folders(predictions, labels)
    if n_classes is None:
        largest = 0
        for _, pred_path, true_path in pairs:
            for path in (pred_path, true_path):
                found = int(read_label_map(path, None)[0].max())
                if found == 255:
                    raise InputError(f"{path}: label 255, a mask stored as 0/255? scoring needs class ids (0, 1, ...)")
                largest = max(largest, found)
        n_classes = max(largest + 1, 2)
        logger.info("%d classes (background included), from the largest label found", n_classes)
    names = list(class_names) if class_names else ["background", *(f"class_{i}" for i in range(1, n_classes))]
    if len(names) != n_classes:
        raise InputError(f"{len(names)} class names for {n_classes} classes (background first): {names}")

    def cases() -> Iterator[tuple[str, np.ndarray, np.ndarray, Any]]:
        for name, pred_path, true_path in pairs:
            truth, spacing = read_label_map(true_path, n_classes)
            prediction = read_label_map(pred_path, n_classes)[0]
            if prediction.shape != truth.shape:
                raise InputError(
                    f"{pred_path}: shape {prediction.shape} differs from the ground truth's {truth.shape} ({true_path})"
                )
            yield name, prediction, truth, spacing

    summary = score_cases(cases(), n_classes, names, workers, progress=progress, total=len(pairs))
    summary["predictions"] = str(predictions)
    summary["labels"] = str(labels)
    return summary
