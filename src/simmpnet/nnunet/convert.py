"""The demo brain data (`simmpnet.data.brain_demo`) in nnU-Net's raw layout.

Each slab of the demo (10 consecutive axial slices of the Colin27 T1 MRI, the AAL atlas merged
into 8 lobes) becomes one case, a NIfTI volume of ``D x 217 x 181`` voxels at 1 mm::

    nnUNet_raw/Dataset990_BrainLobesDemo/
        imagesTr/brain_slabNN_0000.nii.gz   labelsTr/brain_slabNN.nii.gz   (the demo's 12 training slabs)
        imagesTs/brain_slabNN_0000.nii.gz   labelsTs/brain_slabNN.nii.gz   (its 3 test slabs)
        dataset.json

The project's own split is kept: nnU-Net's 5 folds are drawn from the 12 training slabs, the 3
test slabs are never seen in training.  The images are the demo's ([0, 1] after clipping at
the brain's 0.5 / 99.5 percentiles); nnU-Net then z-scores them as it does any MRI.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["DEMO_DATASET_ID", "DEMO_DATASET_NAME", "convert_brain_demo", "write_case"]

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = f"Dataset{DEMO_DATASET_ID:03d}_BrainLobesDemo"


def write_case(
    folder: Path, split: str, case: str, image: np.ndarray, label: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    """One case in nnU-Net's raw layout: ``images<split>/<case>_0000.nii.gz`` and
    ``labels<split>/<case>.nii.gz``.

    Args:
        split: ``"Tr"`` or ``"Ts"``.
        image: ``(D, H, W)`` intensities; label: ``(D, H, W)`` class ids.
        spacing: ``(D, H, W)`` voxel spacing in mm.
    """
    import SimpleITK as sitk

    if image.shape != label.shape or image.ndim != 3:
        raise InputError(f"{case}: image {image.shape} and label {label.shape} must be equal (D, H, W) volumes")
    for kind, array, name in (("images", image.astype(np.float32), f"{case}_0000"), ("labels", label.astype(np.uint8), case)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK: (W, H, D)
        target = folder / f"{kind}{split}" / f"{name}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(volume, str(target), useCompression=True)


def convert_brain_demo(demo_dir: str | os.PathLike[str], raw_dir: str | os.PathLike[str]) -> Path:
    """Write the prepared demo (``prepare_brain_demo``'s folder) as ``Dataset990_BrainLobesDemo``
    under ``raw_dir`` (nnU-Net's ``nnUNet_raw``); returns the dataset folder.

    Raises:
        InputError: ``demo_dir`` is not a prepared brain demo, or a listed file is missing.
    """
    import h5py

    demo = Path(demo_dir)
    manifest_file = demo / "dataset.json"
    if not manifest_file.is_file():
        raise InputError(f"{manifest_file}: not a prepared brain demo (run simmpnet nnunet convert-demo without --demo-data)")
    manifest = json.loads(manifest_file.read_text())
    try:
        class_names = manifest["class_names"]
        spacing = tuple(float(s) for s in manifest["spacing"])
        cases = manifest["cases"]
    except KeyError as err:
        raise InputError(f"{manifest_file}: no key {err} (not a brain demo manifest)") from err
    out = Path(raw_dir) / DEMO_DATASET_NAME
    n_train = 0
    for case in cases:
        name = case["name"]
        if case["split"] == "test":
            source = demo / "test_vol_h5" / f"{name}.npy.h5"
            if not source.is_file():
                raise InputError(f"{source}: missing (listed in {manifest_file})")
            with h5py.File(source, "r") as f:
                image, label = np.asarray(f["image"]), np.asarray(f["label"])
            write_case(out, "Ts", name, image, label, spacing)
            continue
        slices = []
        for j in range(int(case["n_slices"])):
            source = demo / "train_npz" / f"{name}_slice{j:03d}.npz"
            if not source.is_file():
                raise InputError(f"{source}: missing (listed in {manifest_file})")
            with np.load(source) as data:
                slices.append((data["image"], data["label"]))
        write_case(out, "Tr", name, np.stack([s[0] for s in slices]), np.stack([s[1] for s in slices]), spacing)
        n_train += 1
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {cls: i for i, cls in enumerate(class_names)},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "name": manifest.get("name", DEMO_DATASET_NAME),
        "description": manifest.get("description", ""),
        "reference": "Colin27 T1 MRI and AAL atlas, Debian package mricron-data (BSD-3-Clause)",
        "split_rule": manifest.get("split_rule", ""),
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    logger.info("%s: %d training and %d test cases", out, n_train, len(cases) - n_train)
    return out
