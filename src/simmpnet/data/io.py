"""Validated reading of prediction inputs and writing of label maps in the input's geometry.

`read_image` turns one file into a `LoadedImage`: a float32 array in the axis
order the network works in, plus everything needed to write a label map back so that it
overlays the input exactly (`write_label_map`). `list_inputs` expands a file or
a folder into the files to predict.

Supported formats (``kind``):

* ``"image2d"`` -- PNG, JPEG, TIFF, BMP through Pillow. Grayscale -> ``H x W``, colour ->
  ``H x W x 3`` (an alpha channel is dropped with a logged warning; palette, CMYK and other
  colour modes are converted to RGB). Intensities: 8-bit samples are divided by 255 and
  16-bit samples by 65535, so integer images land in ``[0, 1]`` like the training slices;
  32-bit integer (``"I"``) and floating-point (``"F"``) images are returned unscaled.
  Multi-frame files (multi-page TIFF, animated PNG) are refused. The stored pixel grid is
  used as is: EXIF orientation tags are not applied, so the label PNG has the same grid.
* ``"nifti"`` -- ``.nii`` / ``.nii.gz`` through nibabel (scl_slope/scl_inter applied).
* ``"npz"`` -- array under key ``image`` (or ``img``, the ACDC variant), 2-D ``H x W`` or
  3-D ``D x H x W``; an optional ``spacing`` entry gives the spacing per axis in mm.
* ``"h5"`` -- ``.h5`` / ``.hdf5`` with dataset ``image`` (or ``img``), 2-D or 3-D as for
  npz; an optional file attribute ``spacing`` gives the spacing per axis in mm (the layout
  of the Synapse ``test_vol_h5`` files).
* ``"sitk"`` -- ``.nrrd``, ``.mha``, ``.mhd`` (+ its data file) through SimpleITK, 2-D or
  3-D scalar images.
* ``"dicom"`` -- a DICOM image series (a folder, or DICOM files given together), read as one
  volume through SimpleITK/GDCM (`simmpnet.data.dicom`); `list_inputs` returns it
  as a `DicomSeries`, which `read_image` takes like a path.
  Its label map is written as ``.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``) in the series'
  geometry.

Axis convention for volumes (NIfTI, SimpleITK formats and DICOM series). With file voxel axes
``(i, j, k)`` (nibabel's ``X x Y x Z`` data order, ITK's index order), the returned array
is ``D x H x W`` with axial slices along the first axis:

* ``orientation="native"`` (default): the file axes reversed, ``array[d, h, w] =
  data[w, h, d]``, i.e. ``np.transpose(data, (2, 1, 0))`` -- slices along the last file axis,
  as in the TransUNet / Synapse preprocessing, and exactly what SimpleITK's
  ``GetArrayFromImage`` returns. No resampling and no reorientation.
* ``orientation="ras"``: first reoriented to the closest RAS axes (like
  ``nibabel.as_closest_canonical``; flips and axis permutations only, no resampling), then
  ``D`` runs inferior -> superior, ``H`` anterior -> posterior (face up) and ``W`` from the
  subject's left to right -- the orientation of the embedded brain demo
  (`simmpnet.data.brain_demo.to_dhw`), whatever the storage order of the file.

Either way the transform is a permutation ``perm`` plus flips ``flips`` (stored on the
`LoadedImage`): ``array = flip(transpose(data, perm), flips)``. `write_label_map`
applies the exact inverse and writes with the input's affine and header (NIfTI) or origin,
spacing and direction (SimpleITK), so label voxel ``[i, j, k]`` lies on input voxel
``[i, j, k]`` in any viewer. A 2-D NIfTI (``X x Y``) is read as one slice ``1 x Y x X``.

Every problem with an input raises `simmpnet.errors.InputError` with a one-line
message naming the file. Every write is atomic (temporary file in the same folder, then
`os.replace`); on failure the temporary file is removed and an existing target is left
untouched. Pillow, nibabel, h5py and SimpleITK are imported only when a file needs them.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simmpnet.colours import label_palette
from simmpnet.errors import InputError, one_line
from simmpnet.files import atomic_write, check_output_folder, default_mode, sha256_file

from .image import (
    LoadedImage,
    apply_forward,
    apply_inverse,
    as_label_array,
    check_pixels,
    fail,
    file_extension,
    finite_float32,
    from_sitk_image,
    orientation_transform,
    path_exists,
    require,
)

if TYPE_CHECKING:
    from .dicom import DicomSeries

__all__ = [
    "IMAGE2D_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "PICTURE_FULL_SCALE",
    "SUPPORTED_EXTENSIONS",
    "LoadedImage",
    "atomic_write",
    "check_output_folder",
    "default_mode",
    "default_label_path",
    "escapes_folder",
    "file_extension",
    "list_inputs",
    "path_exists",
    "intensities",
    "picture_samples",
    "read_image",
    "sha256_file",
    "write_label_map",
]

logger = logging.getLogger(__name__)

#: Largest number of pixels/voxels accepted; checked from the file header before decoding.
MAX_PIXELS: int = 2**28
#: Smallest height and width accepted: a picture one pixel high or wide holds nothing to segment.
MIN_SIDE: int = 2

IMAGE2D_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz")
NPZ_EXTENSIONS: tuple[str, ...] = (".npz",)
H5_EXTENSIONS: tuple[str, ...] = (".h5", ".hdf5")
SITK_EXTENSIONS: tuple[str, ...] = (".nrrd", ".mha", ".mhd")

#: Every extension `read_image` accepts (lower case, ``.nii.gz`` as one extension).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    IMAGE2D_EXTENSIONS + NIFTI_EXTENSIONS + NPZ_EXTENSIONS + H5_EXTENSIONS + SITK_EXTENSIONS
)

_KIND_OF_EXTENSION: dict[str, str] = {
    **{ext: "image2d" for ext in IMAGE2D_EXTENSIONS},
    **{ext: "nifti" for ext in NIFTI_EXTENSIONS},
    **{ext: "npz" for ext in NPZ_EXTENSIONS},
    **{ext: "h5" for ext in H5_EXTENSIONS},
    **{ext: "sitk" for ext in SITK_EXTENSIONS},
}

#: Label-map extensions `write_label_map` writes for each kind of reference.
_OUTPUT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image2d": (".png",),
    "nifti": NIFTI_EXTENSIONS,
    "npz": NPZ_EXTENSIONS + H5_EXTENSIONS,
    "h5": H5_EXTENSIONS + NPZ_EXTENSIONS,
    "sitk": (".nrrd", ".mha", ".nii", ".nii.gz"),
    "dicom": (".nii.gz", ".nii", ".nrrd", ".mha"),
}

#: Keys / dataset names holding the image in npz and h5 files, in order of preference.
_IMAGE_KEYS: tuple[str, ...] = ("image", "img")

_ORIENTATIONS: tuple[str, ...] = ("native", "ras")

#: nibabel spatial units -> factor to millimetres.
_UNIT_TO_MM: dict[str, float] = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def escapes_folder(entry: str) -> bool:
    """True when ``entry`` -- a path written in a list file, split file or dataset description,
    meant relative to the dataset folder -- would leave that folder: an absolute path (POSIX,
    Windows drive or UNC), a ``..`` component (``/`` or ``\\`` separated), or a NUL byte."""
    if "\x00" in entry or entry.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", entry):
        return True
    return ".." in re.split(r"[\\/]+", entry)



def _check_file(path: Path) -> str:
    """Existence, type, size and extension checks; returns the extension."""
    if not path_exists(path):
        raise fail(path, "file not found")
    if path.is_dir():
        raise fail(path, "is a folder, not an image file")
    if not path.is_file():
        raise fail(path, "is not a regular file")
    ext = file_extension(path)
    if ext not in _KIND_OF_EXTENSION:
        raise fail(
            path,
            f"unsupported file extension {ext or '(none)'!r}; supported: "
            + ", ".join(SUPPORTED_EXTENSIONS),
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise fail(path, "cannot be read", exc) from exc
    if size == 0:
        raise fail(path, "file is empty (0 bytes)")
    return ext



def _check_spacing(path: Path, raw: Any, ndim: int) -> tuple[float, ...]:
    try:
        sp = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise fail(path, "spacing entry is not numeric", exc) from exc
    if sp.shape != (ndim,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise fail(path, f"spacing must be {ndim} positive numbers, got {sp.tolist()}")
    return tuple(float(s) for s in sp)



# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
#: Full scale of the integer samples of pictures: they are divided by it, so that an 8-bit or
#: 16-bit picture lands in ``[0, 1]`` like the training slices.  Other sample types (Pillow's
#: 32-bit ``"I"`` and float ``"F"`` modes) keep their values.
PICTURE_FULL_SCALE: dict[np.dtype, float] = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def intensities(samples: np.ndarray, source: str | os.PathLike[str], picture: bool = False) -> np.ndarray:
    """``samples`` as float32 intensities, refused (naming ``source``) when empty, not numeric or
    not finite; a picture's 8-bit and 16-bit samples are divided by their full scale
    (`PICTURE_FULL_SCALE`)."""
    out = finite_float32(source, samples)
    scale = PICTURE_FULL_SCALE.get(samples.dtype) if picture else None
    if scale is not None:
        out /= np.float32(scale)
    return out


def picture_samples(im: Any, source: str | os.PathLike[str]) -> np.ndarray:
    """The samples of a loaded Pillow image as ``H x W`` (grey) or ``H x W x 3`` (colour): an
    alpha channel is dropped (logged), palette, CMYK and other colour modes become RGB, 1-bit
    becomes 8-bit grey, 16-bit grey stays uint16."""
    mode = im.mode
    if mode in ("1", "L", "LA", "La"):
        if mode in ("LA", "La"):
            logger.warning("%s: alpha channel dropped, grayscale kept", source)
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in im.info:
            logger.warning("%s: palette transparency dropped, RGB kept", source)
            return np.asarray(im.convert("RGBA").convert("RGB"))
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode in ("I", "F"):
        return np.asarray(im)
    if mode in ("RGBA", "RGBa"):
        logger.warning("%s: alpha channel dropped, RGB kept", source)
    return np.asarray(im if mode == "RGB" else im.convert("RGB"))


def _read_image2d(path: Path, max_pixels: int) -> LoadedImage:
    Image = require("PIL", path)
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own limit (max_pixels) is applied below from the header size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (2 x PIL.Image.MAX_IMAGE_PIXELS) fired on the header size.
        raise fail(path, "declares too many pixels, refused before decoding (over the limit)", exc) from exc
    except UnidentifiedImageError as exc:
        raise fail(path, "not a readable image (wrong magic bytes or unsupported content)", exc) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise fail(path, "corrupt or unreadable image", exc) from exc
    with im:
        width, height = im.size
        check_pixels(path, (height, width), max_pixels)
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            raise fail(path, f"has {n_frames} frames/pages; only single-frame 2-D images are supported")
        fmt = str(im.format or file_extension(path).lstrip(".").upper())
        try:
            im.load()
            arr = picture_samples(im, path)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise fail(path, "corrupt or truncated image data", exc) from exc
    if arr.ndim not in (2, 3):  # pragma: no cover - Pillow always gives H x W (x C)
        raise fail(path, f"unexpected decoded shape {arr.shape}")
    out = intensities(arr, path, picture=True)
    return LoadedImage(
        array=out,
        kind="image2d",
        path=path,
        spacing=None,
        channel_axis=-1 if out.ndim == 3 else None,
        file_format=fmt,
    )


def _nifti_zooms_mm(header: Any, n: int) -> list[float]:
    zooms = [float(z) for z in header.get_zooms()[:n]]
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:  # pragma: no cover - exotic headers
        unit = "unknown"
    factor = _UNIT_TO_MM.get(unit, 1.0)
    return [abs(z) * factor if z != 0 else 1.0 for z in zooms]


class _Collect(logging.Handler):
    """A logging handler that keeps the messages it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _nibabel_reports(path: Path) -> Iterator[None]:
    """nibabel prints the header problems it finds (and those it fixes) to stderr through a
    handler of its own; collect them instead.  When reading fails the error names the problem
    already; when it succeeds, each report becomes a one-line warning naming the file."""
    log = logging.getLogger("nibabel.global")
    collect = _Collect()
    saved = log.handlers[:], log.propagate
    log.handlers, log.propagate = [collect], False
    try:
        yield
    finally:
        log.handlers, log.propagate = saved
    for message in collect.messages:
        logger.warning("%s: %s", path, one_line(message))


