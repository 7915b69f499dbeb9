"""Plain folders of 2-D pictures and masks ("folder2d"), and what every 2-D picture layout shares.

Layout "folder2d" under a root folder::

    images/<id>.<ext>              PNG, JPEG, TIFF or BMP; grey or colour (RGB)
    masks/<id>[<suffix>].<ext>     one mask per image, 8-bit, pixel value = class id
                                   (0 .. n_classes - 1); the name is the image's, optionally
                                   followed by a suffix such as ``_mask`` or ``_segmentation``
                                   (option ``mask_suffix``), any of the four formats
    splits.json                    optional: {"train": [ids], "val": [ids], "test": [ids]}
    dataset.json                   optional (written by the converters): channels, n_classes

A binary mask stored as 0/255 is read as classes 0/1 when ``n_classes`` is 2 (and only then).
Masks must be single-channel 8-bit pictures: grey (``L``), palette (``P``: the palette index is
the class id) or black/white (``1``: read as 0/255); an RGB mask is accepted when its three
channels are equal (grey saved as colour). Masks with an alpha channel, 16/32-bit or float
masks and colour masks are errors.

Splits, the same for every 2-D picture layout (`PictureLayout`):

* a split file (option ``split_file``, relative to the root unless absolute; default
  ``<root>/splits.json`` when it exists): a JSON object mapping split names to lists of image
  ids (file names without extension are ids; an extension is tolerated and removed). Every id
  must be a labelled picture of the folder and no id may sit in two of ``train`` / ``val`` /
  ``test`` (further names, e.g. ``official_val``, are free); a split file replaces the
  seeded split entirely;
* otherwise a seeded split of the layout's pool of images into ``train`` / ``val`` / ``test``
  with ``fractions`` (default 0.8 / 0.1 / 0.1): the ids are ordered by the SHA-256 digest of
  ``"<seed>:<id>"`` (default seed 2222, the paper's), the first ``floor(n * f_test)`` go to
  ``test``, the next ``floor(n * f_val)`` to ``val`` and the rest to ``train`` (``val`` and
  ``test`` get at least one image each once there are 3 or more). The split depends only on
  the set of ids and the seed -- not on the platform, the numpy version or the listing order;
* ``all``: every labelled picture; layouts may add their own splits (the challenges' official
  ones, named ``official_<name>``).

Items: training slices ``{"image": float32 tensor (C, H, W) in [0, 1], "label": int64 tensor
(H, W), "name": id}`` and evaluation cases ``{"image": float32 (1, H, W) or (1, H, W, 3),
"label": int64 (1, H, W), "name": id, "spacing": None}`` (a picture is a one-slice case).
Files are read lazily and every item is validated as it is read; `PictureLayout.verify`
lists every problem of the folder at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from simmpnet.errors import InputError, one_line

from ..io import (
    IMAGE2D_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    atomic_write,
    escapes_folder,
    file_extension,
    path_exists,
    read_image,
)
from ..transforms import to_tensors
from .registry import Layout, register_layout

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SEED",
    "Folder2DLayout",
    "Pair",
    "PictureCases",
    "PictureLayout",
    "PictureSlices",
    "Scan",
    "export_folder2d",
    "list_pictures",
    "read_mask",
    "read_picture",
    "read_split_file",
    "seeded_split",
]

logger = logging.getLogger(__name__)

#: The paper's seed; also the default seed of the 80/10/10 split.
DEFAULT_SEED: int = 2222
#: Fractions of the seeded split (train, val, test).
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
SPLIT_FILE = "splits.json"
DATASET_FILE = "dataset.json"
SEEDED_SPLITS: tuple[str, ...] = ("train", "val", "test")
ALL_SPLIT = "all"
#: Suffixes a mask name may carry after the image's name (the exact name is always tried first).
DEFAULT_MASK_SUFFIXES: tuple[str, ...] = ("_segmentation", "_labels", "_label", "_mask", "_seg", "_gt")
#: ITU-R 601 luma weights, used when a colour picture must become grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_GREY_MODES = ("1", "L", "LA", "La", "I", "F")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _fmt_values(values: Iterable[int], limit: int = 6) -> str:
    vals = [int(v) for v in values]
    shown = ", ".join(str(v) for v in vals[:limit])
    return shown + (f", ... ({len(vals)} values)" if len(vals) > limit else "")


def _fmt_ids(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _first_problem(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more problem(s); `simmpnet verify` lists them)" if len(problems) > 1 else ""
    return problems[0] + more


def present_values(mask: np.ndarray) -> np.ndarray:
    """The distinct values of a uint8 mask, ascending (one pass, no sort of the pixels)."""
    return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))


def list_pictures(folder: Path) -> list[Path]:
    """Picture files (PNG, JPEG, TIFF, BMP) directly inside ``folder``, sorted by name.

    Hidden files (``.name``, e.g. temporary files of an interrupted atomic write, macOS
    ``._`` files) and other files (``LICENSE.txt``, ``ATTRIBUTION.txt`` ...) are skipped.

    Raises:
        InputError: the folder cannot be listed.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(one_line(f"{folder}: cannot list folder ({exc})")) from exc
    return [
        p for p in entries
        if not p.name.startswith(".") and file_extension(p) in IMAGE2D_EXTENSIONS and p.is_file()
    ]


