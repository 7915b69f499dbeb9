"""The preprocessed ACDC data of MT-UNet, used as is by CASCADE, EMCAD and their followers.

Layout under a root folder (``data/ACDC`` in those repositories)::

    train/case_001_sliceED_0.npz        2-D slices: img (H x W float), label (H x W)
    valid/case_019_sliceED_0.npz        2-D slices, same keys
    test/case_002_volume_ED.npz         whole volumes: img (D x H x W), label (D x H x W)
    lists_ACDC/train.txt                file names, one per line (``case_001_sliceED_0.npz``)
    lists_ACDC/valid.txt
    lists_ACDC/test.txt

Sources: the ``ACDCdataset`` reader of Dootmaan/MT-UNet (``dataset/dataset_ACDC.py``: keys
``img``/``label``; ``train``/``valid`` entries read from ``<root>/<split>/<entry>``, ``test``
entries from the volume folder ``<root>/test``), the defaults of SLDGroup/CASCADE
``train_ACDC.py`` (``--root_dir ./data/ACDC/``, ``--list_dir ./data/ACDC/lists_ACDC``,
``--volume_path ./data/ACDC/test``) and the folder trees in the READMEs of that line.  The list
folder is looked for as ``lists_ACDC/``, ``lists/lists_ACDC/`` (EMCAD's default) and
``lists/``; entries may carry the ``.npz`` extension or not.  A split without a list file is
every ``.npz`` of its folder, sorted by name.

Splits: ``train`` and ``valid`` hold slices, ``test`` holds volumes.  `AcdcLayout.cases`
also works on a slice split: its slices are stacked into volumes by name
(``case_019_sliceED_<i>`` -> volume ``case_019_volume_ED``, slices in index order), so that
``valid`` can select models without touching ``test``.  These files carry no voxel spacing:
``spacing`` is ``None`` (distances in voxels) unless a file holds a ``spacing`` entry (D, H, W).

The plain Synapse-style ACDC (``train_npz/``, ``test_vol_h5/``, ``lists/*.txt``, key ``image``)
is read by the ``synapse`` layout instead.
"""
from __future__ import annotations

import logging
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import InputError
from ..io import path_exists
from .registry import Layout, register_layout
from .synapse import IMAGE_KEYS, LABEL_KEYS, load_npz_slice, read_list_file, validate_pair

__all__ = ["AcdcLayout", "AcdcSliceDataset", "AcdcVolumeDataset", "load_npz_volume", "volume_name"]

logger = logging.getLogger(__name__)

#: Where the list files are looked for, in order.
LIST_DIRS: tuple[str, ...] = ("lists_ACDC", "lists/lists_ACDC", "lists")
SLICE_SPLITS: tuple[str, ...] = ("train", "valid")
VOLUME_SPLITS: tuple[str, ...] = ("test",)
_SLICE_NAME = re.compile(r"(?P<case>.+)_slice(?P<tag>[A-Za-z]*)_?(?P<index>\d+)")


def volume_name(slice_name: str) -> tuple[str, int]:
    """The volume a slice belongs to and its index: ``case_019_sliceED_3`` -> ``("case_019_volume_ED", 3)``.

    Raises:
        InputError: the name does not end in ``_slice<TAG>_<index>``.
    """
    match = _SLICE_NAME.fullmatch(slice_name)
    if match is None:
        raise InputError(f"{slice_name}: slice name does not end in _slice<TAG>_<index>; cannot group it into a volume")
    tag = match["tag"]
    return (f"{match['case']}_volume_{tag}" if tag else f"{match['case']}_volume"), int(match["index"])


def load_npz_volume(
    path: Path, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]:
    """Read and validate one test volume ``.npz`` (keys ``img`` or ``image``, ``label``).

    Returns:
        (image float32 D x H x W, label int64 D x H x W, spacing (D, H, W) in mm or ``None``
        when the file has no ``spacing`` entry).

    Raises:
        InputError: missing or corrupt file, missing keys, bad spacing, or any check of
            `simmpnet.data.layouts.synapse.validate_pair`.
    """
    if not path_exists(path) or not path.is_file():
        raise InputError(f"{path}: volume file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            img_key = next((k for k in IMAGE_KEYS if k in data.files), None)
            lab_key = next((k for k in LABEL_KEYS if k in data.files), None)
            if img_key is None or lab_key is None:
                missing = "img (or image)" if img_key is None else "label"
                raise InputError(f"{path}: missing key {missing!r} (keys: {', '.join(data.files) or 'none'})")
            image, label = data[img_key], data[lab_key]
            raw_spacing = data["spacing"] if "spacing" in data.files else None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: corrupt or unreadable npz file ({type(exc).__name__}: {exc})") from exc
    img, lab = validate_pair(path, image, label, 3, n_classes)
    spacing = None
    if raw_spacing is not None:
        sp = np.asarray(raw_spacing, dtype=np.float64).reshape(-1) if raw_spacing.dtype.kind in "biuf" else None
        if sp is None or sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
            raise InputError(f"{path}: spacing entry must be 3 positive numbers (D, H, W)")
        spacing = (float(sp[0]), float(sp[1]), float(sp[2]))
    return img, lab, spacing


class AcdcSliceDataset(Dataset):
    """2-D slices of one split. Items: ``dict(image=float32 tensor 1 x H x W, label=int64
    tensor H x W, name=<file stem>)``.

    Args:
        entries: (name, path) per slice, in order.
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.
    """

    def __init__(self, entries: list[tuple[str, Path]], n_classes: int | None = None) -> None:
        self.entries = entries
        self.n_classes = n_classes

    @property
    def names(self) -> list[str]:
        """Slice names in order."""
        return [name for name, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, path = self.entries[index]
        image, label = load_npz_slice(path, self.n_classes)
        return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label), "name": name}