def _read_nifti(path: Path, orientation: str, max_pixels: int) -> LoadedImage:
    nib = require("nibabel", path)
    try:
        with _nibabel_reports(path):
            img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        header = img.header.copy()
        affine = np.array(img.affine, dtype=np.float64)
        data_dtype = np.dtype(img.get_data_dtype())
    except Exception as exc:  # nibabel raises many types (ImageFileError, HeaderDataError, ...)
        raise fail(path, "not a readable NIfTI file (bad header, wrong magic or truncated)", exc) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise fail(path, f"not a single-file NIfTI image (nibabel read it as {type(img).__name__})")
    file_shape = list(shape)
    while len(file_shape) > 3 and file_shape[-1] == 1:
        file_shape.pop()
    if len(file_shape) > 3:
        extra = int(np.prod(file_shape[3:]))
        raise fail(
            path,
            f"{len(shape)}-D NIfTI holding {extra} volumes (shape {shape}); predict one 3-D "
            "volume at a time",
        )
    if len(file_shape) < 2:
        raise fail(path, f"{len(shape)}-D NIfTI (shape {shape}); expected a 3-D volume or a 2-D slice")
    check_pixels(path, tuple(file_shape), max_pixels)
    if data_dtype.kind not in "biuf":
        raise fail(path, f"NIfTI data type {data_dtype} is not a scalar numeric type (RGB/complex?)")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged"))
    except Exception as exc:  # truncated / corrupt gzip stream or data block
        raise fail(path, "corrupt or truncated NIfTI data", exc) from exc
    data = data.reshape(file_shape + [1] * (3 - len(file_shape)))
    data = finite_float32(path, data)
    zooms = _nifti_zooms_mm(header, len(file_shape)) + [1.0] * (3 - len(file_shape))
    perm, flips = orientation_transform(path, orientation, affine[:3, :3])
    array = apply_forward(data, perm, flips)
    return LoadedImage(
        array=array,
        kind="nifti",
        path=path,
        spacing=tuple(zooms[p] for p in perm),
        file_format=file_extension(path).lstrip("."),
        orientation=orientation,
        perm=perm,
        flips=flips,
        file_shape=tuple(file_shape),
        affine=affine,
        header=header,
    )


