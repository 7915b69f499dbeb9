"""DICOM Segmentation (DICOM-SEG) output for a prediction on a DICOM series, through highdicom.

The SEG object references the source series image by image (frame ``k`` of the label map
lies on ``series.files[k]``), so a PACS or viewer (OHIF, 3D Slicer) shows it on the series it
was predicted from. It holds one segment per foreground class, numbered by class id (segment
``c`` = label ``c``) and labelled with the model's class name; binary segmentation type,
empty frames left out. The segments are coded generically (category "Anatomical Structure",
type "Tissue", SNOMED CT): a model's class names carry no coded meaning.

highdicom (and pydicom, which it brings) is an optional dependency:
``pip install "simmpnet[dicom]"``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SimMPNetError, one_line
from ..files import atomic_write
from .image import LoadedImage, apply_inverse, as_label_array, fail, file_extension

__all__ = ["SEG_SERIES_NUMBER", "default_seg_path", "require_highdicom", "write_dicom_seg"]

logger = logging.getLogger(__name__)

#: SeriesNumber of the SEG series. DICOM requires one; scanners number their image series
#: from 1 up, so 1000 keeps the SEG apart from them in a viewer's list of series.
SEG_SERIES_NUMBER: int = 1000


def require_highdicom() -> Any:
    """The highdicom module, or a one-line error saying how to install it."""
    try:
        import highdicom
    except ImportError as exc:
        raise SimMPNetError('writing DICOM-SEG needs highdicom: pip install "simmpnet[dicom]"') from exc
    return highdicom


def default_seg_path(reference: LoadedImage, out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir / <series name>_seg.dcm``: next to the label map
    (`simmpnet.data.io.default_label_path`), under the same stem."""
    if reference.series is None:
        raise InputError(f"{reference.path}: DICOM-SEG output needs a DICOM series as input")
    return Path(out_dir) / f"{reference.series.name}_seg.dcm"


def write_dicom_seg(
    labels: Any,
    reference: LoadedImage,
    out_path: str | os.PathLike[str],
    class_names: Sequence[str],
    model_id: str | None = None,
) -> Path:
    """Write the label map of a DICOM series as a DICOM-SEG object referencing that series.

    Args:
        labels: class ids of shape ``reference.label_shape``, in the axis order of
            ``reference.array`` (as for `simmpnet.data.io.write_label_map`).
        reference: the `LoadedImage` of a DICOM series (``reference.series`` set).
        out_path: the ``.dcm`` file to write (atomically).
        class_names: the model's class names, background first; class ``c`` becomes segment
            ``c`` labelled ``class_names[c]``.
        model_id: what identifies the trained model (the SHA-256 of its checkpoint): it goes
            into the algorithm's version, the series description and the device serial number,
            so that the SEG names the exact weights that made it.

    Returns:
        ``out_path`` as a `Path`.

    Raises:
        SimMPNetError: highdicom is not installed.
        InputError: a reference that is not a DICOM series, an output name not ending in
            ``.dcm``, labels that do not fit the reference or have no class name, source
            files pydicom cannot read, or a series highdicom refuses as a source (missing
            patient/study attributes); the message names the file.
    """
    out_path = Path(out_path)
    series = reference.series
    if series is None or reference.perm is None or reference.flips is None:
        raise InputError(f"{reference.path}: DICOM-SEG output needs a DICOM series as input")
    if file_extension(out_path) != ".dcm":
        raise fail(out_path, "a DICOM-SEG file is written with the extension .dcm")
    hd = require_highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise fail(out_path, f"need the background and at least one class name, got {names}")
    arr = as_label_array(labels, reference, out_path)
    if arr.size and int(arr.max()) >= len(names):
        raise fail(out_path, f"label {int(arr.max())} has no class name ({len(names)} names: {', '.join(names)})")
    # file voxel order (i, j, k), then one (rows x columns) frame per source image k
    frames = np.ascontiguousarray(np.transpose(apply_inverse(arr, reference.perm, reference.flips), (2, 1, 0)))

    sources = []
    for path in series.files:
        try:
            sources.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError ...
            raise fail(path, "cannot be read by pydicom", exc) from exc

    from .. import __version__

    short_id = (model_id or "")[:16]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Sim-MPNet",
        version=f"{__version__} sha256:{short_id}" if short_id else __version__,
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"checkpoint_sha256": model_id} if model_id else None,
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names[1:], start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="simmpnet",
            manufacturer_model_name="Sim-MPNet",
            software_versions=__version__,
            # The software is the device; its "serial number" is the model's weights.
            device_serial_number=short_id or "unknown",
            series_description=f"Sim-MPNet segmentation {short_id}".strip(),
            content_label="SIMMPNET",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's checks of the sources
        raise InputError(
            one_line(f"{out_path}: cannot build a DICOM-SEG for {series}: {type(exc).__name__}: {exc}")
        ) from exc
    atomic_write(out_path, lambda tmp: seg.save_as(tmp), suffix=".dcm")
    logger.info(
        "wrote DICOM-SEG %s (%d segment(s), %d frame(s), series %s)",
        out_path, len(segments), int(seg.NumberOfFrames), series.series_uid,
    )
    return out_path
