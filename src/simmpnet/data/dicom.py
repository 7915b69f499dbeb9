"""DICOM image series as prediction input: finding the series, checking them before any work,
and reading one series as one volume.

A series is found in a folder with SimpleITK's GDCM scanner
(``ImageSeriesReader.GetGDCMSeriesIDs`` / ``GetGDCMSeriesFileNames``), or formed from DICOM
files given one by one (grouped by SeriesInstanceUID). DICOM files are recognised by the
``DICM`` marker of DICOM Part 10 files, whatever their name; a file named ``.dcm`` without
that marker counts only where GDCM recognises a DICOM data set in it (one written without the
Part 10 header), so that a text file named ``.dcm`` is refused as not DICOM, not read as a
broken image.

Every series is checked from its file headers when it is found (`series_in_folder`,
`series_of_files`), so that a bad series stops a run before a model is loaded: one
scalar image size, pixel spacing and orientation throughout, no two slices at the same
position, evenly spaced slices (a gap means missing slices, and the volume's geometry would
be wrong), an Image Position on every image of a series of several, and no Siemens MOSAIC
image (slices tiled into one picture; see `_mosaic`). The files are sorted along the
slice normal, as GDCM sorts them, and `read_dicom_series` reads them in that order with
``ImageSeriesReader``: slice ``k`` of the volume is ``files[k]``. The volume then goes through
the same axis handling as every SimpleITK volume (`simmpnet.data.io`), so the label map written for it carries the
series' origin, spacing and direction.

Output names (`DicomSeries.name`): a folder holding one series and no other input is
named after the folder (``CT/`` -> ``CT.nii.gz``); a single DICOM file (e.g. a multi-frame
one) after the file (``scan.dcm`` -> ``scan.nii.gz``); several files of one series given
together after their folder; otherwise -- several series in a folder, or next to other
inputs -- after the SeriesInstanceUID, which is unique and safe in a file name (a
SeriesDescription is neither).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .image import LoadedImage, check_pixels, fail, file_extension, from_sitk_image, path_exists, require

__all__ = [
    "DICOM_EXTENSIONS",
    "SPACING_TOLERANCE",
    "DicomSeries",
    "is_dicom_file",
    "read_dicom_series",
    "series_in_folder",
    "series_of_files",
]

logger = logging.getLogger(__name__)

#: Suffixes taken for DICOM files even without the Part 10 marker.
DICOM_EXTENSIONS: tuple[str, ...] = (".dcm",)

#: Largest relative difference between consecutive slice gaps (and between in-plane
#: spacings) still taken as one evenly spaced grid.
SPACING_TOLERANCE: float = 0.01

#: Largest difference between the direction cosines of two slices of one series.
_DIRECTION_TOLERANCE: float = 1e-4

_SERIES_UID_TAG = "0020|000e"


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM image series, checked and sorted, to be read as one volume.

    Attributes:
        files: the series' files in slice order (ascending along the slice normal).
        series_uid: its SeriesInstanceUID.
        name: the stem of the files written for it (see the module docstring).
        folder: the folder it was found in (files given one by one: the first file's folder).
        shape: the volume's size in ITK index order (columns, rows, slices).
    """

    files: tuple[Path, ...]
    series_uid: str
    name: str
    folder: Path
    shape: tuple[int, int, int]

    def __str__(self) -> str:
        return f"{self.folder} (DICOM series {self.series_uid}, {len(self.files)} file(s))"


@dataclass(frozen=True)
class _Header:
    """What one file's header says about its place in a series."""

    path: Path
    size: tuple[int, int, int]
    spacing: tuple[float, float]
    origin: np.ndarray
    direction: np.ndarray
    components: int
    series_uid: str
    positioned: bool


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _holds_dicom_data_set(sitk: Any, path: Path) -> bool:
    """For a file without the Part 10 marker: GDCM's own test for a DICOM data set it can read
    (one written without the Part 10 header, as some older software does)."""
    try:
        with _gdcm_quiet(sitk):
            return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) == "GDCMImageIO"
    except RuntimeError:  # no ImageIO at all recognises it
        return False


#: Why a file named ``.dcm`` is not taken for DICOM.
_NOT_DICOM = "no DICM marker after the 128-byte preamble, and no DICOM data set GDCM can read"