def _npz_declared_shape(archive: Any, key: str) -> tuple[int, ...] | None:
    """Shape of ``key`` from its ``.npy`` header inside the zip, without reading the data."""
    fmt = np.lib.format
    try:
        with archive.zip.open(f"{key}.npy") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, _, _ = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, _ = fmt.read_array_header_2_0(handle)
            else:
                return None
        return tuple(int(s) for s in shape)
    except (KeyError, AttributeError):
        return None


def _read_npz(path: Path, max_pixels: int) -> LoadedImage:
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise fail(path, "not a readable .npz archive (wrong magic or corrupt)", exc) from exc
    if isinstance(archive, np.ndarray):
        raise fail(path, "holds a bare .npy array, not an .npz archive with key 'image'")
    try:
        with archive:
            key = next((k for k in _IMAGE_KEYS if k in archive.files), None)
            if key is None:
                raise fail(path, f"no 'image' (or 'img') array; keys: {', '.join(archive.files) or 'none'}")
            declared = _npz_declared_shape(archive, key)
            if declared is not None:
                check_pixels(path, declared, max_pixels)
            arr = np.asarray(archive[key])
            raw_spacing = np.asarray(archive["spacing"]) if "spacing" in archive.files else None
    except InputError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise fail(path, "holds pickled Python objects, not a numeric array (refused)", exc) from exc
        raise fail(path, "corrupt or truncated .npz archive", exc) from exc
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise fail(path, "corrupt or truncated .npz archive", exc) from exc
    return _from_plain_array(path, "npz", key, arr, raw_spacing, max_pixels)


