"""DICOM Segmentation (DICOM-SEG) output for a prediction on a DICOM series, through highdicom.

The SEG object references the source series image by image (frame ``k`` of the label map
lies on ``series.files[k]``), so a PACS or viewer (OHIF, 3D Slicer) shows it on the series it
was predicted from. It holds one segment per class present in the label map, binary
segmentation type, empty frames left out. DICOM numbers the segments 1..k with no gap, so a
segment's number is its rank among the classes present, not the class id: its SegmentLabel
is the model's class name and its SegmentDescription ``class <id>: <name>`` (see
`segment_classes` for the way back). The segments are coded generically (category
"Anatomical Structure", type "Tissue", SNOMED CT): a model's class names carry no coded
meaning.

A label map without any foreground gets no SEG: a SEG must hold at least one segment and one
frame, and an empty one would only tell a PACS user that there is something to look at.
`write_dicom_seg` refuses it; ``simmpnet predict`` skips it with a warning.

A source image without a plane position (a Secondary Capture, a radiograph: no Image
Position/Orientation (Patient)) gets a SEG highdicom builds without plane positions, each
frame placed by its reference to the source image; see `_place_without_position`.

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

__all__ = ["SEG_SERIES_NUMBER", "default_seg_path", "require_highdicom", "segment_classes", "write_dicom_seg"]

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


def segment_classes(seg: Any) -> dict[int, int]:
    """The class id of each segment of a DICOM-SEG written by `write_dicom_seg`:
    ``{segment number: class id}``, read from the SegmentDescription ``class <id>: <name>``.

    ``seg`` is a pydicom dataset or a ``highdicom.seg.Segmentation`` (``highdicom.seg.segread``).
    """
    found = {}
    for item in seg.SegmentSequence:
        head, _, _ = str(item.get("SegmentDescription", "")).partition(":")
        kind, _, number = head.partition(" ")
        if kind != "class" or not number.isdigit():
            raise InputError(
                f"segment {item.SegmentNumber} ({item.SegmentLabel}) has no 'class <id>: <name>' description"
            )
        found[int(item.SegmentNumber)] = int(number)
    return found


def write_dicom_seg(
    labels: Any,
    reference: LoadedImage,
    out_path: str | os.PathLike[str],
    class_names: Sequence[str],
    model_id: str,
) -> Path:
    """Write the label map of a DICOM series as a DICOM-SEG object referencing that series.

    Args:
        labels: class ids of shape ``reference.label_shape``, in the axis order of
            ``reference.array`` (as for `simmpnet.data.io.write_label_map`).
        reference: the `LoadedImage` of a DICOM series (``reference.series`` set).
        out_path: the ``.dcm`` file to write (atomically).
        class_names: the model's class names, background first; each class ``c`` present in
            ``labels`` becomes a segment labelled ``class_names[c]`` and described
            ``class <c>: <name>``, numbered by rank among the classes present.
        model_id: what identifies the trained model (the SHA-256 of its weights file,
            `simmpnet.data.io.sha256_file`): it goes into the algorithm's version and
            parameters, the series description and the device serial number, so that the SEG
            names the exact weights that made it. The SEG's equipment module is mandatory
            (DeviceSerialNumber type 1): there is no honest value without it.

    Returns:
        ``out_path`` as a `Path`.

    Raises:
        SimMPNetError: highdicom is not installed.
        InputError: a reference that is not a DICOM series, an output name not ending in
            ``.dcm``, labels that do not fit the reference, have no class name or no
            foreground at all, source files pydicom cannot read, or a series highdicom refuses
            as a source (missing patient/study attributes); the message names the file.
    """
    out_path = Path(out_path)
    series = reference.series
    if series is None or reference.perm is None or reference.flips is None:
        raise InputError(f"{reference.path}: DICOM-SEG output needs a DICOM series as input")
    if file_extension(out_path) != ".dcm":
        raise fail(out_path, "a DICOM-SEG file is written with the extension .dcm")
    if not model_id:
        raise ValueError("model_id must name the model (e.g. the SHA-256 of its weights)")
    hd = require_highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise fail(out_path, f"need the background and at least one class name, got {names}")
    arr = as_label_array(labels, reference, out_path)
    if arr.size and int(arr.max()) >= len(names):
        raise fail(out_path, f"label {int(arr.max())} has no class name ({len(names)} names: {', '.join(names)})")
    present = [int(c) for c in np.flatnonzero(np.bincount(arr.ravel(), minlength=len(names))[1:]) + 1]
    if not present:
        raise fail(out_path, f"no foreground in the label map of {series}: a DICOM-SEG needs at least one segment")
    # segment numbers 1..k for the classes present, in class order
    numbers = np.zeros(len(names), np.uint8)
    numbers[present] = np.arange(1, len(present) + 1)
    # file voxel order (i, j, k), then one (rows x columns) frame per source image k
    frames = numbers[np.transpose(apply_inverse(arr, reference.perm, reference.flips), (2, 1, 0))]

    sources = []
    for path in series.files:
        try:
            sources.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError ...
            raise fail(path, "cannot be read by pydicom", exc) from exc

    from .. import __version__

    short_id = model_id[:16]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="Sim-MPNet",
        version=f"{__version__} sha256:{short_id}",
        family=codes.cid7162.ArtificialIntelligence,
        parameters={"checkpoint_sha256": model_id},
    )
    segments = []
    for number, c in enumerate(present, start=1):
        segment = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names[c],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        segment.SegmentDescription = f"class {c}: {names[c]}"
        segments.append(segment)
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
            # The software is the device; what tells one of its models from another is the
            # weights, so their digest is the serial number.
            device_serial_number=short_id,
            series_description=f"Sim-MPNet segmentation {short_id}",
            content_label="SIMMPNET",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's checks of the sources
        raise InputError(
            one_line(f"{out_path}: cannot build a DICOM-SEG for {series}: {type(exc).__name__}: {exc}")
        ) from exc
    _place_without_position(seg, sources[0])
    atomic_write(out_path, lambda tmp: seg.save_as(tmp), suffix=".dcm")
    logger.info(
        "wrote DICOM-SEG %s (%d segment(s), %d frame(s), series %s)",
        out_path, len(segments), int(seg.NumberOfFrames), series.series_uid,
    )
    return out_path


def _place_without_position(seg: Any, source: Any) -> None:
    """Two attributes the SEG of an image without a plane position needs and highdicom leaves
    out (dciodvfy's errors on it otherwise).

    Such a SEG (highdicom makes one for a single source image without Image Position
    (Patient): a Secondary Capture, a radiograph) has no plane orientation, and then the
    General Image module requires PatientOrientation (type 2C): the source's own, the SEG's
    frame being the source's pixel grid, or empty (unknown) where the source has none. With
    a Frame of Reference, the Pixel Measures macro then requires a SliceThickness (type 1C),
    which such a source does not have; highdicom copies the source's PixelSpacing alone, so
    those measures are dropped: the frame lies on the source image it references, which
    carries its pixel spacing.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" in shared:
        return
    seg.PatientOrientation = source.get("PatientOrientation", "")
    measures = shared.get("PixelMeasuresSequence")
    if "FrameOfReferenceUID" in seg and measures and "SliceThickness" not in measures[0]:
        del shared.PixelMeasuresSequence
