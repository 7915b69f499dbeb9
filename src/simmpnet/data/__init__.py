"""Data: everything between files on disk and the network's tensors.

Image readers and label-map writers (`io`, with `image` shared by every reader), DICOM series
and DICOM-SEG (`dicom`, `dicom_seg`), DICOMweb (`dicomweb`), the dataset layouts behind one
interface (`layouts`: synapse, acdc, nnunet, folder2d, isic2018, segpc2021), converters of raw
downloads (`prepare`), the network's input from what a user holds (`network_input`), slice
transforms, and the embedded brain-lobes demo.  Heavy optional dependencies (nibabel, h5py,
scipy, pydicom, highdicom, dicomweb-client) are imported only where used.
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
