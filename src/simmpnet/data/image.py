"""What every reader and writer of images shares: `LoadedImage` (an array in the
network's axis order plus the geometry to write labels back), the orientation transform of
volumes, the conversion of a SimpleITK image, and the checks and one-line errors that name the
file.  `simmpnet.data.io` (files) and `simmpnet.data.dicom` (series) both build on it.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simmpnet.errors import InputError, one_line

__all__ = [
    "LoadedImage", "apply_forward", "apply_inverse", "as_label_array", "check_pixels", "fail", "file_extension",
    "finite_float32", "from_sitk_image", "orientation_transform", "path_exists", "require",
]


#: LPS (ITK world) <-> RAS (NIfTI world).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# the loaded image
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class LoadedImage:
    """One input read by `read_image`.

    Attributes:
        array: float32 image. 2-D images: ``H x W`` (grayscale) or ``H x W x 3`` (colour);
            volumes: ``D x H x W`` with axial slices along the first axis (see the module
            docstring for the axis convention); 2-D npz/h5 arrays: ``H x W``.
        kind: ``"image2d"``, ``"nifti"``, ``"npz"``, ``"h5"``, ``"sitk"`` or ``"dicom"``.
        path: the file read (DICOM: the folder of the series).
        spacing: spacing in mm per axis of ``array`` without the channel axis (``(D, H, W)``
            or ``(H, W)``), or ``None`` when the file does not say (2-D pictures, npz/h5
            without a ``spacing`` entry).
        channel_axis: ``-1`` when ``array`` has a trailing colour axis, else ``None``.
        file_format: the concrete format: Pillow's format name (``"PNG"``, ``"JPEG"`` ...)
            or the file extension without the dot (``"nii.gz"``, ``"npz"``, ``"mha"`` ...).
        key: the npz key / h5 dataset the image was read from.
        orientation: ``"native"`` or ``"ras"`` (volumes); ``"native"`` otherwise.
        perm: volumes: file axes taken for the axes of ``array`` (before flipping).
        flips: volumes: which axes of ``array`` are flipped after the permutation.
        file_shape: volumes: the data shape written back (NIfTI: the stored shape without
            trailing singleton axes after the third; ``(X, Y)`` for a 2-D NIfTI).
        affine: NIfTI: the image's 4 x 4 affine (nibabel's best affine).
        header: NIfTI: a copy of the nibabel header.
        origin, direction, file_spacing: SimpleITK and DICOM: the image's origin, direction
            (row-major, ITK/LPS convention) and spacing, in ITK index order.
        series: DICOM: the series read (its files in slice order, SeriesInstanceUID, name).
    """

    array: np.ndarray
    kind: str
    path: Path
    spacing: tuple[float, ...] | None = None
    channel_axis: int | None = None
    file_format: str = ""
    key: str | None = None
    orientation: str = "native"
    perm: tuple[int, ...] | None = None
    flips: tuple[bool, ...] | None = None
    file_shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    header: Any = None
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    file_spacing: tuple[float, ...] | None = None
    series: Any = None  # the simmpnet.data.dicom.DicomSeries a series was read from

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape a label map for this image must have: ``array.shape`` without the channel axis."""
        if self.channel_axis is None:
            return tuple(self.array.shape)
        return tuple(self.array.shape[:-1])

    @property
    def is_volume(self) -> bool:
        """True for 3-D (``D x H x W``) images."""
        return len(self.label_shape) == 3


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def file_extension(path: str | os.PathLike[str]) -> str:
    """Lower-case extension of ``path``, with ``.nii.gz`` as one extension (``""`` if none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def fail(path: Path, problem: str, exc: BaseException | None = None) -> InputError:
    detail = f" ({type(exc).__name__}: {one_line(exc)})" if exc is not None else ""
    return InputError(one_line(f"{path}: {problem}{detail}"))


def path_exists(path: Path) -> bool:
    """``path.exists()``, except that a path which cannot be examined at all (a folder on the
    way without permission) raises an `InputError` naming it instead of an OSError."""
    try:
        return path.exists()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def check_pixels(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse empty and oversized arrays from their declared shape, before decoding."""
    if any(int(s) < 0 for s in shape):
        raise fail(path, f"declares a negative size {tuple(shape)}")
    n = 1
    for s in shape:
        n *= int(s)
    if n == 0:
        raise fail(path, f"image is empty (shape {tuple(int(s) for s in shape)})")
    if n > max_pixels:
        unit = "voxels" if len(shape) == 3 else "pixels"
        raise fail(
            path,
            f"declares {n} {unit} (shape {tuple(int(s) for s in shape)}), more than the limit "
            f"of {max_pixels}; refused before decoding",
        )