def _read_h5(path: Path, max_pixels: int) -> LoadedImage:
    h5py = require("h5py", path)
    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in _IMAGE_KEYS if k in f), None)
            if key is None:
                raise fail(path, f"no 'image' (or 'img') dataset; has: {', '.join(f.keys()) or 'none'}")
            dset = f[key]
            if not isinstance(dset, h5py.Dataset):
                raise fail(path, f"{key!r} is a group, not a dataset")
            if dset.ndim not in (2, 3):
                raise fail(path, f"{key!r} must be 2-D (H x W) or 3-D (D x H x W), got shape {dset.shape}")
            check_pixels(path, tuple(dset.shape), max_pixels)
            arr = np.asarray(dset[()])
            raw_spacing = f.attrs.get("spacing")
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise fail(path, "not a readable HDF5 file (wrong magic, corrupt or truncated)", exc) from exc
    return _from_plain_array(path, "h5", key, arr, raw_spacing, max_pixels)


def _from_plain_array(
    path: Path, kind: str, key: str, arr: np.ndarray, raw_spacing: Any, max_pixels: int
) -> LoadedImage:
    if arr.ndim not in (2, 3):
        raise fail(path, f"{key!r} must be 2-D (H x W) or 3-D (D x H x W), got shape {arr.shape}")
    check_pixels(path, arr.shape, max_pixels)
    out = finite_float32(path, arr)
    spacing = None if raw_spacing is None else _check_spacing(path, raw_spacing, arr.ndim)
    return LoadedImage(
        array=out, kind=kind, path=path, spacing=spacing, file_format=kind, key=key
    )