@contextmanager
def _gdcm_quiet(sitk: Any) -> Iterator[None]:
    """Around a GDCM call: nothing on the process's stderr, GDCM's own lines logged at debug.

    ITK prints its warnings (e.g. "No Series were found") through its output window, which
    SimpleITK's global warning display switches off; the problems they stand for become
    `InputError` messages here instead. GDCM's JPEG codec prints libjpeg's messages
    with ``fprintf(stderr)``, past that window: "Unsupported JPEG data precision 12" comes
    each time GDCM tries its 8-bit decoder on a 12-bit JPEG before its 12-bit one, which then
    decodes the image. Only a redirect of file descriptor 2 for the call keeps such lines off
    the terminal; a real failure still comes back as a ``RuntimeError``.
    """
    saved_display = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        sys.stderr.flush()
        saved_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all (pythonw): nothing to keep clean
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(saved_display)
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sitk.ProcessObject.SetGlobalWarningDisplay(saved_display)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    logger.debug("GDCM: %s", line.strip())


#: Private creator of the Siemens block that holds NumberOfImagesInMosaic (its element 0x0A).
_SIEMENS_MR_HEADER = "SIEMENS MR HEADER"


def _mosaic(reader: Any) -> str | None:
    """Why a Siemens image is a MOSAIC (the slices of a volume tiled into one picture), or None.

    Siemens marks a mosaic with "MOSAIC" in ImageType and gives its number of slices in the
    private NumberOfImagesInMosaic (0019,xx0A of the "SIEMENS MR HEADER" block). Read as one
    image, a mosaic would be predicted as one picture of tiles, in a wrong geometry.
    """
    image_type = reader.GetMetaData("0008|0008") if reader.HasMetaDataKey("0008|0008") else ""
    if "MOSAIC" in (value.strip().upper() for value in image_type.split("\\")):
        return f"ImageType {image_type.strip()}"
    for key in reader.GetMetaDataKeys():
        group, _, element = key.partition("|")
        if group == "0019" and element.startswith("00") and reader.GetMetaData(key).strip() == _SIEMENS_MR_HEADER:
            count_key = f"0019|{element[2:]}0a"
            count = reader.GetMetaData(count_key).strip() if reader.HasMetaDataKey(count_key) else ""
            if count.isdigit() and int(count) > 1:
                return f"NumberOfImagesInMosaic {count}"
    return None


def _read_header(sitk: Any, path: Path) -> _Header:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOn()  # for NumberOfImagesInMosaic
    try:
        with _gdcm_quiet(sitk):
            reader.ReadImageInformation()
    except RuntimeError as exc:
        # ITK's message (kept in the chained exception) names its own source file and an object
        # address, nothing a user can act on; what GDCM printed is in the debug log.
        raise fail(path, "not a readable DICOM image (corrupt, or no pixel data)") from exc
    mosaic = _mosaic(reader)
    if mosaic is not None:
        raise fail(
            path,
            f"Siemens MOSAIC image ({mosaic}): its slices are tiled into one picture; convert the series "
            "to a volume first (dcm2niix makes a NIfTI of it) and predict that",
        )
    size = tuple(int(s) for s in reader.GetSize())
    spacing = tuple(float(s) for s in reader.GetSpacing())
    uid = reader.GetMetaData(_SERIES_UID_TAG).strip("\x00 ") if reader.HasMetaDataKey(_SERIES_UID_TAG) else ""
    if not uid:
        raise fail(path, "DICOM image without a SeriesInstanceUID")
    if len(size) != 3:  # GDCM gives every DICOM image as 3-D (one slice: depth 1)
        raise fail(path, f"unexpected {len(size)}-D DICOM image (size {size})")
    return _Header(
        path=path,
        size=size,  # type: ignore[arg-type]
        spacing=(spacing[0], spacing[1]),
        origin=np.asarray(reader.GetOrigin(), dtype=np.float64),
        direction=np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3),
        components=int(reader.GetNumberOfComponents()),
        series_uid=uid,
        positioned=reader.HasMetaDataKey("0020|0032"),
    )


