"""ACDC cardiac cine-MRI (as distributed by CREATIS) -> the Synapse layout.

Input: patient folders ``patientNNN/`` holding ``patientNNN_frameFF.nii.gz`` and the
matching ``patientNNN_frameFF_gt.nii.gz`` (the end-diastolic and end-systolic frames; labels
1 right ventricle, 2 myocardium, 3 left ventricle).  ``raw_dir`` may be any folder with the
patient folders at most three levels down (``database/training/patient001`` ...).  Frames
without ``_gt`` and the ``_4d`` files are ignored.

Output::

    train_npz/patientNNN_frameFF<z>.npz   image (H x W float32 in [0, 1]), label (H x W uint8)
    test_vol_h5/patientNNN<FF>.npy.h5     image, label (D x H x W); attribute spacing (D, H, W)
    lists/train.txt                       slice names of the training patients
    lists/test_vol.txt                    volume names of the test patients
    lists/valid_vol.txt                   volume names of the validation patients (when any)

Names follow the list files Sim-MPNet publishes (vpsg-research/Sim-MPNet,
``lists/lists_ACDC/train.txt``: ``patient071_frame010`` = patient 71, frame 01, slice 0;
``test_vol.txt``: ``patient00801`` = patient 8, frame 01), so those lists can be used with the
prepared folder.

Splits (``split=``):

* ``"simmpnet"`` (default): Sim-MPNet's published split of the 100 training patients -- the
  20 test patients of its ``test_vol.txt`` (`SIMMPNET_TEST_PATIENTS`) and the 80 others
  of its ``train.txt`` (`SIMMPNET_TRAIN_PATIENTS`).  Sim-MPNet publishes no validation
  split; ``n_valid`` > 0 moves that many training patients (chosen with ``seed``) to
  ``valid_vol.txt`` (the name has ``vol`` so that the ``synapse`` layout reads it as
  volumes).  Patients above 100 are ignored.
* ``"random"``: every patient found, shuffled with ``seed`` and cut 70 / 10 / 20 % into
  train / valid / test (by patient, so the two frames of a patient stay together).

Intensities: each volume is clipped to its 0.5 / 99.5 percentiles and scaled to ``[0, 1]``
(`simmpnet.data.transforms.normalise_percentile`, the rule ``simmpnet predict``
applies to an MRI volume).  Slices are the axial slices along the last NIfTI axis, as
`simmpnet.data.io.read_image` returns them, without resampling.  Every file is written
atomically; the list files are written last.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..io import read_image
from ..transforms import normalise_percentile
from .synapse_raw import write_h5_volume, write_list, write_npz_slice

__all__ = [
    "CLASS_NAMES",
    "SIMMPNET_TEST_PATIENTS",
    "SIMMPNET_TRAIN_PATIENTS",
    "find_patients",
    "prepare",
    "split_patients",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("background", "right ventricle", "myocardium", "left ventricle")

#: Sim-MPNet's ACDC test patients (lists/lists_ACDC/test_vol.txt, two frames each).
SIMMPNET_TEST_PATIENTS: tuple[int, ...] = (8, 10, 13, 14, 16, 17, 19, 25, 26, 27, 47, 48, 53, 68, 69, 72, 76, 80, 87, 94)
#: Sim-MPNet's ACDC training patients (lists/lists_ACDC/train.txt): the other 80 of 1..100.
SIMMPNET_TRAIN_PATIENTS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 15, 18, 20, 21, 22, 23, 24, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39,
    40, 41, 42, 43, 44, 45, 46, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 70, 71,
    73, 74, 75, 77, 78, 79, 81, 82, 83, 84, 85, 86, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100,
)
_PATIENT_DIR = re.compile(r"patient(\d{3})")
_GT_FILE = re.compile(r"patient(?P<patient>\d{3})_frame(?P<frame>\d{2})_gt(?P<ext>\.nii\.gz|\.nii)")

#: A patient's labelled frames: frame number -> (image file, label file).
Frames = dict[int, tuple[Path, Path]]


def find_patients(raw_dir: Path) -> dict[int, Frames]:
    """Patient number -> labelled frames, for every ``patientNNN`` folder under ``raw_dir``
    (at most three levels down).

    Raises:
        InputError: no patient folder, the same patient in two folders, or a ``_gt`` file
            without its image.
    """
    raw_dir = Path(raw_dir)
    folders: dict[int, Path] = {}
    for pattern in ("patient[0-9][0-9][0-9]", "*/patient[0-9][0-9][0-9]", "*/*/patient[0-9][0-9][0-9]"):
        for folder in sorted(raw_dir.glob(pattern)):
            match = _PATIENT_DIR.fullmatch(folder.name)
            if not folder.is_dir() or match is None:
                continue
            number = int(match[1])
            if number in folders and folders[number] != folder:
                raise InputError(f"{folder}: patient {number:03d} is also in {folders[number]}")
            folders[number] = folder
    if not folders:
        raise InputError(f"{raw_dir}: no patientNNN folders found (expected the ACDC download: patient001/patient001_frame01.nii.gz ...)")
    patients: dict[int, Frames] = {}
    for number, folder in sorted(folders.items()):
        frames: Frames = {}
        for gt in sorted(folder.iterdir()):
            match = _GT_FILE.fullmatch(gt.name)
            if match is None:
                continue
            if int(match["patient"]) != number:
                raise InputError(f"{gt}: file of patient {match['patient']} in the folder of patient {number:03d}")
            image = folder / f"patient{number:03d}_frame{match['frame']}{match['ext']}"
            if not image.is_file():
                raise InputError(f"{gt}: label without its image {image.name}")
            frames[int(match["frame"])] = (image, gt)
        patients[number] = frames
    return patients


def split_patients(
    patients: Sequence[int], split: str = "simmpnet", seed: int = 2222, n_valid: int = 0
) -> tuple[list[int], list[int], list[int]]:
    """(train, valid, test) patient numbers, each sorted (see the module docstring).

    Args:
        patients: patient numbers found.
        split: ``"simmpnet"`` or ``"random"``.
        seed: seed of the random choices.
        n_valid: ``"simmpnet"`` only: training patients moved to the validation split.

    Raises:
        InputError: unknown split, patients of the Sim-MPNet split missing, bad ``n_valid``.
    """
    found = sorted(set(int(p) for p in patients))
    rng = np.random.default_rng(seed)
    if split == "simmpnet":
        missing = sorted(set(SIMMPNET_TRAIN_PATIENTS + SIMMPNET_TEST_PATIENTS) - set(found))
        if missing:
            shown = ", ".join(f"patient{p:03d}" for p in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise InputError(f"acdc prepare: the Sim-MPNet split needs patients 001-100; {len(missing)} missing: {shown}")
        if not 0 <= n_valid < len(SIMMPNET_TRAIN_PATIENTS):
            raise InputError(f"acdc prepare: n_valid must lie in 0..{len(SIMMPNET_TRAIN_PATIENTS) - 1}, got {n_valid}")
        valid = sorted(int(p) for p in rng.choice(SIMMPNET_TRAIN_PATIENTS, size=n_valid, replace=False)) if n_valid else []
        train = [p for p in SIMMPNET_TRAIN_PATIENTS if p not in set(valid)]
        return train, valid, list(SIMMPNET_TEST_PATIENTS)
    if split == "random":
        if n_valid:
            raise InputError("acdc prepare: n_valid applies to split='simmpnet'; the random split is 70/10/20")
        order = [found[i] for i in rng.permutation(len(found))]
        n_test = int(round(0.2 * len(found)))
        n_val = int(round(0.1 * len(found)))
        test, valid, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        return sorted(train), sorted(valid), sorted(test)
    raise InputError(f"acdc prepare: unknown split {split!r}; choose 'simmpnet' or 'random'")


def _load(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(image float32 D x H x W in [0, 1], label uint8 D x H x W, spacing (D, H, W) mm)."""
    image = read_image(image_path)
    label = read_image(label_path)
    if image.array.ndim != 3 or label.array.ndim != 3:
        raise InputError(f"{image_path}: expected a 3-D frame, got shape {image.array.shape}")
    if image.array.shape != label.array.shape:
        raise InputError(f"{label_path}: label shape {label.array.shape} does not match image {image_path.name} {image.array.shape}")
    lab = label.array
    if not np.array_equal(lab, np.rint(lab)) or lab.min() < 0 or lab.max() > 3:
        raise InputError(f"{label_path}: labels must be 0 background, 1 RV, 2 myocardium, 3 LV (found values {np.unique(lab)[:8].tolist()})")
    spacing = tuple(float(s) for s in (image.spacing or (1.0, 1.0, 1.0)))
    return normalise_percentile(image.array), lab.astype(np.uint8), spacing