#: Bytes per sample of the MetaImage element types whose size does not depend on the platform.
_MET_SIZES: dict[str, int] = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_FLOAT": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_DOUBLE": 8,
}


def _check_metaimage_size(path: Path) -> None:
    """Refuse a truncated uncompressed MetaImage (``.mha``/``.mhd``) before ITK reads it.

    ITK's MetaImage reader prints "data not read completely" to the process's stderr itself
    before failing, which would break the one-line error; the expected data size is known
    from the header, so a short file is found here first.  Compressed, ASCII, multi-file and
    exotic headers are left to ITK.
    """
    header: dict[str, str] = {}
    offset = 0
    try:
        with open(path, "rb") as handle:
            for raw in itertools.islice(handle, 64):
                offset += len(raw)
                key, _, value = raw.decode("latin-1").partition("=")
                header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
    except OSError as exc:
        raise fail(path, "cannot be read", exc) from exc
    source = header.get("ElementDataFile", "")
    size = _MET_SIZES.get(header.get("ElementType", ""))
    plain = (
        header.get("CompressedData", "False") == "False"
        and header.get("BinaryData", "True") == "True"
        and header.get("HeaderSize", "0") == "0"
    )
    if not source or source == "LIST" or "%" in source or size is None or not plain:
        return
    try:
        count = int(np.prod([int(v) for v in header.get("DimSize", "").split()], dtype=np.int64))
        count *= int(header.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return  # ITK reports the malformed header
    data = path if source == "LOCAL" else path.parent / source
    try:
        available = data.stat().st_size - (offset if source == "LOCAL" else 0)
    except OSError as exc:
        raise fail(path, f"data file {source} cannot be read", exc) from exc
    if available < count * size:
        raise fail(data, f"corrupt or truncated: {available} bytes of image data, the header declares {count * size}")


def _read_sitk(path: Path, orientation: str, max_pixels: int) -> LoadedImage:
    sitk = require("SimpleITK", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        n_comp = int(reader.GetNumberOfComponents())
    except RuntimeError as exc:
        raise fail(path, "not a readable image header (wrong magic or corrupt)", exc) from exc
    if len(size) not in (2, 3):
        raise fail(path, f"{len(size)}-D image (size {size}); expected 2-D or 3-D")
    if n_comp != 1:
        raise fail(path, f"has {n_comp} components per pixel; only scalar images are supported")
    check_pixels(path, size, max_pixels)
    if file_extension(path) in (".mha", ".mhd"):
        _check_metaimage_size(path)
    try:
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img)  # reversed index order: (z,) y, x
    except RuntimeError as exc:
        raise fail(path, "corrupt or truncated image data", exc) from exc
    return from_sitk_image(path, img, arr, orientation, kind="sitk", file_format=file_extension(path).lstrip("."))



def read_image(
    path: str | os.PathLike[str] | DicomSeries,
    *,
    orientation: str = "native",
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Read and validate one image or volume for prediction.

    Args:
        path: the file; its extension selects the reader (see `SUPPORTED_EXTENSIONS`).
            Or a `DicomSeries` from `list_inputs`, read as
            one volume.
        orientation: axis convention for NIfTI, 3-D SimpleITK volumes and DICOM series:
            ``"native"`` (file axes reversed, ``D x H x W = k, j, i``; for DICOM: slices in
            the series' order, each as rows x columns) or ``"ras"`` (closest RAS, then inferior ->
            superior slices, anterior at row 0, subject's left at column 0). Ignored for 2-D
            pictures and npz/h5 arrays, which carry no orientation.
        max_pixels: refuse files whose header declares more pixels/voxels than this
            (default `MAX_PIXELS` = 2**28), before the data is decoded.

    Returns:
        A `LoadedImage` whose ``array`` is float32 ``H x W``, ``H x W x 3`` or
        ``D x H x W``, finite everywhere.

    Raises:
        InputError: missing, empty, unsupported, corrupt or truncated file; wrong
            dimensionality (1-D, 4-D with several volumes, vector pixels); NaN/Inf values;
            empty or oversized arrays, or slices less than `MIN_SIDE` pixels high or
            wide. The one-line message names the file.
    """
    from .dicom import DicomSeries, read_dicom_series  # here: that module builds on this one

    series = path if isinstance(path, DicomSeries) else None
    path = series.folder if series is not None else Path(path)
    if orientation not in _ORIENTATIONS:
        raise InputError(f"{path}: orientation must be one of {', '.join(_ORIENTATIONS)}, got {orientation!r}")
    if int(max_pixels) < 1:
        raise InputError(f"{path}: max_pixels must be >= 1, got {max_pixels!r}")
    kind = "dicom" if series is not None else _KIND_OF_EXTENSION[_check_file(path)]
    if series is not None:
        loaded = read_dicom_series(series, orientation, max_pixels)
    elif kind == "image2d":
        loaded = _read_image2d(path, max_pixels)
    elif kind == "nifti":
        loaded = _read_nifti(path, orientation, max_pixels)
    elif kind == "npz":
        loaded = _read_npz(path, max_pixels)
    elif kind == "h5":
        loaded = _read_h5(path, max_pixels)
    else:
        loaded = _read_sitk(path, orientation, max_pixels)
    height, width = loaded.label_shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise fail(path, f"image is {height} x {width} pixels (H x W); at least {MIN_SIDE} x {MIN_SIDE} is needed")
    logger.debug(
        "read %s: %s %s, spacing %s, orientation %s",
        path, loaded.kind, loaded.array.shape, loaded.spacing, loaded.orientation,
    )
    return loaded


# --------------------------------------------------------------------------------------------
# listing inputs
# --------------------------------------------------------------------------------------------
def list_inputs(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path | DicomSeries]:
    """Inputs to predict: ``path`` itself, the supported files and DICOM series directly inside
    a folder, or the DICOM series of several DICOM files given together.

    Folders are not searched recursively; hidden files (name starting with ``.``, e.g.
    temporary files of an interrupted atomic write) are skipped; files are sorted by name,
    followed by the DICOM series found among the folder's other files (Part 10 files, with or
    without a ``.dcm`` suffix; see `simmpnet.data.dicom`). nnU-Net style names
    (``case_0000.nii.gz``) are listed like any other. A DICOM file given on its own is a
    series of one file (a single slice, or a multi-frame volume). Every DICOM series is
    checked from its file headers here, before any work.

    Args:
        path: a supported file, a DICOM file, a folder, or a sequence of paths: one path is
            taken as above; several must all be DICOM files, grouped into series by
            SeriesInstanceUID.

    Returns:
        The inputs (non-empty): paths of files, and
        `DicomSeries` for DICOM series, both accepted by
        `read_image`.

    Raises:
        InputError: ``path`` does not exist, is a file with an unsupported extension that is
            not DICOM, or is a folder without any supported file or DICOM series; a folder
            whose DICOM files form no readable series, or a series whose files do not fit
            together (mixed sizes, orientations, missing slices).
    """
    from .dicom import is_dicom_file, series_in_folder, series_of_files  # here: that module builds on this one

    if not isinstance(path, (str, os.PathLike)):
        paths = [Path(p) for p in path]
        if not paths:
            raise InputError("no input given")
        if len(paths) > 1:
            return list(series_of_files(paths))
        path = paths[0]
    path = Path(path)
    if not path_exists(path):
        raise InputError(f"{path}: input not found")
    if path.is_file():
        ext = file_extension(path)
        if ext in _KIND_OF_EXTENSION:
            return [path]
        if ext == ".dcm" or is_dicom_file(path):
            return list(series_of_files([path]))
        raise InputError(
            f"{path}: unsupported file extension {ext or '(none)'!r} and not a DICOM file; supported: "
            + ", ".join(SUPPORTED_EXTENSIONS)
        )
    if not path.is_dir():
        raise InputError(f"{path}: neither a file nor a folder")
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".") and p.is_file()]
    except OSError as exc:
        raise fail(path, "cannot list folder", exc) from exc
    files: list[Path | DicomSeries] = sorted(
        (p for p in entries if file_extension(p) in _KIND_OF_EXTENSION), key=lambda p: p.name
    )
    others = [p for p in entries if file_extension(p) not in _KIND_OF_EXTENSION]
    series = series_in_folder(path, others, alone=not files)
    if not files and not series:
        raise InputError(
            f"{path}: folder holds no supported image file ({', '.join(SUPPORTED_EXTENSIONS)}) "
            "and no DICOM series"
        )
    return [*files, *series]


_NNUNET_CHANNEL = re.compile(r"_\d{4}$")


def default_label_path(reference: LoadedImage, out_dir: str | os.PathLike[str]) -> Path:
    """Where to write the label map of ``reference`` inside ``out_dir``.

    The input's stem without an nnU-Net channel suffix (``case_0000.nii.gz`` ->
    ``case.nii.gz``), with the input's extension, except ``.png`` for every 2-D picture
    (JPEG is lossy) and ``.mha`` for ``.mhd`` inputs (one file instead of two). A DICOM series
    gets ``<series name>.nii.gz`` (see `simmpnet.data.dicom.DicomSeries.name`).

    Args:
        reference: the loaded input.
        out_dir: output folder.

    Returns:
        ``out_dir / <name>``.
    """
    if reference.series is not None:
        return Path(out_dir) / f"{reference.series.name}.nii.gz"
    ext = file_extension(reference.path)
    stem = reference.path.name[: len(reference.path.name) - len(ext)] if ext else reference.path.name
    stem = _NNUNET_CHANNEL.sub("", stem) or stem
    out_ext = {"image2d": ".png"}.get(reference.kind, ".mha" if ext == ".mhd" else ext)
    return Path(out_dir) / f"{stem}{out_ext}"




def _write_png(labels: np.ndarray, out_path: Path) -> None:
    Image = require("PIL", out_path)

    # A palette PNG: the pixel values stay the class ids (what every reader of label maps
    # takes), and viewers show each class in the colour of the overlays instead of near-black
    # greys 0, 1, 2, ...
    def write(tmp: Path) -> None:
        height, width = labels.shape
        picture = Image.frombytes("P", (width, height), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
        picture.putpalette(label_palette())
        with open(tmp, "wb") as handle:
            picture.save(handle, format="PNG")

    atomic_write(out_path, write, suffix=".png")


def _write_nifti(
    labels_ijk: np.ndarray, reference: LoadedImage, out_path: Path, ext: str, description: str | None = None
) -> None:
    nib = require("nibabel", out_path)
    header = reference.header.copy()
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(labels_ijk, reference.affine, header=header)
    img.set_data_dtype(np.uint8)
    hdr = img.header
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = 0
    hdr["cal_max"] = int(labels_ijk.max()) if labels_ijk.size else 0
    hdr["descrip"] = (description or "simmpnet label map").encode("ascii", "replace")[:79]
    try:
        hdr.set_intent("label")
    except Exception:  # pragma: no cover - very old nibabel
        pass
    atomic_write(out_path, lambda tmp: nib.save(img, str(tmp)), suffix=ext)


def _write_sitk(
    labels_ijk_or_2d: np.ndarray, reference: LoadedImage, out_path: Path, ext: str, description: str | None = None
) -> None:
    sitk = require("SimpleITK", out_path)
    if labels_ijk_or_2d.ndim == 3:
        arr = np.ascontiguousarray(np.transpose(labels_ijk_or_2d, (2, 1, 0)))
    else:
        arr = labels_ijk_or_2d
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(reference.origin)
    img.SetSpacing(reference.file_spacing)
    img.SetDirection(reference.direction)
    if description and ext in (".nii", ".nii.gz"):
        img.SetMetaData("ITK_FileNotes", description[:79])  # ITK's NIfTI writer puts it in descrip

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(img, str(tmp), True)
        except RuntimeError as exc:
            raise OSError(one_line(exc)) from exc

    atomic_write(out_path, write, suffix=ext)


def _write_plain(labels: np.ndarray, reference: LoadedImage, out_path: Path, ext: str) -> None:
    if ext == ".npz":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, label=labels)
    else:
        h5py = require("h5py", out_path)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("label", data=labels, compression="gzip")
                if reference.spacing is not None:
                    f.attrs["spacing"] = np.asarray(reference.spacing, dtype=np.float64)

    atomic_write(out_path, write, suffix=ext)


def write_label_map(
    labels: Any, reference: LoadedImage, out_path: str | os.PathLike[str], description: str | None = None
) -> Path:
    """Write a label map in the geometry of the image it was predicted from.

    Args:
        labels: class ids, shape ``reference.label_shape`` (``H x W`` for 2-D images, also
            colour ones; ``D x H x W`` for volumes, in the axis order of ``reference.array``).
            uint8 is written as is; other integer, bool or whole-number float arrays with
            values in ``[0, 255]`` are converted to uint8.
        reference: the `LoadedImage` the prediction was made on.
        description: what made the labels, for formats with a description field (NIfTI's
            80-byte ``descrip``); default "simmpnet label map".
        out_path: target file. Its extension picks the format and must suit the reference:
            ``.png`` for 2-D pictures (uint8, pixel value = class id); ``.nii``/``.nii.gz``
            for NIfTI (the reference's affine and header, qform/sform and their codes kept,
            data type uint8, scaling reset, intent "label"); ``.npz`` (key ``label``) or
            ``.h5``/``.hdf5`` (dataset ``label``, attribute ``spacing`` when known) for
            npz/h5; ``.nrrd``/``.mha`` (or ``.nii``/``.nii.gz``) for SimpleITK inputs and
            DICOM series, with the same origin, spacing and direction. Volumes are put back
            into the file's voxel order (inverse of the read permutation and flips).

    Returns:
        ``out_path`` as a `Path`.

    Raises:
        InputError: shape mismatch, labels that are not class ids in ``[0, 255]``, an output
            extension that does not suit the reference, ``out_path`` equal to the input file,
            or a failed write (nothing partial is left behind).
    """
    out_path = Path(out_path)
    ext = file_extension(out_path)
    allowed = _OUTPUT_EXTENSIONS.get(reference.kind)
    if allowed is None:
        raise fail(out_path, f"unknown reference kind {reference.kind!r}")
    if ext not in allowed:
        raise fail(
            out_path,
            f"cannot write a label map for a {reference.kind} input as {ext or '(no extension)'!r}; "
            f"use {', '.join(allowed)}",
        )
    if out_path.resolve() == reference.path.resolve():
        raise fail(out_path, "refusing to overwrite the input image with its label map")
    arr = as_label_array(labels, reference, out_path)

    if reference.kind in ("nifti", "sitk", "dicom") and reference.perm is not None:
        if reference.flips is None or reference.file_shape is None:
            raise fail(out_path, f"reference {reference.path.name} lacks its axis transform")
        file_arr = apply_inverse(arr, reference.perm, reference.flips)
        if reference.kind == "nifti":
            file_arr = file_arr.reshape(reference.file_shape)
    else:
        file_arr = arr

    if reference.kind == "image2d":
        _write_png(file_arr, out_path)
    elif reference.kind == "nifti":
        if reference.affine is None or reference.header is None:
            raise fail(out_path, f"reference {reference.path.name} lacks its NIfTI affine/header")
        _write_nifti(file_arr, reference, out_path, ext, description)
    elif reference.kind in ("sitk", "dicom"):
        if reference.origin is None or reference.direction is None or reference.file_spacing is None:
            raise fail(out_path, f"reference {reference.path.name} lacks its origin/spacing/direction")
        _write_sitk(file_arr, reference, out_path, ext, description)
    else:
        _write_plain(file_arr, reference, out_path, ext)
    logger.info("wrote label map %s (%s, shape %s)", out_path, reference.kind, arr.shape)
    return out_path
