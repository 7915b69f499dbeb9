"""SegPC-2021 (multiple myeloma plasma cells) as the challenge distributes it: layout "segpc2021".

The download (``TCIA_SegPC_dataset``; the Kaggle copy nests it, e.g.
``TCIA_SegPC_dataset/TCIA_SegPC_dataset/TCIA_SegPC_dataset/train/train/train/``) holds folders
``train/``, ``validation/`` and ``test/``, each with::

    x/<image>.bmp       the microscope picture (RGB, 2040 x 1536 or 2560 x 1920)
    y/<image>_<k>.bmp   one mask per annotated cell k: 0 background, 20 cytoplasm, 40 nucleus

Every folder named ``x`` under the root (searched up to 8 levels deep, hidden folders and
``__MACOSX`` skipped) with a sibling ``y`` is used; an ``x`` without ``y`` (the test phase) is
unlabelled and skipped. The per-cell masks of a picture are merged into one label map with
0 background, 1 cytoplasm and 2 nucleus; where cells overlap the nucleus wins (the largest
class id). Mask values other than 0, 20 and 40 are errors naming the file; masks saved as
RGB with three equal channels are read as grey.

Splits: the seeded 80/10/10 ``train`` / ``val`` / ``test`` split (seed option, default 2222)
over every labelled picture (train and validation phases together), or a split file
(``splits.json`` in the root, or the ``split_file`` option); the challenge phases are the
splits ``official_<folder>`` (e.g. ``official_train``, ``official_validation``); ``all``
holds every labelled picture. Picture ids are the file names without extension and must be
unique across phases.

The full-size pictures and their many masks are slow to read at every step: convert them
once with `simmpnet.data.prepare.segpc.prepare`.

Note: some papers of this line (e.g. the Awesome-U-Net benchmark) crop one picture per
nucleus and feed the nucleus mask as a 4th input channel; this layout serves whole pictures
with both classes as targets, as in the Sim-MPNet tables (cytoplasm, nucleus).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from simmpnet.errors import InputError

from .registry import register_layout
from .folder2d import Pair, PictureLayout, Scan, _fmt_values, _stem, list_pictures, present_values

__all__ = ["CLASS_NAMES", "CYTOPLASM_VALUE", "NUCLEUS_VALUE", "SegPC2021Layout"]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("background", "cytoplasm", "nucleus")
CYTOPLASM_VALUE = 20
NUCLEUS_VALUE = 40
#: raw mask value -> class id; values not listed are errors
_LUT = np.zeros(256, dtype=np.uint8)
_LUT[CYTOPLASM_VALUE] = 1
_LUT[NUCLEUS_VALUE] = 2
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[[0, CYTOPLASM_VALUE, NUCLEUS_VALUE]] = True
_MASK_NAME = re.compile(r"^(?P<image>.+)_(?P<cell>\d+)$")
_MAX_DEPTH = 8


def _xy_folders(root: Path) -> list[tuple[Path, Path | None]]:
    """Every ``x`` folder under ``root`` with its sibling ``y`` (None when absent), sorted."""
    found: list[tuple[Path, Path | None]] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        if depth >= _MAX_DEPTH:
            dirnames[:] = []
        if "x" in dirnames:
            y = here / "y"
            found.append((here / "x", y if y.is_dir() else None))
    return found


@register_layout
class SegPC2021Layout(PictureLayout):
    """SegPC-2021 as distributed (see the module docstring).

    Args:
        root: folder holding the download (any level above the ``x/`` and ``y/`` folders).
        n_classes: None or 3.
        seed, split_file, fractions: the split options of
            `simmpnet.data.layouts.folder2d.PictureLayout`.
    """

    name = "segpc2021"
    splits = ("train", "val", "test", "all", "official_train", "official_validation")
    class_names = CLASS_NAMES

    def _find(self) -> Scan:
        scan = Scan()
        folders = _xy_folders(self.root)
        if not any(y is not None for _, y in folders):
            scan.problems.append(f"{self.root}: no x/ folder with a sibling y/ found (SegPC-2021 pictures and masks)")
            return scan
        for x_dir, y_dir in folders:
            if y_dir is None:
                logger.info("%s: no y/ next to it; its pictures are unlabelled and skipped", x_dir)
                continue
            # x/ and y/ right in the root carry no phase name: no official split for them
            group = f"official_{x_dir.parent.name}" if x_dir.parent != self.root else ""
            images: dict[str, Path] = {}
            for path in list_pictures(x_dir):
                stem = _stem(path)
                if stem in images:
                    scan.problems.append(f"{path}: a second picture for id {stem!r} (also {images[stem].name})")
                else:
                    images[stem] = path
            masks: dict[str, list[Path]] = {}
            for path in list_pictures(y_dir):
                match = _MASK_NAME.match(_stem(path))
                if match is None:
                    scan.problems.append(f"{path}: mask name does not follow <image>_<cell number>.bmp")
                elif match["image"] not in images:
                    scan.problems.append(f"{path}: mask without a picture (no {match['image']}.bmp in {x_dir})")
                else:
                    masks.setdefault(match["image"], []).append(path)
            ids: list[str] = []
            for image_id, path in images.items():
                if image_id not in masks:
                    scan.problems.append(f"{path}: picture without masks (no {image_id}_<k>.bmp in {y_dir})")
                elif image_id in scan.pairs:
                    scan.problems.append(f"{path}: id {image_id!r} also in {scan.pairs[image_id].image.parent}")
                else:
                    scan.pairs[image_id] = Pair(image_id, path, tuple(masks[image_id]), group)
                    ids.append(image_id)
            if group:
                scan.groups.setdefault(group, []).extend(ids)
        for group in scan.groups:
            scan.groups[group].sort()
        scan.pool = sorted(scan.pairs)
        return scan

    def mask_classes(self, path: Path, mask: np.ndarray) -> np.ndarray:
        """20 -> 1 (cytoplasm), 40 -> 2 (nucleus), 0 -> 0; any other value is an error."""
        values = present_values(mask)
        bad = values[~_ALLOWED[values]]
        if bad.size:
            raise InputError(
                f"{path}: mask value(s) {_fmt_values(bad)} are not 0 (background), "
                f"{CYTOPLASM_VALUE} (cytoplasm) or {NUCLEUS_VALUE} (nucleus)"
            )
        return _LUT[mask]

    def merge(self, labels: list[np.ndarray]) -> np.ndarray:
        """One label map from the cells' maps: the largest class id wins (nucleus over
        cytoplasm over background)."""
        merged = labels[0].copy()
        for label in labels[1:]:
            np.maximum(merged, label, out=merged)
        return merged
