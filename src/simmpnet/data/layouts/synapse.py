"""Readers for the Synapse on-disk layout (also used by the prepared ACDC data and the demo).

Layout under a root folder::

    train_npz/<name>.npz          image (H x W float), label (H x W integer-valued);
                                  ACDC variants store the image under ``img``
    test_vol_h5/<case>.npy.h5     datasets image (D x H x W), label (D x H x W),
                                  optional attribute ``spacing`` (D, H, W) in mm
    lists/train.txt               slice names, one per line, without extension
    lists/test_vol.txt            case names, one per line

Every file is validated when it is read; problems raise `simmpnet.errors.InputError`
with a one-line message that names the file.

Folds (layout options ``fold`` and ``n_folds``, e.g. ``layout_options: {fold: 1, n_folds: 5}``):
a dataset that holds every case both as a volume, listed in ``lists/all_vol.txt``, and as
slices ``<case>_slice<k>``, listed in ``lists/all.txt`` (the brain demo writes both), is cut
into ``n_folds`` folds of cases: the case at position ``i`` of ``all_vol.txt`` is tested in fold
``i % n_folds``.  In fold ``f`` the split ``test_vol`` is fold ``f``'s cases and ``train`` the
slices of every other case, so over the folds every case is tested exactly once and never
trained on in the fold that tests it.  Other list names are read as they are.
"""
from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simmpnet.errors import InputError

from ..io import MIN_SIDE, escapes_folder, path_exists
from .registry import Layout, register_layout

logger = logging.getLogger(__name__)

#: The lists that folds cut: the slices and the volumes of every case.
FOLD_SLICES_LIST = "all"
FOLD_CASES_LIST = "all_vol"
#: Folds when only ``fold`` is given (as the nnunet layout).
DEFAULT_N_FOLDS = 5

#: Keys accepted for the image, in order of preference (``img``: ACDC variant).
IMAGE_KEYS = ("image", "img")
LABEL_KEYS = ("label",)

#: Transform applied to a training slice: (image H x W float32, label H x W int64) ->
#: (image, label) as numpy arrays or torch tensors (image H x W or 1 x H x W).
SliceTransform = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


