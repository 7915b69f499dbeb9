"""Data: the embedded brain-lobes demo, Synapse-layout readers, slice transforms.

Heavy optional dependencies (nibabel, h5py, scipy) are imported only where used.
"""
from __future__ import annotations

from simmpnet.data.brain_demo import (
    CLASS_NAMES as BRAIN_DEMO_CLASS_NAMES,
    fetch_mricron_templates,
    prepare_brain_demo,
)
from simmpnet.data.layouts.synapse import SynapseSliceDataset, SynapseVolumeDataset
from simmpnet.data.transforms import RandomAugment, Resize, resize_slice

__all__ = [
    "BRAIN_DEMO_CLASS_NAMES",
    "RandomAugment",
    "Resize",
    "SynapseSliceDataset",
    "SynapseVolumeDataset",
    "fetch_mricron_templates",
    "prepare_brain_demo",
    "resize_slice",
]