def _stem(path: Path) -> str:
    """File name without its (picture) extension."""
    return path.name[: len(path.name) - len(file_extension(path))]


def _open_picture(path: Path, max_pixels: int = MAX_PIXELS, reduced: bool = False) -> Any:
    """Open and decode one single-frame picture with Pillow (the caller closes it).

    With ``reduced``, JPEGs are decoded at 1/8 scale (all compressed data is still read, so
    truncated files are still found; ``im.size`` is then the reduced size).

    Raises:
        InputError: missing, empty, unreadable, multi-frame, oversized or truncated file.
    """
    from PIL import Image, UnidentifiedImageError

    if not path_exists(path) or not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: declares too many pixels (over the decompression-bomb limit); refused before decoding") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(one_line(f"{path}: not a readable picture ({type(exc).__name__}: {exc})")) from exc
    try:
        width, height = im.size
        if width * height == 0:
            raise InputError(f"{path}: picture is empty ({width} x {height})")
        if min(width, height) < MIN_SIDE:
            raise InputError(f"{path}: picture is {height} x {width} pixels (H x W); at least {MIN_SIDE} x {MIN_SIDE} is needed")
        if width * height > max_pixels:
            raise InputError(f"{path}: {width} x {height} pixels is more than the limit of {max_pixels}")
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            raise InputError(f"{path}: has {frames} frames/pages; only single-frame pictures are supported")
        if reduced and im.format == "JPEG":
            im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        im.load()
    except InputError:
        im.close()
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        im.close()
        raise InputError(one_line(f"{path}: corrupt or truncated picture data ({type(exc).__name__}: {exc})")) from exc
    return im


def picture_shape(path: Path) -> tuple[int, int]:
    """``(H, W)`` of a picture, after decoding it (so truncated files are found); JPEGs are
    decoded at 1/8 scale, which reads all their data at a fraction of the cost.

    Raises:
        InputError: what `_open_picture` refuses, and floating-point pictures holding
            NaN or infinite values (the only kind that can).
    """
    from PIL import Image

    size: tuple[int, int] | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                size = header.size
    except Exception:  # _open_picture below reports the problem with its own message
        pass
    with _open_picture(path, reduced=True) as im:
        if im.mode == "F" and not np.isfinite(np.asarray(im)).all():
            raise InputError(f"{path}: picture holds NaN or infinite values")
    if size is None:  # pragma: no cover - _open_picture has raised already
        raise InputError(f"{path}: not a readable picture")
    width, height = size
    return height, width


def read_picture(path: Path, channels: int) -> np.ndarray:
    """Read a picture as the network sees it.

    Args:
        path: PNG, JPEG, TIFF or BMP file.
        channels: 3 (grey pictures are repeated to RGB) or 1 (colour pictures become grey
            with the ITU-R 601 luma weights).

    Returns:
        float32 ``(H, W, 3)`` or ``(H, W)`` array; 8-bit samples divided by 255, 16-bit by
        65535 (see `simmpnet.data.io.read_image`).

    Raises:
        InputError: unreadable or unsupported file (the message names it).
    """
    if file_extension(path) not in IMAGE2D_EXTENSIONS:
        raise InputError(f"{path}: not a picture file ({', '.join(IMAGE2D_EXTENSIONS)})")
    array = read_image(path).array
    if channels == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif channels == 1 and array.ndim == 3:
        array = np.ascontiguousarray(array @ _LUMA)
    return array