def read_list_file(list_file: Path, data_dir: Path, suffix: str) -> list[tuple[str, Path]]:
    """Read a list file and map each entry to a file under ``data_dir``.

    Blank lines and lines starting with ``#`` are skipped; an entry that already ends with
    ``suffix`` is not extended.

    Args:
        list_file: text file with one name per line.
        data_dir: folder the names are relative to.
        suffix: file extension appended to each name (``.npz`` or ``.npy.h5``).

    Returns:
        (name without suffix, path) per entry, in file order.

    Raises:
        InputError: the list file is missing or empty, or an entry is absolute or contains
            ``..`` (it would point outside ``data_dir``).
    """
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{list_file}: list file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{list_file}: cannot read list file ({exc})") from exc
    entries: list[tuple[str, Path]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if escapes_folder(entry):
            raise InputError(
                f"{list_file}: line {lineno} entry {entry!r} points outside {data_dir}; refused"
            )
        name = entry[: -len(suffix)] if entry.endswith(suffix) else entry
        entries.append((name, data_dir / f"{name}{suffix}"))
    if not entries:
        raise InputError(f"{list_file}: list file has no entries")
    return entries


def _check_split_name(split: str) -> None:
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise InputError(f"split {split!r}: must be a plain list name such as 'train' or 'test_vol'")


def validate_pair(
    path: Path, image: np.ndarray, label: np.ndarray, ndim: int, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Check an image/label pair read from ``path``; return (float32 image, int64 label).

    Args:
        path: file the arrays came from (named in error messages).
        image: image array, ``ndim`` dimensions.
        label: label array of the same shape with integer values (float storage allowed).
        ndim: expected number of dimensions (2 for slices, 3 for volumes).
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.

    Raises:
        InputError: wrong dimensions, shape mismatch, non-numeric data, slices smaller than
            ``MIN_SIDE`` pixels, NaN/Inf in the image, non-integer, negative or too large labels.
    """
    if image.dtype.kind not in "biuf" or label.dtype.kind not in "biuf":
        raise InputError(f"{path}: image and label must be numeric (got {image.dtype}, {label.dtype})")
    if image.ndim != ndim:
        raise InputError(f"{path}: image must have {ndim} dimensions, got shape {image.shape}")
    if image.shape != label.shape:
        raise InputError(f"{path}: image shape {image.shape} does not match label shape {label.shape}")
    if image.size == 0:
        raise InputError(f"{path}: empty image of shape {image.shape}")
    if min(image.shape[-2:]) < MIN_SIDE:
        raise InputError(f"{path}: slices of {image.shape[-2]} x {image.shape[-1]} pixels; at least {MIN_SIDE} x {MIN_SIDE} is needed")
    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise InputError(f"{path}: image holds NaN or Inf values")
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise InputError(f"{path}: label holds non-integer values")
    lab = label.astype(np.int64)
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0:
        raise InputError(f"{path}: label holds negative values (min {lo})")
    if n_classes is not None and hi >= n_classes:
        raise InputError(f"{path}: label value {hi} is out of range for n_classes={n_classes}")
    return img, lab


def _first_key(keys: Any, candidates: tuple[str, ...]) -> str | None:
    for key in candidates:
        if key in keys:
            return key
    return None


def load_npz_slice(path: Path, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one slice file.

    Returns:
        (image float32 H x W, label int64 H x W).

    Raises:
        InputError: missing or corrupt file, missing keys, or any check of `validate_pair`.
    """
    if not path_exists(path) or not path.is_file():
        raise InputError(f"{path}: slice file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            img_key = _first_key(data.files, IMAGE_KEYS)
            lab_key = _first_key(data.files, LABEL_KEYS)
            if img_key is None or lab_key is None:
                missing = "image (or img)" if img_key is None else "label"
                raise InputError(f"{path}: missing key {missing!r} (keys: {', '.join(data.files) or 'none'})")
            image, label = data[img_key], data[lab_key]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or unreadable npz file ({type(exc).__name__}: {exc})") from exc
    return validate_pair(path, image, label, 2, n_classes)


def load_h5_volume(
    path: Path, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read and validate one test volume.

    Returns:
        (image float32 D x H x W, label int64 D x H x W, spacing (D, H, W) in mm; (1, 1, 1)
        when the file has no ``spacing`` attribute).

    Raises:
        InputError: missing or corrupt file, missing datasets, bad spacing, or any check of
            `validate_pair`.
    """
    import h5py

    if not path_exists(path) or not path.is_file():
        raise InputError(f"{path}: volume file not found")
    try:
        with h5py.File(path, "r") as f:
            img_key = _first_key(f, IMAGE_KEYS)
            lab_key = _first_key(f, LABEL_KEYS)
            if img_key is None or lab_key is None:
                missing = "image (or img)" if img_key is None else "label"
                raise InputError(f"{path}: missing dataset {missing!r} (has: {', '.join(f.keys()) or 'none'})")
            if not isinstance(f[img_key], h5py.Dataset) or not isinstance(f[lab_key], h5py.Dataset):
                raise InputError(f"{path}: {img_key!r} and {lab_key!r} must be datasets, not groups")
            image, label = f[img_key][()], f[lab_key][()]
            raw_spacing = f.attrs.get("spacing")
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: corrupt or unreadable HDF5 file ({type(exc).__name__}: {exc})") from exc
    image, label = np.asarray(image), np.asarray(label)
    img, lab = validate_pair(path, image, label, 3, n_classes)
    if raw_spacing is None:
        spacing = (1.0, 1.0, 1.0)
    else:
        try:
            sp = np.asarray(raw_spacing, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: spacing attribute is not numeric") from exc
        if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
            raise InputError(f"{path}: spacing attribute must be 3 positive numbers (D, H, W), got {sp.tolist()}")
        spacing = (float(sp[0]), float(sp[1]), float(sp[2]))
    return img, lab, spacing


def _as_tensors(image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert (image, label) to (float32 1 x H x W, int64 H x W) tensors."""
    img = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    lab = label if isinstance(label, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(label))
    img = img.to(torch.float32)
    if img.ndim == 2:
        img = img.unsqueeze(0)
    return img, lab.to(torch.int64)


class _ListedFiles(Dataset):
    """Files of one folder named by a list file (``root/lists/<split>.txt``), in list order."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        list_file: str | os.PathLike[str] | None,
        n_classes: int | None,
        data_dir: str | os.PathLike[str] | None,
        default_dir: str,
        suffix: str,
    ) -> None:
        self.root = Path(root)
        if list_file is None:
            _check_split_name(split)
        self.list_file = Path(list_file) if list_file is not None else self.root / "lists" / f"{split}.txt"
        self.data_dir = Path(data_dir) if data_dir is not None else self.root / default_dir
        self.n_classes = n_classes
        self.entries = read_list_file(self.list_file, self.data_dir, suffix)
        logger.debug("%s: %d files listed in %s", type(self).__name__, len(self.entries), self.list_file)

    @property
    def names(self) -> list[str]:
        """Names in list order."""
        return [name for name, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


class SynapseSliceDataset(_ListedFiles):
    """2-D training slices of the Synapse layout.

    Each item is ``dict(image=float32 tensor 1 x H x W, label=int64 tensor H x W, name=str)``.

    Args:
        root: data set folder (holds ``train_npz/`` and ``lists/``).
        split: list name; the list file is ``root/lists/<split>.txt``.
        list_file: explicit list file (overrides ``split``).
        transform: optional callable ``(image H x W float32, label H x W int64) -> (image,
            label)`` returning numpy arrays or tensors (e.g.
            `simmpnet.data.transforms.RandomAugment`).
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.
        data_dir: folder holding the ``.npz`` files; default ``root/train_npz``.

    Raises:
        InputError: missing/empty list file or an entry pointing outside ``data_dir`` (at
            construction); any problem of a slice file (when that item is read).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        list_file: str | os.PathLike[str] | None = None,
        transform: SliceTransform | None = None,
        n_classes: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, list_file, n_classes, data_dir, "train_npz", ".npz")
        self.transform = transform

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, path = self.entries[index]
        image, label = load_npz_slice(path, self.n_classes)
        if self.transform is not None:
            image, label = self.transform(image, label)
        img, lab = _as_tensors(image, label)
        return {"image": img, "label": lab, "name": name}


class SynapseVolumeDataset(_ListedFiles):
    """3-D test volumes of the Synapse layout, read whole for slice-wise inference.

    Each item is ``dict(image=float32 ndarray D x H x W, label=int64 ndarray D x H x W,
    name=str, spacing=(D, H, W) tuple of floats in mm)``.

    Args:
        root: data set folder (holds ``test_vol_h5/`` and ``lists/``).
        split: list name; the list file is ``root/lists/<split>.txt``.
        list_file: explicit list file (overrides ``split``).
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.
        data_dir: folder holding the ``.npy.h5`` files; default ``root/test_vol_h5``.

    Raises:
        InputError: as `SynapseSliceDataset`, for volume files.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "test_vol",
        list_file: str | os.PathLike[str] | None = None,
        n_classes: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, list_file, n_classes, data_dir, "test_vol_h5", ".npy.h5")

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, path = self.entries[index]
        image, label, spacing = load_h5_volume(path, self.n_classes)
        return {"image": image, "label": label, "name": name, "spacing": spacing}


def case_of_slice(name: str) -> str:
    """The case a slice belongs to: its name before the last ``_slice``
    (``brain_slab03_slice004`` -> ``brain_slab03``)."""
    return name.rsplit("_slice", 1)[0]


def fold_of_cases(cases: list[str], n_folds: int) -> dict[str, int]:
    """The fold that tests each case: position ``i`` in ``cases`` goes to fold ``i % n_folds``.

    Interleaved rather than in blocks, so that every fold's test cases spread over the whole
    list (for the brain demo, from the bottom to the top of the brain) and every fold trains on
    cases from everywhere else."""
    return {case: i % n_folds for i, case in enumerate(cases)}


def _check_fold_options(root: Path, options: dict[str, Any]) -> tuple[int, int]:
    """``(fold, n_folds)`` from the layout options, or an `InputError` naming the option."""
    values = {"fold": options.get("fold", 0), "n_folds": options.get("n_folds", DEFAULT_N_FOLDS)}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{root}: synapse layout option {key} must be an integer, got {value!r}")
    fold, n_folds = values["fold"], values["n_folds"]
    if n_folds < 2:
        raise InputError(f"{root}: synapse layout option n_folds must be at least 2, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise InputError(f"{root}: synapse layout option fold must lie in 0..{n_folds - 1} (n_folds {n_folds}), got {fold}")
    return fold, n_folds


def _only(dataset: _ListedFiles, keep: Callable[[str], bool]) -> _ListedFiles:
    """``dataset`` with only the entries whose name ``keep`` accepts, in list order."""
    dataset.entries = [(name, path) for name, path in dataset.entries if keep(name)]
    return dataset


def _problems(load: Callable[[], Any]) -> list[str]:
    try:
        load()
    except InputError as err:
        return [str(err)]
    return []


@register_layout
class SynapseLayout(Layout):
    """The layout of the paper's Synapse and ACDC data: ``train_npz/`` slices listed in
    ``lists/train.txt``, ``test_vol_h5/`` volumes listed in ``lists/test_vol.txt``.  A list
    whose name contains ``vol`` names volumes, any other names slices.  Options ``fold`` and
    ``n_folds`` make ``train`` and ``test_vol`` a fold's (see the module docstring)."""

    name = "synapse"
    splits = ("train", "test_vol")

    def __init__(self, root: str | os.PathLike, n_classes: int | None = None, **options: Any) -> None:
        super().__init__(root, n_classes, **options)
        unknown = sorted(set(options) - {"fold", "n_folds"})
        if unknown:
            raise InputError(f"{self.root}: unknown synapse layout options {unknown}; known: fold, n_folds")
        #: ``(fold, n_folds)`` when the splits train / test_vol are a fold's (see the module docstring)
        self.fold: tuple[int, int] | None = _check_fold_options(self.root, options) if options else None

    def _fold_lists(self) -> tuple[list[str], list[str]]:
        """The names in ``lists/all_vol.txt`` and ``lists/all.txt``, which the folds cut."""
        try:
            cases = SynapseVolumeDataset(self.root, split=FOLD_CASES_LIST).names
            slices = SynapseSliceDataset(self.root, split=FOLD_SLICES_LIST).names
        except InputError as err:
            raise InputError(
                f"{err} (the synapse layout's fold and n_folds options read lists/{FOLD_CASES_LIST}.txt and "
                f"lists/{FOLD_SLICES_LIST}.txt: every case as a volume and as slices)"
            ) from err
        return cases, slices

    def _test_cases(self, fold: int, n_folds: int) -> set[str]:
        """The cases fold ``fold`` tests (`fold_of_cases` over ``lists/all_vol.txt``)."""
        cases, _ = self._fold_lists()
        if len(cases) < n_folds:
            raise InputError(
                f"{self.root / 'lists' / f'{FOLD_CASES_LIST}.txt'}: {len(cases)} case(s) for n_folds {n_folds}; "
                "every fold needs at least one case"
            )
        return {case for case, k in fold_of_cases(cases, n_folds).items() if k == fold}

    def slices(self, split: str) -> Dataset:
        if self.fold is not None and split == "train":
            test = self._test_cases(*self.fold)
            every = SynapseSliceDataset(self.root, split=FOLD_SLICES_LIST, n_classes=self.n_classes)
            return _only(every, lambda name: case_of_slice(name) not in test)
        return SynapseSliceDataset(self.root, split=split, n_classes=self.n_classes)

    def cases(self, split: str) -> Dataset:
        if self.fold is not None and split == "test_vol":
            test = self._test_cases(*self.fold)
            every = SynapseVolumeDataset(self.root, split=FOLD_CASES_LIST, n_classes=self.n_classes)
            return _only(every, lambda name: name in test)
        return SynapseVolumeDataset(self.root, split=split, n_classes=self.n_classes)

    def _fold_problems(self, fold: int, n_folds: int) -> list[str]:
        """What keeps the folds from being cut: missing lists, too few cases, slices of no case."""
        try:
            self._test_cases(fold, n_folds)
            cases, slices = self._fold_lists()
        except InputError as err:
            return [str(err)]
        known = set(cases)
        orphans = [name for name in slices if case_of_slice(name) not in known]
        if orphans:
            return [
                f"{self.root / 'lists' / f'{FOLD_SLICES_LIST}.txt'}: {len(orphans)} slice(s) of no case of "
                f"{FOLD_CASES_LIST}.txt (e.g. {orphans[0]}); a slice <case>_slice<k> belongs to <case>"
            ]
        return []

    def _split_names(self) -> list[str]:
        """The list files' names, and with folds the fold's train and test_vol."""
        names = {path.stem for path in (self.root / "lists").glob("*.txt")}
        if self.fold is not None:
            names |= {"train", "test_vol"}
        return sorted(names)

    def split_sizes(self) -> dict[str, str]:
        sizes = {}
        for split in self._split_names():
            try:
                sizes[split] = f"{len(self.cases(split))} volumes" if "vol" in split else f"{len(self.slices(split))} slices"
            except InputError:
                continue
        return sizes

    def verify(self) -> list[str]:
        if not any((self.root / "lists").glob("*.txt")):
            return [f"{self.root / 'lists'}: no list files (train.txt, test_vol.txt)"]
        problems: list[str] = self._fold_problems(*self.fold) if self.fold is not None else []
        checked: set[Path] = set()  # lists overlap (a fold's train is part of all.txt): each file once
        for split in self._split_names():
            volumes = "vol" in split
            try:
                dataset = self.cases(split) if volumes else self.slices(split)
            except InputError as err:
                if str(err) not in problems:
                    problems.append(str(err))
                continue
            for _, path in dataset.entries:
                if path in checked:
                    continue
                checked.add(path)
                if volumes:
                    problems += _problems(lambda: load_h5_volume(path, self.n_classes))
                else:
                    problems += _problems(lambda: load_npz_slice(path, self.n_classes))
        return problems