def _checked(headers: Sequence[_Header], folder: Path, name: str) -> DicomSeries:
    """The series of ``headers`` (one SeriesInstanceUID), sorted along the slice normal, or an
    `InputError` naming the folder and the file that does not fit."""
    first = headers[0]
    where = f"{folder}: DICOM series {first.series_uid}"
    for h in headers:
        if h.components != 1:
            raise InputError(
                f"{where}: {h.path.name} has {h.components} samples per pixel; only scalar (grey) images are supported"
            )
        if h.size[:2] != first.size[:2]:
            raise InputError(
                f"{where} mixes image sizes: {first.path.name} is {first.size[0]} x {first.size[1]}, "
                f"{h.path.name} is {h.size[0]} x {h.size[1]} (columns x rows)"
            )
        if not np.allclose(h.spacing, first.spacing, rtol=SPACING_TOLERANCE, atol=0.0):
            raise InputError(
                f"{where} mixes pixel spacings: {first.path.name} {first.spacing}, {h.path.name} {h.spacing} mm"
            )
        if not np.allclose(h.direction, first.direction, atol=_DIRECTION_TOLERANCE):
            raise InputError(f"{where} mixes image orientations: {first.path.name} and {h.path.name}")
    if len(headers) > 1:
        frames = next((h for h in headers if h.size[2] > 1), None)
        if frames is not None:
            raise InputError(
                f"{where}: multi-frame file {frames.path.name} among {len(headers)} files; give it on its own"
            )
        unplaced = next((h for h in headers if not h.positioned), None)
        if unplaced is not None:
            raise InputError(
                f"{where}: {unplaced.path.name} has no Image Position (Patient), so its {len(headers)} images "
                "cannot be stacked into a volume; give them one by one"
            )
    normal = first.direction[:, 2]
    ordered = sorted(headers, key=lambda h: float(h.origin @ normal))
    positions = np.array([float(h.origin @ normal) for h in ordered])
    gaps = np.diff(positions)
    if gaps.size:
        step = float(np.median(gaps))
        if step <= 0 or gaps.min() <= SPACING_TOLERANCE * step:
            k = int(np.argmin(gaps))
            raise InputError(
                f"{where}: {ordered[k].path.name} and {ordered[k + 1].path.name} lie at the same position "
                "(two acquisitions or duplicated files in one series?)"
            )
        off = np.abs(gaps - step) > SPACING_TOLERANCE * step
        if off.any():
            k = int(np.argmax(off))
            raise InputError(
                f"{where}: slices are not evenly spaced ({gaps[k]:.4g} mm between {ordered[k].path.name} and "
                f"{ordered[k + 1].path.name}, {step:.4g} mm elsewhere); missing slices?"
            )
    return DicomSeries(
        files=tuple(h.path for h in ordered),
        series_uid=first.series_uid,
        name=name,
        folder=folder,
        shape=(first.size[0], first.size[1], first.size[2] if len(ordered) == 1 else len(ordered)),
    )


def _stem(path: Path) -> str:
    ext = file_extension(path)
    return path.name[: len(path.name) - len(ext)] if ext in DICOM_EXTENSIONS else path.name