def prepare(
    raw_dir: Path,
    out_dir: Path,
    *,
    split: str = "simmpnet",
    seed: int = 2222,
    n_valid: int = 0,
    compress: bool = False,
) -> Path:
    """Convert the ACDC download into the Synapse layout (see the module docstring).

    Args:
        raw_dir: folder with the ``patientNNN`` folders (or their parents).
        out_dir: output folder (created; existing files of the same names are replaced).
        split: ``"simmpnet"`` (Sim-MPNet's 80/20 patients) or ``"random"`` (70/10/20).
        seed: seed of the random choices.
        n_valid: with ``"simmpnet"``: training patients moved to ``valid_vol.txt``.
        compress: write compressed ``.npz`` slices.

    Returns:
        ``out_dir``.

    Raises:
        InputError: missing patients or frames, unreadable or inconsistent files.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    patients = find_patients(raw_dir)
    train, valid, test = split_patients(sorted(patients), split, seed, n_valid)
    used = set(train) | set(valid) | set(test)
    unlabelled = sorted(p for p in used if not patients[p])
    if unlabelled:
        raise InputError(f"{raw_dir}: patient{unlabelled[0]:03d} (and {len(unlabelled) - 1} more) has no _gt frames")
    ignored = sorted(set(patients) - used)
    if ignored:
        logger.info("acdc prepare: ignoring %d patient(s) outside the split (e.g. patient%03d)", len(ignored), ignored[0])

    slice_names: list[str] = []
    for patient in train:
        for frame, files in sorted(patients[patient].items()):
            image, label, _ = _load(*files)
            for z in range(image.shape[0]):
                name = f"patient{patient:03d}_frame{frame:02d}{z}"
                write_npz_slice(out_dir / "train_npz" / f"{name}.npz", image[z], label[z], compress)
                slice_names.append(name)
        logger.info("acdc prepare: patient%03d -> training slices", patient)
    lists: dict[str, list[str]] = {"valid_vol": [], "test_vol": []}
    for list_name, group in (("valid_vol", valid), ("test_vol", test)):
        for patient in group:
            for frame, files in sorted(patients[patient].items()):
                image, label, spacing = _load(*files)
                name = f"patient{patient:03d}{frame:02d}"
                write_h5_volume(out_dir / "test_vol_h5" / f"{name}.npy.h5", image, label, spacing)
                lists[list_name].append(name)
    (out_dir / "lists").mkdir(parents=True, exist_ok=True)
    if slice_names:
        write_list(out_dir / "lists" / "train.txt", slice_names)
    for list_name, names in lists.items():
        if names:
            write_list(out_dir / "lists" / f"{list_name}.txt", names)
    logger.info(
        "acdc prepare: %d training slices, %d validation and %d test volumes written to %s",
        len(slice_names), len(lists["valid_vol"]), len(lists["test_vol"]), out_dir,
    )
    return out_dir