def read_rgb_uint8(path: Path) -> np.ndarray:
    """A picture as 8-bit RGB ``(H, W, 3)`` uint8 (for the converters; no float copy of large
    pictures). 16/32-bit and float pictures go through `read_picture` and are scaled."""
    with _open_picture(path) as im:
        if not (im.mode.startswith("I") or im.mode == "F"):
            return np.asarray(im.convert("RGB"))
    array = read_picture(path, 3)
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask's raw pixel values.

    Args:
        path: PNG, JPEG, TIFF or BMP mask.

    Returns:
        uint8 ``(H, W)`` array: grey values (``L``), palette indices (``P``), 0/255 (``1``), or
        the common value of an RGB mask whose three channels are equal.

    Raises:
        InputError: unreadable file, alpha channel, 16/32-bit or float samples, a colour mask
            (channels differ) or another colour mode; the message names the file.
    """
    if file_extension(path) not in IMAGE2D_EXTENSIONS:
        raise InputError(f"{path}: not a picture file ({', '.join(IMAGE2D_EXTENSIONS)})")
    with _open_picture(path) as im:
        mode = im.mode
        if mode in ("L", "P"):
            arr = np.asarray(im)
        elif mode == "1":
            arr = np.asarray(im.convert("L"))
        elif mode == "RGB":
            rgb = np.asarray(im)
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise InputError(
                    f"{path}: colour mask (RGB channels differ); masks must be single-channel 8-bit "
                    "pictures whose pixel values are the labels"
                )
            arr = rgb[..., 0]
        elif mode in ("LA", "La", "RGBA", "RGBa", "PA"):
            raise InputError(f"{path}: mask has an alpha channel (mode {mode}); save it as 8-bit grey (mode L)")
        elif mode.startswith("I;16") or mode in ("I", "I;32"):
            bits = "16-bit" if mode.startswith("I;16") else "16-bit or 32-bit integer"
            raise InputError(f"{path}: {bits} mask (mode {mode}); save masks as 8-bit grey (mode L)")
        elif mode == "F":
            raise InputError(f"{path}: floating-point mask (mode F); save masks as 8-bit grey (mode L)")
        else:
            raise InputError(f"{path}: mask in colour mode {mode}; save masks as 8-bit grey (mode L)")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _lossy_hint(path: Path) -> str:
    return " (JPEG is lossy: store masks as PNG)" if file_extension(path) in (".jpg", ".jpeg") else ""


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def _check_fractions(fractions: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as exc:
        raise InputError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from exc
    if len(values) != 3 or any(not np.isfinite(f) or f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise InputError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions!r}")
    return values  # type: ignore[return-value]


def seeded_split(
    names: Iterable[str], seed: int = DEFAULT_SEED, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, list[str]]:
    """Split ids into ``train`` / ``val`` / ``test`` reproducibly (see the module docstring).

    Args:
        names: image ids (duplicates are ignored).
        seed: any integer; the same seed and ids always give the same split.
        fractions: (train, val, test) fractions summing to 1.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted; disjoint and together
        holding every id.
    """
    _, f_val, f_test = _check_fractions(fractions)
    keyed = sorted(set(names), key=lambda n: hashlib.sha256(f"{int(seed)}:{n}".encode()).hexdigest())
    n = len(keyed)
    n_test = int(n * f_test + 1e-9)
    n_val = int(n * f_val + 1e-9)
    if n >= 3:
        n_test = max(n_test, 1) if f_test > 0 else 0
        n_val = max(n_val, 1) if f_val > 0 else 0
    n_val = min(n_val, n - n_test)
    return {
        "train": sorted(keyed[n_test + n_val :]),
        "val": sorted(keyed[n_test : n_test + n_val]),
        "test": sorted(keyed[:n_test]),
    }


def _entry_id(entry: str) -> str:
    ext = file_extension(entry)
    return entry[: len(entry) - len(ext)] if ext in IMAGE2D_EXTENSIONS else entry


def read_split_file(path: Path) -> dict[str, list[str]]:
    """Read a split file: a JSON object ``{split name: [image ids]}``.

    Entries may carry a picture extension (``ISIC_0000000.jpg``), which is removed.

    Raises:
        InputError: missing file, invalid JSON, not a mapping of names to lists of strings, or
            an entry that is a path leaving the dataset folder (``../x``, ``/etc/x``).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: split file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(one_line(f"{path}: cannot read split file ({exc})")) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict) or not data:
        raise InputError(f'{path}: expected a JSON object such as {{"train": [ids], "val": [ids], "test": [ids]}}')
    splits: dict[str, list[str]] = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise InputError(f"{path}: split {name!r} must be a list of image ids (strings)")
        outside = next((i for i in ids if escapes_folder(i)), None)
        if outside is not None:
            raise InputError(f"{path}: split {name!r} entry {outside!r} points outside the dataset folder; refused")
        splits[str(name)] = [_entry_id(i) for i in ids]
    return splits