def series_in_folder(folder: Path, entries: Sequence[Path], alone: bool) -> list[DicomSeries]:
    """The DICOM series in ``folder``, checked and sorted (GDCM's scan of the folder).

    Args:
        folder: the folder.
        entries: its non-hidden regular files that are not in another supported format; the
            scan runs only when one of them is a DICOM file (GDCM skips hidden files too).
        alone: True when the folder holds no other input, so that a single series there is
            named after the folder.

    Returns:
        The series, sorted by name; empty when no entry is a DICOM file.

    Raises:
        InputError: DICOM files without any readable image series, files named ``.dcm`` that
            are not DICOM and nothing else to predict in the folder, or a series that fails
            the checks of the module docstring. DICOM files outside every image series (a
            DICOMDIR, a report), and files named ``.dcm`` that are not DICOM next to other
            inputs, are skipped with a logged warning.
    """
    candidates, unmarked = [], []
    for p in entries:
        if is_dicom_file(p):
            candidates.append(p)
        elif file_extension(p) in DICOM_EXTENSIONS:
            unmarked.append(p)
    if not candidates and not unmarked:
        return []
    sitk = require("SimpleITK", folder)
    impostors = []
    for p in unmarked:
        (candidates if _holds_dicom_data_set(sitk, p) else impostors).append(p)
    if impostors:
        shown = ", ".join(sorted(p.name for p in impostors))
        what = f"{len(impostors)} file(s) named .dcm that are not DICOM files ({shown}: {_NOT_DICOM})"
        if alone and not candidates:
            raise InputError(f"{folder}: holds {what}, and nothing else to predict")
        logger.warning("%s: %s skipped", folder, what)
    if not candidates:
        return []
    try:
        with _gdcm_quiet(sitk):
            groups = [
                [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
                for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            ]
    except RuntimeError as exc:
        raise fail(folder, "cannot scan the folder for DICOM series") from exc
    groups = [g for g in groups if g]
    if not groups:
        shown = ", ".join(p.name for p in sorted(candidates)[:3]) + (", ..." if len(candidates) > 3 else "")
        raise InputError(
            f"{folder}: holds {len(candidates)} DICOM file(s) ({shown}) but no readable DICOM image series"
        )
    in_series = {p.name for g in groups for p in g}
    skipped = sorted(p.name for p in candidates if p.name not in in_series)
    if skipped:
        logger.warning(
            "%s: %d DICOM file(s) outside every image series skipped: %s", folder, len(skipped), ", ".join(skipped)
        )
    single = alone and len(groups) == 1 and bool(folder.resolve().name)
    found = []
    for files in groups:
        headers = [_read_header(sitk, p) for p in files]
        uid = headers[0].series_uid
        found.append(_checked(headers, folder, folder.resolve().name if single else uid))
    return sorted(found, key=lambda s: s.name)


def series_of_files(paths: Sequence[Path]) -> list[DicomSeries]:
    """DICOM files given one by one, grouped by SeriesInstanceUID into checked, sorted series.

    Args:
        paths: DICOM files (Part 10 marker or ``.dcm`` suffix).

    Returns:
        One series per SeriesInstanceUID, sorted by name.

    Raises:
        InputError: a path that is missing, not a file or not a DICOM image, or a series that
            fails the checks of the module docstring.
    """
    for path in paths:
        if not path_exists(path):
            raise InputError(f"{path}: input not found")
        if not path.is_file():
            raise InputError(f"{path}: several inputs must all be DICOM files; this is not a file")
    sitk = require("SimpleITK", paths[0])
    for path in paths:
        if is_dicom_file(path):
            continue
        if file_extension(path) not in DICOM_EXTENSIONS:
            raise InputError(f"{path}: several inputs must all be DICOM files of a series; this is not a DICOM file")
        if not _holds_dicom_data_set(sitk, path):
            raise InputError(f"{path}: named {file_extension(path)} but not a DICOM file ({_NOT_DICOM})")
    by_uid: dict[str, list[_Header]] = defaultdict(list)
    for path in dict.fromkeys(paths):  # a file named twice is one slice
        header = _read_header(sitk, path)
        by_uid[header.series_uid].append(header)
    found = []
    for uid, headers in by_uid.items():
        folders = {h.path.parent for h in headers}
        if len(by_uid) > 1:
            name = uid
        elif len(headers) == 1:
            name = _stem(headers[0].path)
        else:
            name = folders.pop().resolve().name if len(folders) == 1 else uid
        found.append(_checked(headers, headers[0].path.parent, name or uid))
    return sorted(found, key=lambda s: s.name)


def read_dicom_series(series: DicomSeries, orientation: str, max_pixels: int) -> LoadedImage:
    """Read a checked series as one volume (see `simmpnet.data.io.read_image`).

    Returns:
        A `LoadedImage` of kind ``"dicom"`` whose ``path`` is ``series.folder`` and
        ``series`` the series; intensities as GDCM gives them (RescaleSlope/Intercept applied,
        so CT is in HU).

    Raises:
        InputError: more voxels than ``max_pixels``, or pixel data that cannot be decoded.
    """
    sitk = require("SimpleITK", series.folder)
    check_pixels(series.folder, series.shape, max_pixels)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(p) for p in series.files])
    # The slice gaps were checked against the same tolerance; ITK would otherwise print its
    # own warning about them to stderr.
    reader.SetSpacingWarningRelThreshold(SPACING_TOLERANCE)
    try:
        with _gdcm_quiet(sitk):
            img = reader.Execute()
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as exc:
        raise fail(series.folder, f"DICOM series {series.series_uid}: pixel data cannot be decoded") from exc
    loaded = from_sitk_image(series.folder, img, arr, orientation, kind="dicom", file_format="dcm")
    return replace(loaded, series=series)
