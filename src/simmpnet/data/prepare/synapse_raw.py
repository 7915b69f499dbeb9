"""Synapse multi-organ CT (MICCAI 2015 "Beyond the Cranial Vault") -> the Synapse layout.

Input: the challenge download, ``RawData/Training/`` with ``img/imgNNNN.nii.gz`` (CT in HU)
and ``label/labelNNNN.nii.gz`` (13 organs: 1 spleen, 2 right kidney, 3 left kidney,
4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and
splenic vein, 11 pancreas, 12 right adrenal gland, 13 left adrenal gland).  ``raw_dir`` may be
the folder holding ``img/`` and ``label/`` or one of its parents ``Training/``, ``RawData/``.

Output (the TransUNet preprocessing used by this research line)::

    train_npz/caseNNNN_sliceNNN.npz   image (H x W float32 in [0, 1]), label (H x W uint8)
    test_vol_h5/caseNNNN.npy.h5       image, label (D x H x W); attribute spacing (D, H, W) mm
    lists/train.txt                   slice names of the training cases
    lists/test_vol.txt                names of the test cases

* Classes (`CLASS_NAMES`): 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney,
  5 liver, 6 pancreas, 7 spleen, 8 stomach; the other five organs become background.
* Intensities: HU clipped to [-125, 275], then ``(HU + 125) / 400``.
* Slices: the axial slices along the last NIfTI axis, i.e. the first axis of the ``D x H x W``
  array `simmpnet.data.io.read_image` returns (no resampling) -- the orientation
  ``simmpnet predict`` uses for a NIfTI input, so predictions line up with the scans.
* Split: TransUNet's ``lists/lists_Synapse/test_vol.txt`` (Beckschen/TransUNet): test cases
  0001 0002 0003 0004 0008 0022 0025 0029 0032 0035 0036 0038; the other 18 of the 30
  training scans (0005-0040; the download has no 0011-0020) are the training cases.

Every file is written atomically (temporary file + `os.replace`); the list files are
written last, so an interrupted run never leaves lists naming missing files.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..io import atomic_write, read_image

__all__ = [
    "CLASS_NAMES",
    "HU_WINDOW",
    "SYNAPSE_TO_CLASS",
    "TEST_CASES",
    "TRAIN_CASES",
    "hu_window",
    "find_case_folders",
    "load_case",
    "map_organs",
    "prepare",
    "write_h5_volume",
    "write_list",
    "write_npz_slice",
]

logger = logging.getLogger(__name__)

#: Class names of the prepared data, background first.
CLASS_NAMES: tuple[str, ...] = (
    "background", "aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach",
)
#: Raw organ id (index, 0..13) -> class id of the prepared data.
SYNAPSE_TO_CLASS: np.ndarray = np.array(
    [
        0,  # 0 background
        7,  # 1 spleen
        4,  # 2 right kidney
        3,  # 3 left kidney
        2,  # 4 gallbladder
        0,  # 5 esophagus
        5,  # 6 liver
        8,  # 7 stomach
        1,  # 8 aorta
        0,  # 9 inferior vena cava
        0,  # 10 portal and splenic vein
        6,  # 11 pancreas
        0,  # 12 right adrenal gland
        0,  # 13 left adrenal gland
    ],
    dtype=np.uint8,
)
#: HU window mapped to [0, 1].
HU_WINDOW: tuple[float, float] = (-125.0, 275.0)
#: TransUNet's test cases (lists/lists_Synapse/test_vol.txt) and the remaining training cases.
TEST_CASES: tuple[int, ...] = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
TRAIN_CASES: tuple[int, ...] = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)


# ------------------------------------------------------------------------------ conversions
def hu_window(volume: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip CT values to ``window`` (HU) and scale them linearly to ``[0, 1]``.

    Args:
        volume: CT in HU, any shape.
        window: (low, high) HU, mapped to 0 and 1.

    Returns:
        float32 array of the same shape: ``(clip(v, low, high) - low) / (high - low)``.
    """
    low, high = float(window[0]), float(window[1])
    clipped = np.clip(np.asarray(volume, dtype=np.float32), low, high)
    return ((clipped - np.float32(low)) / np.float32(high - low)).astype(np.float32)


