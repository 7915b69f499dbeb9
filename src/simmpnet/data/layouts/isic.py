"""ISIC 2018 Task 1 (skin lesion segmentation) as the challenge distributes it: layout "isic2018".

Under the root folder (or one folder below it, as the archives unpack)::

    ISIC2018_Task1-2_Training_Input/ISIC_<7 digits>.jpg                  2,594 pictures
    ISIC2018_Task1_Training_GroundTruth/ISIC_<7 digits>_segmentation.png  masks
    ISIC2018_Task1-2_Validation_Input/, ISIC2018_Task1_Validation_GroundTruth/   optional (100)
    ISIC2018_Task1-2_Test_Input/, ISIC2018_Task1_Test_GroundTruth/               optional (1,000)

Masks are 8-bit single-channel PNGs with 0 = background and 255 = lesion, read as classes 0
and 1; any other value is an error naming the file. Pictures are RGB JPEGs (the model takes
``in_channels: 3``; a grey picture is repeated to 3 channels). Other files in these folders
(``LICENSE.txt``, ``ATTRIBUTION.txt``) are ignored. An input folder of the validation or
test phase without its ground-truth folder is unlabelled and skipped.

Splits: ``train`` / ``val`` / ``test`` divide the *training* pictures 80/10/10 with the seeded
rule of `simmpnet.data.layouts.folder2d` (seed option, default 2222) unless a split file
(``splits.json`` in the root, or the ``split_file`` option) says otherwise -- the practice of
the papers Sim-MPNet compares with, which all split the 2,594 training pictures. The
challenge's own sets are the splits ``official_train``, ``official_val`` and ``official_test``
(when present with ground truth); ``all`` holds every labelled picture.

Large pictures (up to 6,688 x 4,439) are slow to decode at every step: convert them once with
`simmpnet.data.prepare.isic.prepare` (256 x 256 PNGs in the folder2d layout).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from simmpnet.errors import InputError

from .registry import register_layout
from .folder2d import Pair, PictureLayout, Scan, _fmt_values, _lossy_hint, _stem, list_pictures, present_values

__all__ = ["CLASS_NAMES", "ISIC2018Layout", "MASK_SUFFIX", "PHASES"]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("background", "lesion")
#: mask name = image id + this suffix (+ ".png")
MASK_SUFFIX = "_segmentation"
#: (split name, input folder, ground-truth folder) of each challenge phase
PHASES: tuple[tuple[str, str, str], ...] = (
    ("official_train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    ("official_val", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    ("official_test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
)


def _find_folder(root: Path, name: str) -> Path | None:
    """``root/name``, else ``root/<one folder>/name`` (archives often unpack into a folder)."""
    direct = root / name
    if direct.is_dir():
        return direct
    try:
        parents = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    except OSError:
        return None
    for parent in parents:
        if (parent / name).is_dir():
            return parent / name
    return None


@register_layout
class ISIC2018Layout(PictureLayout):
    """ISIC 2018 Task 1 as distributed (see the module docstring).

    Args:
        root: folder holding the challenge folders.
        n_classes: None or 2.
        seed, split_file, fractions: the split options of
            `simmpnet.data.layouts.folder2d.PictureLayout`.
    """

    name = "isic2018"
    splits = ("train", "val", "test", "all", "official_train", "official_val", "official_test")
    class_names = CLASS_NAMES

    def _find(self) -> Scan:
        scan = Scan()
        for group, input_name, truth_name in PHASES:
            inputs = _find_folder(self.root, input_name)
            truth = _find_folder(self.root, truth_name)
            if inputs is None:
                if truth is not None:
                    scan.problems.append(f"{truth}: ground truth without its pictures ({input_name}/ not found)")
                elif group == "official_train":
                    scan.problems.append(f"{self.root}: folder {input_name}/ not found (the ISIC 2018 training pictures)")
                continue
            if truth is None:
                if group == "official_train":
                    scan.problems.append(f"{self.root}: folder {truth_name}/ not found (the masks of {input_name}/)")
                else:
                    logger.info("%s: no %s/ next to it; its pictures are unlabelled and skipped", inputs, truth_name)
                continue
            images: dict[str, Path] = {}
            for path in list_pictures(inputs):
                stem = _stem(path)
                if stem in images:
                    scan.problems.append(f"{path}: a second picture for id {stem!r} (also {images[stem].name})")
                else:
                    images[stem] = path
            masks: dict[str, Path] = {}
            for path in list_pictures(truth):
                stem = _stem(path)
                if not stem.endswith(MASK_SUFFIX) or stem == MASK_SUFFIX:
                    scan.problems.append(f"{path}: mask name does not follow <image id>{MASK_SUFFIX}.png")
                    continue
                image_id = stem[: -len(MASK_SUFFIX)]
                if image_id in masks:
                    scan.problems.append(f"{path}: a second mask for {image_id!r} (also {masks[image_id].name})")
                elif image_id not in images:
                    scan.problems.append(f"{path}: mask without a picture (no {image_id}.jpg in {inputs})")
                else:
                    masks[image_id] = path
            ids: list[str] = []
            for image_id, path in images.items():
                if image_id not in masks:
                    scan.problems.append(f"{path}: picture without a mask (no {image_id}{MASK_SUFFIX}.png in {truth})")
                elif image_id in scan.pairs:
                    scan.problems.append(f"{path}: id {image_id!r} also in {scan.pairs[image_id].image.parent.name}/")
                else:
                    scan.pairs[image_id] = Pair(image_id, path, (masks[image_id],), group)
                    ids.append(image_id)
            scan.groups[group] = sorted(ids)
        scan.pool = list(scan.groups.get("official_train", []))
        return scan

    def mask_classes(self, path: Path, mask: np.ndarray) -> np.ndarray:
        """0 -> 0 (background), 255 -> 1 (lesion); any other value is an error."""
        values = present_values(mask)
        bad = values[(values != 0) & (values != 255)]
        if bad.size:
            raise InputError(
                f"{path}: mask value(s) {_fmt_values(bad)} are not 0 (background) or 255 (lesion)"
                f"{_lossy_hint(path)}"
            )
        return (mask == 255).astype(np.uint8)