def check_splits(path: Path, splits: dict[str, list[str]], known: Iterable[str]) -> list[str]:
    """Problems of a split file against the labelled ids of a folder, one line each: unknown
    ids, ids listed twice in a split, and ids in more than one of ``train`` / ``val`` /
    ``test`` (other split names, such as the ``official_*`` ones, may overlap any split)."""
    known_set = set(known)
    problems: list[str] = []
    owner: dict[str, str] = {}
    for name, ids in splits.items():
        unknown = [i for i in ids if i not in known_set]
        if unknown:
            problems.append(
                f"{path}: split {name!r} lists {len(unknown)} id(s) that are not labelled pictures "
                f"of the folder: {_fmt_ids(unknown)}"
            )
        counts = Counter(ids)
        twice = sorted(i for i, c in counts.items() if c > 1)
        seen = set(counts)
        if twice:
            problems.append(f"{path}: split {name!r} lists id(s) more than once: {_fmt_ids(twice)}")
        if name not in SEEDED_SPLITS:
            continue
        shared = sorted({i for i in seen if i in owner})
        if shared:
            problems.append(
                f"{path}: id(s) in both split {owner[shared[0]]!r} and split {name!r}: {_fmt_ids(shared)}"
            )
        for i in seen:
            owner.setdefault(i, name)
    return problems


# --------------------------------------------------------------------------------------------
# the shared layout machinery
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One labelled picture.

    Attributes:
        name: the image id (file name without extension).
        image: the picture file.
        masks: its mask file(s) (several for per-instance masks, merged by the layout).
        group: the folder group it came from (e.g. ``official_train``), ``""`` when none.
    """

    name: str
    image: Path
    masks: tuple[Path, ...]
    group: str = ""


@dataclass
class Scan:
    """What a layout found in its folder (file names only; nothing decoded).

    Attributes:
        pairs: labelled pictures by id.
        problems: structural problems (missing folders, images without masks and vice versa,
            badly named or duplicate files), one ``"<path>: <problem>"`` line each.
        pool: ids the seeded train/val/test split divides.
        groups: extra splits of the layout (the official ones), id lists by name.
    """

    pairs: dict[str, Pair] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)


class _PictureItems(Dataset):
    """Pictures of a 2-D layout, by id, in item order.

    Args:
        layout: the layout that reads the files.
        names: image ids, in item order.
    """

    def __init__(self, layout: PictureLayout, names: Sequence[str]) -> None:
        self.layout = layout
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)


class PictureSlices(_PictureItems):
    """Training slices of a 2-D picture layout.

    Each item is ``{"image": float32 tensor (C, H, W), "label": int64 tensor (H, W), "name": id}``.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        image, label = to_tensors(*self.layout.load_pair(name))
        return {"image": image, "label": label, "name": name}