def map_organs(label: np.ndarray, path: Path) -> np.ndarray:
    """Map a raw 13-organ label map to the 8 classes (`SYNAPSE_TO_CLASS`).

    Args:
        label: raw organ ids 0..13, any shape, integer-valued (float storage allowed).
        path: file the labels came from (named in errors).

    Returns:
        uint8 array of the same shape with class ids 0..8.

    Raises:
        InputError: non-integer values or ids outside 0..13.
    """
    if not np.array_equal(label, np.rint(label)):
        raise InputError(f"{path}: label holds non-integer values")
    ids = label.astype(np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= len(SYNAPSE_TO_CLASS):
        bad = lo if lo < 0 else hi
        raise InputError(f"{path}: organ id {bad} is outside the Synapse labels 0..{len(SYNAPSE_TO_CLASS) - 1}")
    return SYNAPSE_TO_CLASS[ids]


# ------------------------------------------------------------------------------ atomic writers
def write_npz_slice(path: Path, image: np.ndarray, label: np.ndarray, compress: bool = False) -> Path:
    """Write one training slice atomically: keys ``image`` (float32 H x W), ``label`` (uint8 H x W)."""
    save = np.savez_compressed if compress else np.savez

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            save(handle, image=np.ascontiguousarray(image, dtype=np.float32), label=np.ascontiguousarray(label, dtype=np.uint8))

    return atomic_write(path, write, suffix=".npz")


def write_h5_volume(path: Path, image: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None) -> Path:
    """Write one test volume atomically: datasets ``image`` (float32 D x H x W), ``label``
    (uint8 D x H x W), attribute ``spacing`` (D, H, W) in mm when known."""
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=np.ascontiguousarray(image, dtype=np.float32), compression="gzip", compression_opts=4)
            f.create_dataset("label", data=np.ascontiguousarray(label, dtype=np.uint8), compression="gzip", compression_opts=4)
            if spacing is not None:
                f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)

    return atomic_write(path, write, suffix=".h5")


def write_list(path: Path, names: Iterable[str]) -> Path:
    """Write a list file atomically, one name per line."""
    text = "".join(f"{name}\n" for name in names)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return atomic_write(path, write, suffix=".txt")


# ------------------------------------------------------------------------------ the converter
def find_case_folders(raw_dir: Path) -> tuple[Path, Path]:
    """The ``img/`` and ``label/`` folders of the download under ``raw_dir``.

    Raises:
        InputError: none of ``raw_dir``, ``raw_dir/Training``, ``raw_dir/RawData/Training``,
            ``raw_dir/RawData`` holds both folders.
    """
    for base in (raw_dir, raw_dir / "Training", raw_dir / "RawData" / "Training", raw_dir / "RawData"):
        if (base / "img").is_dir() and (base / "label").is_dir():
            return base / "img", base / "label"
    raise InputError(
        f"{raw_dir}: no img/ and label/ folders found (expected the Synapse download: RawData/Training/img/img0001.nii.gz, "
        "RawData/Training/label/label0001.nii.gz)"
    )


def _case_files(img_dir: Path, label_dir: Path, case: int) -> tuple[Path, Path]:
    def pick(folder: Path, prefix: str) -> Path:
        for ext in (".nii.gz", ".nii"):
            path = folder / f"{prefix}{case:04d}{ext}"
            if path.is_file():
                return path
        return folder / f"{prefix}{case:04d}.nii.gz"

    return pick(img_dir, "img"), pick(label_dir, "label")