class AcdcVolumeDataset(Dataset):
    """Whole volumes for evaluation. Items: ``dict(image=float32 ndarray D x H x W,
    label=int64 ndarray D x H x W, name=str, spacing=(D, H, W) or None)``.

    A volume is either one ``.npz`` file (``test``) or the slices of one case stacked in index
    order (``train``/``valid``).

    Args:
        volumes: (name, files) per volume: one volume file, or the slice files in order.
        stacked: whether ``files`` are slices to stack.
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.
    """

    def __init__(self, volumes: list[tuple[str, list[Path]]], stacked: bool, n_classes: int | None = None) -> None:
        self.volumes = volumes
        self.stacked = stacked
        self.n_classes = n_classes

    @property
    def names(self) -> list[str]:
        """Volume names in order."""
        return [name for name, _ in self.volumes]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, files = self.volumes[index]
        if not self.stacked:
            image, label, spacing = load_npz_volume(files[0], self.n_classes)
            return {"image": image, "label": label, "name": name, "spacing": spacing}
        pairs = [load_npz_slice(path, self.n_classes) for path in files]
        shapes = {p[0].shape for p in pairs}
        if len(shapes) > 1:
            raise InputError(f"{files[0]}: the slices of volume {name!r} differ in size {sorted(shapes)}")
        image = np.stack([p[0] for p in pairs])
        label = np.stack([p[1] for p in pairs])
        return {"image": image, "label": label, "name": name, "spacing": None}


@register_layout
class AcdcLayout(Layout):
    """The MT-UNet / CASCADE preprocessed ACDC folder (see the module docstring).

    Args:
        root: the folder holding ``train/``, ``valid/``, ``test/`` and the list folder.
        n_classes: classes including background (ACDC: 4); labels outside are errors.
        list_dir: explicit folder of the list files (default: searched, see ``LIST_DIRS``).
    """

    name = "acdc"
    splits = SLICE_SPLITS + VOLUME_SPLITS

    def _list_file(self, split: str) -> Path | None:
        explicit = self.options.get("list_dir")
        candidates = [Path(explicit)] if explicit else [self.root / d for d in LIST_DIRS]
        for folder in candidates:
            if (folder / f"{split}.txt").is_file():
                return folder / f"{split}.txt"
        return None

    def entries(self, split: str) -> list[tuple[str, Path]]:
        """(name without ``.npz``, path) of every file of ``split``, in list order.

        Raises:
            InputError: unknown split, a list entry outside the folder, or neither a list
                file nor a folder with ``.npz`` files.
        """
        if split not in self.splits:
            raise InputError(f"acdc layout: unknown split {split!r}; choose one of {', '.join(self.splits)}")
        folder = self.root / split
        list_file = self._list_file(split)
        if list_file is not None:
            return read_list_file(list_file, folder, ".npz")
        if not folder.is_dir():
            raise InputError(f"{folder}: folder not found (and no list file {split}.txt in {', '.join(LIST_DIRS)})")
        files = sorted(p for p in folder.glob("*.npz") if not p.name.startswith("."))
        if not files:
            raise InputError(f"{folder}: no .npz files")
        return [(p.name[: -len(".npz")], p) for p in files]

    def volumes(self, split: str) -> list[tuple[str, list[Path]]]:
        """(volume name, files) of ``split``: test files as they are, slices grouped by name."""
        entries = self.entries(split)
        if split in VOLUME_SPLITS:
            return [(name, [path]) for name, path in entries]
        groups: dict[str, list[tuple[int, Path]]] = {}
        for name, path in entries:
            try:
                volume, index = volume_name(name)
            except InputError as err:
                raise InputError(f"{path}: {str(err).split(': ', 1)[1]}") from err
            groups.setdefault(volume, []).append((index, path))
        result = []
        for volume, members in groups.items():
            members.sort(key=lambda item: item[0])
            indices = [i for i, _ in members]
            if indices != list(range(indices[0], indices[0] + len(indices))):
                logger.warning("volume %s of split %s: slice indices %s are not contiguous", volume, split, indices)
            result.append((volume, [p for _, p in members]))
        return result

    def slices(self, split: str) -> Dataset:
        if split in VOLUME_SPLITS:
            raise InputError(f"acdc layout: split {split!r} holds whole volumes; train on 'train' (slices)")
        return AcdcSliceDataset(self.entries(split), self.n_classes)

    def cases(self, split: str) -> Dataset:
        return AcdcVolumeDataset(self.volumes(split), split not in VOLUME_SPLITS, self.n_classes)

    def verify(self) -> list[str]:
        problems: list[str] = []
        for split in self.splits:
            has_list = self._list_file(split) is not None
            if not has_list and not (self.root / split).is_dir():
                if split == "train":
                    problems.append(f"{self.root / split}: folder not found (and no list file train.txt)")
                continue
            try:
                entries = self.entries(split)
            except InputError as err:
                problems.append(str(err))
                continue
            folder = self.root / split
            if not folder.is_dir():
                problems.append(f"{folder}: folder not found ({len(entries)} file(s) listed)")
                continue
            for _, path in entries:
                try:
                    if split in VOLUME_SPLITS:
                        load_npz_volume(path, self.n_classes)
                    else:
                        load_npz_slice(path, self.n_classes)
                except InputError as err:
                    problems.append(str(err))
            if split == "valid":  # evaluated as volumes: the names must group
                for _, path in entries:
                    try:
                        volume_name(path.name[: -len(".npz")])
                    except InputError as err:
                        problems.append(f"{path}: {str(err).split(': ', 1)[1]}")
                        break
        return problems