class PictureCases(_PictureItems):
    """Evaluation cases of a 2-D picture layout: each picture is a one-slice case.

    Each item is ``{"image": float32 (1, H, W) or (1, H, W, 3), "label": int64 (1, H, W),
    "name": id, "spacing": None}`` (pixel units: pictures carry no physical spacing).
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        image, label = self.layout.load_pair(name)
        return {"image": image[None], "label": label[None], "name": name, "spacing": None}


class PictureLayout(Layout):
    """Base of the 2-D picture layouts: lazy folder scan, the split rules of the module
    docstring, item reading and a verify that lists every problem.

    Args:
        root: the dataset folder.
        n_classes: classes including background; a layout with a fixed class set refuses any
            other number.
        seed: seed of the 80/10/10 split (default 2222).
        split_file: a split file (JSON), relative to ``root`` unless absolute; default
            ``root/splits.json`` when it exists.
        fractions: (train, val, test) fractions of the seeded split (default 0.8, 0.1, 0.1).
        **options: the subclass's own options (`extra_options`).

    Raises:
        InputError: missing root, unknown options, bad option values, a class count the
            layout does not have.
    """

    splits: ClassVar[tuple[str, ...]] = (*SEEDED_SPLITS, ALL_SPLIT)
    #: options of the subclass besides seed, split_file and fractions
    extra_options: ClassVar[tuple[str, ...]] = ()
    #: class names (background first) of layouts with a fixed class set
    class_names: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, root: str | os.PathLike, n_classes: int | None = None, **options: Any) -> None:
        super().__init__(root, n_classes, **options)
        known = ("seed", "split_file", "fractions", *self.extra_options)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InputError(f"{self.root}: unknown option(s) {unknown} for layout {self.name!r}; known: {list(known)}")
        fixed = self.class_names
        if fixed is not None and n_classes is not None and n_classes != len(fixed):
            raise InputError(
                f"{self.root}: the {self.name} layout has {len(fixed)} classes ({', '.join(fixed)}), "
                f"got n_classes={n_classes}"
            )
        seed = options.get("seed", DEFAULT_SEED)
        try:
            self.seed = int(seed)
        except (TypeError, ValueError) as exc:
            raise InputError(f"seed must be an integer, got {seed!r}") from exc
        self.fractions = _check_fractions(options.get("fractions", DEFAULT_FRACTIONS))
        split_file = options.get("split_file")
        if split_file is not None:
            split_path = Path(split_file)
            self.split_file: Path | None = split_path if split_path.is_absolute() else self.root / split_path
        else:
            self.split_file = None
        self._scan: Scan | None = None

    # ------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _find(self) -> Scan:
        """List the folder (names only) and pair pictures with their masks."""

    @abstractmethod
    def mask_classes(self, path: Path, mask: np.ndarray) -> np.ndarray:
        """Class ids of one raw mask.

        Args:
            path: the mask file (named in errors).
            mask: its raw uint8 values, ``(H, W)``.

        Returns:
            ``(H, W)`` integer class ids.

        Raises:
            InputError: a value the layout does not allow.
        """

    def merge(self, labels: list[np.ndarray]) -> np.ndarray:
        """Combine the class ids of a picture's masks (default: its single mask)."""
        return labels[0]

    @property
    def channels(self) -> int:
        """Channels of the images this layout yields (3: RGB)."""
        return 3

    # ------------------------------------------------------------ scanning and splits
    @property
    def scan(self) -> Scan:
        """The folder scan, made once on first use."""
        if self._scan is None:
            self._scan = self._find()
            logger.debug("%s (%s): %d labelled pictures, %d structural problem(s)",
                         self.root, self.name, len(self._scan.pairs), len(self._scan.problems))
        return self._scan

    def split_file_path(self) -> Path | None:
        """The split file in force: the ``split_file`` option, else ``root/splits.json`` if it
        exists, else None (seeded split)."""
        if self.split_file is not None:
            if not self.split_file.is_file():
                raise InputError(f"{self.split_file}: split file not found")
            return self.split_file
        default = self.root / SPLIT_FILE
        return default if default.is_file() else None

    def split_table(self) -> dict[str, list[str]]:
        """Every split this folder offers, by name (split file or seeded split, the layout's
        official groups and ``all``).

        Raises:
            InputError: a broken split file (the first problem).
        """
        scan = self.scan
        table: dict[str, list[str]] = {name: list(ids) for name, ids in scan.groups.items()}
        path = self.split_file_path()
        if path is not None:
            splits = read_split_file(path)
            problems = check_splits(path, splits, scan.pairs)
            if problems:
                raise InputError(_first_problem(problems))
            table.update(splits)
        else:
            pool = [n for n in scan.pool if n in scan.pairs]
            table.update(seeded_split(pool, self.seed, self.fractions))
        table[ALL_SPLIT] = sorted(scan.pairs)
        return table

    def split_ids(self, split: str) -> list[str]:
        """Image ids of ``split``, in a stable order.

        Raises:
            InputError: unknown split, broken split file, or a split without pictures.
        """
        table = self.split_table()
        if split not in table:
            source = f"{self.split_file_path()}" if self.split_file_path() else f"{self.root}"
            raise InputError(f"{source}: unknown split {split!r} for layout {self.name!r}; choose one of {sorted(table)}")
        ids = table[split]
        if not ids:
            hint = f" ({_first_problem(self.scan.problems)})" if self.scan.problems else ""
            raise InputError(f"{self.root}: split {split!r} holds no labelled pictures{hint}")
        return ids

    # ------------------------------------------------------------ reading
    def label_of(self, pair: Pair, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The int64 ``(H, W)`` label map of a pair, every mask checked (size against ``shape``
        when given, values by `mask_classes`)."""
        labels = []
        for path in pair.masks:
            mask = read_mask(path)
            if shape is not None and mask.shape != tuple(shape):
                raise InputError(
                    f"{path}: mask is {mask.shape[0]} x {mask.shape[1]} (H x W) but image "
                    f"{pair.image.name} is {shape[0]} x {shape[1]}"
                )
            labels.append(self.mask_classes(path, mask))
        return np.ascontiguousarray(self.merge(labels), dtype=np.int64)

    def load_pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Read and check one labelled picture.

        Returns:
            (image float32 ``(H, W, 3)`` -- or ``(H, W)`` for 1-channel layouts -- in [0, 1],
            label int64 ``(H, W)``).

        Raises:
            InputError: any problem of the picture or its masks (the message names the file).
        """
        pair = self.scan.pairs.get(name)
        if pair is None:
            raise InputError(f"{self.root}: no labelled picture {name!r}")
        image = read_picture(pair.image, self.channels)
        label = self.label_of(pair, image.shape[:2])
        if self.n_classes is not None and label.size and int(label.max()) >= self.n_classes:
            raise InputError(
                f"{pair.masks[0]}: label {int(label.max())} is out of range for n_classes={self.n_classes}"
            )
        return image, label

    def load_pair_uint8(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Like `load_pair` but the image as uint8 ``(H, W, 3)`` and the label as uint8
        (for the converters)."""
        pair = self.scan.pairs.get(name)
        if pair is None:
            raise InputError(f"{self.root}: no labelled picture {name!r}")
        image = read_rgb_uint8(pair.image)
        label = self.label_of(pair, image.shape[:2])
        return image, label.astype(np.uint8)

    def slices(self, split: str) -> Dataset:
        return PictureSlices(self, self.split_ids(split))

    def cases(self, split: str) -> Dataset:
        return PictureCases(self, self.split_ids(split))

    # ------------------------------------------------------------ checking
    def _pair_problems(self, pair: Pair) -> list[str]:
        problems: list[str] = []
        shape: tuple[int, int] | None = None
        try:
            shape = picture_shape(pair.image)
        except InputError as err:
            problems.append(str(err))
        for path in pair.masks:
            try:
                mask = read_mask(path)
            except InputError as err:
                problems.append(str(err))
                continue
            if shape is not None and mask.shape != shape:
                problems.append(
                    f"{path}: mask is {mask.shape[0]} x {mask.shape[1]} (H x W) but image "
                    f"{pair.image.name} is {shape[0]} x {shape[1]}"
                )
            try:
                ids = self.mask_classes(path, mask)
                if self.n_classes is not None and ids.size and int(ids.max()) >= self.n_classes:
                    problems.append(f"{path}: label {int(ids.max())} is out of range for n_classes={self.n_classes}")
            except InputError as err:
                problems.append(str(err))
        return problems

    def verify(self) -> list[str]:
        """Every problem at once: structure (missing folders, images without masks and masks
        without images, bad names), the split file, and each picture and mask (unreadable,
        size mismatch, wrong values, alpha / 16-bit / colour masks)."""
        try:
            scan = self.scan
        except InputError as err:
            return [str(err)]
        problems = list(scan.problems)
        try:
            path = self.split_file_path()
            if path is not None:
                problems += check_splits(path, read_split_file(path), scan.pairs)
        except InputError as err:
            problems.append(str(err))
        if not scan.pairs and not scan.problems:
            problems.append(f"{self.root}: no labelled pictures found ({self.name} layout)")
        for name in sorted(scan.pairs):
            problems += self._pair_problems(scan.pairs[name])
        return problems


# --------------------------------------------------------------------------------------------
# folder2d
# --------------------------------------------------------------------------------------------
def _read_dataset_file(root: Path) -> dict[str, Any]:
    path = root / DATASET_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(one_line(f"{path}: cannot read dataset description ({exc})")) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


@register_layout
class Folder2DLayout(PictureLayout):
    """A plain folder of pictures and class-id masks (see the module docstring).

    Options (besides ``seed``, ``split_file``, ``fractions``):
        images_dir: folder of the pictures, relative to the root (default ``images``); one
            outside the root (``..``, absolute) is refused.
        masks_dir: folder of the masks (default ``masks``), likewise inside the root.
        mask_suffix: suffix (or list of suffixes) after the image's name in mask names;
            default any of ``_segmentation``, ``_labels``, ``_label``, ``_mask``, ``_seg``,
            ``_gt``. The exact image name is always accepted.
        channels: 1 or 3; default ``channels`` of ``dataset.json`` when present, else 1 when
            every picture is grey and 3 otherwise (decided from the file headers).

    ``n_classes`` defaults to the ``n_classes`` of ``dataset.json`` when that file exists.
    """

    name = "folder2d"
    extra_options = ("images_dir", "masks_dir", "mask_suffix", "channels")

    def __init__(self, root: str | os.PathLike, n_classes: int | None = None, **options: Any) -> None:
        super().__init__(root, n_classes, **options)
        self.description = _read_dataset_file(self.root)
        if self.n_classes is None and isinstance(self.description.get("n_classes"), int):
            self.n_classes = int(self.description["n_classes"])
        if self.n_classes is not None and self.n_classes < 1:
            raise InputError(f"n_classes must be positive, got {self.n_classes}")
        for key in ("images_dir", "masks_dir"):
            if key in options and escapes_folder(str(options[key])):
                raise InputError(f"{self.root}: option {key}={options[key]!r} points outside the dataset folder; refused")
        self.images_dir = self.root / str(options.get("images_dir", "images"))
        self.masks_dir = self.root / str(options.get("masks_dir", "masks"))
        suffix = options.get("mask_suffix")
        if suffix is None:
            suffixes: tuple[str, ...] = DEFAULT_MASK_SUFFIXES
        elif isinstance(suffix, str):
            suffixes = (suffix,)
        else:
            suffixes = tuple(str(s) for s in suffix)
        self.mask_suffixes = tuple(sorted((s for s in suffixes if s), key=len, reverse=True))
        channels = options.get("channels", self.description.get("channels"))
        if channels not in (None, 1, 3):
            raise InputError(f"{self.root}: channels must be 1 or 3, got {channels!r}")
        self._channels: int | None = channels

    @property
    def channels(self) -> int | None:
        """1 or 3: the ``channels`` option, else ``dataset.json``'s, else 1 when every picture is
        grey; ``None`` while no picture is found (verify and the readers say why)."""
        if self._channels is None:
            if not self.scan.pairs:
                return None
            from PIL import Image

            grey = True
            for pair in self.scan.pairs.values():
                try:
                    with Image.open(pair.image) as im:
                        if im.mode not in _GREY_MODES and not im.mode.startswith("I;16"):
                            grey = False
                            break
                except Exception:  # unreadable files are reported by verify / when read
                    continue
            self._channels = 1 if grey else 3
            logger.info("%s: %d-channel pictures", self.root, self._channels)
        return self._channels

    def _find(self) -> Scan:
        scan = Scan()
        for folder, what in ((self.images_dir, "pictures"), (self.masks_dir, "masks")):
            if not folder.is_dir():
                scan.problems.append(f"{folder}: folder of the {what} not found")
        if scan.problems:
            return scan
        images: dict[str, Path] = {}
        for path in list_pictures(self.images_dir):
            stem = _stem(path)
            if stem in images:
                scan.problems.append(f"{path}: a second picture for id {stem!r} (also {images[stem].name})")
                continue
            images[stem] = path
        masks: dict[str, Path] = {}
        for path in list_pictures(self.masks_dir):
            stem = _stem(path)
            candidates = [stem] + [stem[: -len(s)] for s in self.mask_suffixes if stem.endswith(s) and len(stem) > len(s)]
            owner = next((c for c in candidates if c in images), None)
            if owner is None:
                scan.problems.append(f"{path}: mask without a picture (no {candidates[-1]}.* in {self.images_dir})")
            elif owner in masks:
                scan.problems.append(f"{path}: a second mask for picture {images[owner].name} (also {masks[owner].name})")
            else:
                masks[owner] = path
        for stem, path in images.items():
            if stem not in masks:
                scan.problems.append(f"{path}: picture without a mask (no {stem}[suffix].* in {self.masks_dir})")
            else:
                scan.pairs[stem] = Pair(stem, path, (masks[stem],))
        scan.pool = sorted(scan.pairs)
        return scan

    def mask_classes(self, path: Path, mask: np.ndarray) -> np.ndarray:
        values = present_values(mask)
        n = self.n_classes
        if n == 2 and values.size and values[-1] == 255 and set(values.tolist()) <= {0, 255}:
            return (mask == 255).astype(np.uint8)
        if n is not None:
            bad = values[values >= n]
            if bad.size:
                hint = ""
                if 255 in bad.tolist() and n != 2:
                    hint = "; a 0/255 binary mask is read as 0/1 only when n_classes is 2"
                raise InputError(
                    f"{path}: mask value(s) {_fmt_values(bad)} outside the class range 0..{n - 1} "
                    f"(n_classes={n}){hint}{_lossy_hint(path)}"
                )
        return mask


# --------------------------------------------------------------------------------------------
# writing the folder2d form (used by the converters)
# --------------------------------------------------------------------------------------------
def parse_size(size: Any) -> tuple[int, int] | None:
    """``size`` option of the converters: None / "none" / 0 keeps the pictures' size, an int
    ``S`` (or ``"S"``) gives ``S x S``, a pair gives ``(H, W)``."""
    if size is None or (isinstance(size, str) and size.strip().lower() in ("", "none", "keep", "0")) or size == 0:
        return None
    try:
        if isinstance(size, str):
            parts = [int(p) for p in re.split(r"[x, ]+", size.strip()) if p]
        elif isinstance(size, (int, np.integer)):
            parts = [int(size)]
        else:
            parts = [int(p) for p in size]
    except (TypeError, ValueError) as exc:
        raise InputError(f"size must be a positive integer, H x W, or None, got {size!r}") from exc
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise InputError(f"size must be a positive integer, H x W, or None, got {size!r}")
    return parts[0], parts[1]


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    picture = Image.fromarray(array)  # uint8 (H, W) -> L, (H, W, 3) -> RGB

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            picture.save(handle, format="PNG", compress_level=3)

    atomic_write(path, write, suffix=".png")


def _write_json(data: Any, path: Path) -> None:
    text = json.dumps(data, indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")


def export_folder2d(layout: PictureLayout, out_dir: str | os.PathLike, size: Any = 256) -> Path:
    """Write every labelled picture of ``layout`` into ``out_dir`` in the folder2d form.

    Output::

        images/<id>.png    8-bit RGB, resized to ``size`` (bicubic, antialiased by Pillow)
        masks/<id>.png     8-bit grey class ids (nearest neighbour)
        splits.json        the layout's splits (split file or seeded 80/10/10, the official
                           ones, not ``all``), so the prepared folder keeps the same split
        dataset.json       written last: name, n_classes, class_names, channels, size, source;
                           its presence marks a complete conversion

    Every file is written atomically (temporary file + `os.replace`). Read the result
    with the ``folder2d`` layout.

    Args:
        layout: the raw dataset.
        out_dir: output folder (created; must not be the raw folder).
        size: see `parse_size` (default 256 x 256, the paper's input size).

    Returns:
        ``out_dir``.

    Raises:
        InputError: structural problems of the raw folder or a broken split file (before
            anything is written), or problems of single files (after converting all others;
            ``dataset.json`` is then not written).
    """
    from PIL import Image

    out = Path(out_dir)
    target = parse_size(size)
    if out.resolve() == layout.root.resolve():
        raise InputError(f"{out}: the output folder must differ from the raw dataset folder")
    scan = layout.scan
    if scan.problems:
        raise InputError(_first_problem(scan.problems))
    if not scan.pairs:
        raise InputError(f"{layout.root}: no labelled pictures found ({layout.name} layout)")
    table = layout.split_table()
    splits = {name: ids for name, ids in table.items() if name != ALL_SPLIT}
    names = sorted(scan.pairs)
    problems: list[str] = []
    logger.info("converting %d pictures of %s to %s", len(names), layout.root, out)
    for index, name in enumerate(names, start=1):
        try:
            image, label = layout.load_pair_uint8(name)
        except InputError as err:
            # reported in the error raised below (the first one) and by `simmpnet verify` (all)
            logger.info("skipped: %s", err)
            problems.append(str(err))
            continue
        if target is not None and image.shape[:2] != target:
            height, width = target
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
        _write_png(np.ascontiguousarray(image), out / "images" / f"{name}.png")
        _write_png(np.ascontiguousarray(label), out / "masks" / f"{name}.png")
        if index % 100 == 0 or index == len(names):
            logger.info("%d/%d pictures converted", index, len(names))
    if problems:
        raise InputError(
            f"{_first_problem(problems)}; {len(names) - len(problems)} of {len(names)} pictures converted, "
            f"{DATASET_FILE} not written"
        )
    _write_json(splits, out / SPLIT_FILE)
    class_names = list(layout.class_names) if layout.class_names else None
    n_classes = len(class_names) if class_names else layout.n_classes
    _write_json(
        {
            "format": "simmpnet-folder2d",
            "dataset": layout.name,
            "n_classes": n_classes,
            "class_names": class_names,
            "channels": 3,
            "size": list(target) if target else None,
            "count": len(names),
            "split_seed": None if layout.split_file_path() else layout.seed,
            "source": str(layout.root),
        },
        out / DATASET_FILE,
    )
    logger.info("wrote %d pictures and %s to %s", len(names), SPLIT_FILE, out)
    return out