def load_case(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read one case and convert it.

    Returns:
        (image float32 D x H x W in [0, 1], label uint8 D x H x W with class ids 0..8,
        spacing (D, H, W) in mm).

    Raises:
        InputError: unreadable files, bad labels, image/label shape mismatch.
    """
    image = read_image(image_path)
    label = read_image(label_path)
    if image.array.ndim != 3 or label.array.ndim != 3:
        raise InputError(f"{image_path}: expected 3-D CT volumes, got shape {image.array.shape}")
    if image.array.shape != label.array.shape:
        raise InputError(f"{label_path}: label shape {label.array.shape} does not match image {image_path.name} {image.array.shape}")
    spacing = tuple(float(s) for s in (image.spacing or (1.0, 1.0, 1.0)))
    if label.spacing is not None and not np.allclose(label.spacing, spacing, rtol=1e-3):
        logger.warning("%s: spacing %s differs from the image's %s", label_path, label.spacing, spacing)
    return hu_window(image.array), map_organs(label.array, label_path), spacing


def prepare(
    raw_dir: Path,
    out_dir: Path,
    *,
    train_cases: Sequence[int] | None = None,
    test_cases: Sequence[int] | None = None,
    compress: bool = False,
) -> Path:
    """Convert the Synapse download into the Synapse layout (see the module docstring).

    Args:
        raw_dir: the download (``RawData/``, ``RawData/Training/`` or a folder with ``img/``
            and ``label/``).
        out_dir: output folder (created; existing files of the same names are replaced).
        train_cases: case numbers sliced into ``train_npz/`` (default `TRAIN_CASES`).
        test_cases: case numbers stored as volumes in ``test_vol_h5/`` (default `TEST_CASES`).
        compress: write compressed ``.npz`` slices (smaller, slower to read).

    Returns:
        ``out_dir``.

    Raises:
        InputError: missing case files (all named in one line), overlapping splits,
            unreadable or inconsistent files.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    train = sorted(int(c) for c in (TRAIN_CASES if train_cases is None else train_cases))
    test = sorted(int(c) for c in (TEST_CASES if test_cases is None else test_cases))
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise InputError(f"synapse prepare: cases {overlap} are in both the training and the test split")
    if not train and not test:
        raise InputError("synapse prepare: no case to convert")
    img_dir, label_dir = find_case_folders(raw_dir)
    files = {case: _case_files(img_dir, label_dir, case) for case in train + test}
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise InputError(f"{raw_dir}: {len(missing)} file(s) of the split are missing: {shown}")
    present = {p.name for p in img_dir.iterdir()}
    ignored = sorted(n for n in present if n.startswith("img") and n[3:7].isdigit() and int(n[3:7]) not in files)
    if ignored:
        logger.info("synapse prepare: ignoring %d scan(s) outside the split: %s", len(ignored), ", ".join(ignored))

    slice_names: list[str] = []
    for case in train:
        image, label, _ = load_case(*files[case])
        for z in range(image.shape[0]):
            name = f"case{case:04d}_slice{z:03d}"
            write_npz_slice(out_dir / "train_npz" / f"{name}.npz", image[z], label[z], compress)
            slice_names.append(name)
        logger.info("synapse prepare: case%04d -> %d training slices", case, image.shape[0])
    volume_names: list[str] = []
    for case in test:
        image, label, spacing = load_case(*files[case])
        name = f"case{case:04d}"
        write_h5_volume(out_dir / "test_vol_h5" / f"{name}.npy.h5", image, label, spacing)
        volume_names.append(name)
        logger.info("synapse prepare: case%04d -> test volume %s", case, image.shape)
    (out_dir / "lists").mkdir(parents=True, exist_ok=True)
    if slice_names:
        write_list(out_dir / "lists" / "train.txt", slice_names)
    if volume_names:
        write_list(out_dir / "lists" / "test_vol.txt", volume_names)
    logger.info(
        "synapse prepare: %d training slices, %d test volumes written to %s", len(slice_names), len(volume_names), out_dir
    )
    return out_dir