def finite_float32(path: str | os.PathLike[str], arr: np.ndarray) -> np.ndarray:
    """Numeric-dtype check, conversion to float32 and NaN/Inf check."""
    if arr.dtype.kind not in "biuf":
        raise fail(path, f"image data must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        raise fail(path, f"image is empty (shape {arr.shape})")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise fail(path, f"image holds {bad} NaN or infinite value(s) (or values beyond float32)")
    return out


def require(module: str, path: Path) -> Any:
    """Import an optional dependency or explain which one is missing."""
    try:
        if module == "PIL":
            from PIL import Image

            return Image
        if module == "nibabel":
            import nibabel

            return nibabel
        if module == "h5py":
            import h5py

            return h5py
        if module == "SimpleITK":
            import SimpleITK

            return SimpleITK
    except ImportError as exc:
        pip_name = {"PIL": "pillow"}.get(module, module)
        raise fail(path, f"reading/writing this format needs {module} (pip install {pip_name})") from exc
    raise AssertionError(module)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# orientation
# --------------------------------------------------------------------------------------------
def _closest_axes(rot_ras: np.ndarray) -> tuple[list[int], list[int]]:
    """For each voxel axis ``v`` (column of ``rot_ras``), the RAS world axis it is closest to
    and the sign, as a one-to-one assignment (like ``nibabel.io_orientation``)."""
    norms = np.linalg.norm(rot_ras, axis=0)
    if not np.all(np.isfinite(rot_ras)) or np.any(norms <= 0):
        raise ValueError("degenerate voxel-to-world matrix")
    m = np.abs(rot_ras / norms)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(m[p[v], v] for v in range(3)))
    world = list(best)
    signs = [1 if rot_ras[best[v], v] >= 0 else -1 for v in range(3)]
    return world, signs


def orientation_transform(
    path: Path, orientation: str, rot_ras: np.ndarray
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """``(perm, flips)`` with ``array = flip(transpose(data_ijk, perm), flips)``.

    Args:
        orientation: ``"native"`` or ``"ras"`` (see the module docstring).
        rot_ras: 3 x 3 voxel-to-RAS-world matrix (columns = file voxel axes i, j, k).
    """
    if orientation == "native":
        return (2, 1, 0), (False, False, False)
    try:
        world, signs = _closest_axes(rot_ras)
    except ValueError as exc:
        raise fail(path, "cannot reorient to RAS: degenerate affine/direction", exc) from exc
    # RAS canonical axis r comes from voxel axis v with world[v] == r (flipped if sign < 0);
    # then D x H x W = (S, A reversed, R) = canonical axes (2, 1, 0) with axis 1 flipped.
    voxel_of_world = {w: v for v, w in enumerate(world)}
    perm = tuple(voxel_of_world[r] for r in (2, 1, 0))
    flips = tuple((signs[perm[a]] < 0) != (a == 1) for a in range(3))
    return perm, flips  # type: ignore[return-value]


def apply_forward(data_ijk: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    out = np.transpose(data_ijk, perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(out)


def apply_inverse(array: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    out = array
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=axis)
    return np.ascontiguousarray(np.transpose(out, np.argsort(perm)))


def from_sitk_image(
    path: Path, img: Any, arr: np.ndarray, orientation: str, *, kind: str, file_format: str
) -> LoadedImage:
    """A `LoadedImage` of an image SimpleITK read (``arr`` its ``GetArrayFromImage``):
    origin, spacing and direction kept for writing back, a volume put into ``D x H x W`` by
    the orientation transform."""
    size = tuple(int(s) for s in img.GetSize())
    origin = tuple(float(v) for v in img.GetOrigin())
    spacing_ijk = tuple(float(v) for v in img.GetSpacing())
    direction = tuple(float(v) for v in img.GetDirection())
    data = finite_float32(path, arr)
    common = dict(
        kind=kind,
        path=path,
        file_format=file_format,
        origin=origin,
        direction=direction,
        file_spacing=spacing_ijk,
    )
    if data.ndim == 2:
        return LoadedImage(array=data, spacing=spacing_ijk[::-1], **common)  # type: ignore[arg-type]
    rot_lps = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing_ijk)
    perm, flips = orientation_transform(path, orientation, _LPS_TO_RAS @ rot_lps)
    data_ijk = np.transpose(data, (2, 1, 0))
    return LoadedImage(
        array=apply_forward(data_ijk, perm, flips),
        spacing=tuple(spacing_ijk[p] for p in perm),
        orientation=orientation,
        perm=perm,
        flips=flips,
        file_shape=size,
        **common,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def as_label_array(labels: Any, reference: LoadedImage, out_path: Path) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise fail(out_path, "labels cannot be converted to an array", exc) from exc
    if arr.dtype.kind not in "biuf":
        raise fail(out_path, f"labels must be an integer array, got dtype {arr.dtype}")
    if tuple(arr.shape) != reference.label_shape:
        raise fail(
            out_path,
            f"label map shape {tuple(arr.shape)} does not match {reference.path.name} "
            f"(expected {reference.label_shape})",
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or np.any(arr != np.round(arr))):
        raise fail(out_path, "labels must be whole numbers (class ids)")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise fail(out_path, f"labels must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
    return np.ascontiguousarray(arr.astype(np.uint8))
