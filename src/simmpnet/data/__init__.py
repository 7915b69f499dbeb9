"""Data: the embedded brain-lobes demo, Synapse-layout readers, slice transforms.

Heavy optional dependencies (nibabel, h5py, scipy) are imported only where used.
"""
from __future__ import annotations

from .._lazy import lazy_attributes

_SOURCES = {
    "BRAIN_DEMO_CLASS_NAMES": "simmpnet.data.brain_demo:CLASS_NAMES",
    "fetch_mricron_templates": "simmpnet.data.brain_demo",
    "prepare_brain_demo": "simmpnet.data.brain_demo",
    "SynapseSliceDataset": "simmpnet.data.layouts.synapse",
    "SynapseVolumeDataset": "simmpnet.data.layouts.synapse",
    "RandomAugment": "simmpnet.data.transforms",
    "Resize": "simmpnet.data.transforms",
    "resize_slice": "simmpnet.data.transforms",
}
__all__ = sorted(_SOURCES)
__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES)
