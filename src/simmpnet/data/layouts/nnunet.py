"""nnU-Net's raw dataset layout (``nnUNet_raw/DatasetXXX_Name``), read slice-wise.

Layout under a root folder (nnU-Net v2 conventions)::

    dataset.json                   channel_names, labels {name: id}, numTraining, file_ending
    imagesTr/<CASE>_0000<ending>   training images, one channel (suffix _0000)
    labelsTr/<CASE><ending>        training label maps, same grid as the image
    imagesTs/<CASE>_0000<ending>   images without labels (for ``simmpnet predict``)
    splits_final.json              optional: nnU-Net's cross-validation folds
                                   ``[{"train": [...], "val": [...]}, ...]``

``<ending>`` is dataset.json's ``file_ending``: ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``
(inferred from the files when dataset.json does not say).  nnU-Net v1 files (``modality``,
``labels`` as ``{"0": "background"}``) are read too.

Choices of this reader (documented, checked by `NnUNetLayout.verify`):

* **Single channel only.** A case with ``_0001`` (or a dataset.json with several
  ``channel_names``) is refused with a clear message: the evaluation and prediction paths of
  simmpnet work on single-channel volumes.
* **Axial slices** are the slices along the last file axis, i.e. the first axis of the
  ``D x H x W`` array `simmpnet.data.io.read_image` returns (native orientation, no
  resampling).  Spacing is reported in ``(D, H, W)`` order, in mm.
* **Intensities** are normalised per volume by `normalise_percentile`, the rule
  `simmpnet.predict.normalise_intensity` applies to prediction inputs: volumes already
  in ``[0, 1]`` are kept, any other is clipped to its 0.5 / 99.5 percentiles and scaled to
  ``[0, 1]``.  Training, evaluation and prediction therefore see the same intensities.
* **Splits**: ``"all"`` (every training case), ``"train"`` and ``"val"``.  The latter two come
  from ``splits_final.json`` (fold ``fold``, default 0) when the file is in the root;
  otherwise they reproduce nnU-Net's default fold 0: the sorted case ids shuffled like
  ``sklearn.model_selection.KFold(5, shuffle=True, random_state=12345)``, the first fifth
  (rounded up) is ``val`` -- an 80/20 split by case.  With fewer than ``n_folds`` cases one
  shuffled case is ``val``; a dataset of one case uses it for both.
* **Lazy slices**: the first time a volume is needed it is read, validated and normalised
  once and written to a cache folder as two ``.npy`` files (float32 image, integer label),
  which are then memory-mapped, so one slice costs one slice read.  The cache folder is the
  ``cache_dir`` option, else ``$SIMMPNET_CACHE_DIR/nnunet``, else
  ``$XDG_CACHE_HOME/simmpnet/nnunet`` (``~/.cache/simmpnet/nnunet``).  Entries are keyed by
  the files' paths, sizes and modification times, so edited files are re-read; stale entries
  are never deleted (remove the folder to reclaim the space).  ``cache_dir=False`` (or a
  folder that cannot be written) keeps a few volumes in memory instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import InputError
from ..io import atomic_write, escapes_folder, file_extension, read_image
from ..transforms import normalise_percentile
from .registry import Layout, register_layout

__all__ = [
    "NnUNetCaseDataset",
    "NnUNetLayout",
    "NnUNetSliceDataset",
    "kfold_split",
]

logger = logging.getLogger(__name__)

#: File endings this layout reads (those of `simmpnet.data.io` for volumes).
FILE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Split names.
SPLITS: tuple[str, ...] = ("train", "val", "all")
_CHANNEL = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")
_CACHE_VERSION = 1


# ------------------------------------------------------------------------------ helpers
def kfold_split(case_ids: list[str], fold: int = 0, n_folds: int = 5, seed: int = 12345) -> tuple[list[str], list[str]]:
    """nnU-Net's default cross-validation split of ``case_ids``.

    The ids are sorted, their indices shuffled with ``numpy.random.RandomState(seed)`` and cut
    into ``n_folds`` consecutive folds (the first ``n % n_folds`` one longer), as
    ``sklearn.model_selection.KFold(n_folds, shuffle=True, random_state=seed)`` does.

    Args:
        case_ids: training case ids.
        fold: which fold is the validation set.
        n_folds: number of folds; with fewer cases, shuffled case number ``fold % n`` is the
            validation set (a single case is both train and val).
        seed: shuffling seed (nnU-Net: 12345).

    Returns:
        (train ids, val ids), each sorted.
    """
    keys = sorted(case_ids)
    n = len(keys)
    if n == 0:
        return [], []
    if n_folds < 2:
        raise InputError(f"n_folds must be at least 2, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise InputError(f"fold must lie in 0..{n_folds - 1}, got {fold}")
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    if n < n_folds:
        val_idx = indices[fold % n : fold % n + 1]
    else:
        sizes = np.full(n_folds, n // n_folds, dtype=int)
        sizes[: n % n_folds] += 1
        start = int(sizes[:fold].sum())
        val_idx = indices[start : start + int(sizes[fold])]
    val = sorted(keys[i] for i in val_idx)
    chosen = set(val)
    train = [k for k in keys if k not in chosen] if n > 1 else list(keys)
    return train, val


def _default_cache_dir() -> Path:
    env = os.environ.get("SIMMPNET_CACHE_DIR")
    if env:
        return Path(env) / "nnunet"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "simmpnet" / "nnunet"


def _header_depth(path: Path) -> int:
    """Number of axial slices (size of the last file axis) read from the header only."""
    ext = file_extension(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if ext in (".nii", ".nii.gz"):
            import nibabel as nib

            shape = nib.load(str(path)).shape
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(reader.GetSize())
    except Exception as exc:  # nibabel / ITK raise many types
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: not a readable image header ({type(exc).__name__}: {detail})") from exc
    return int(shape[2]) if len(shape) >= 3 else 1


def _as_volume(loaded: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(D x H x W array, (D, H, W) spacing) of a LoadedImage; 2-D images become one slice."""
    arr = loaded.array
    spacing = tuple(float(s) for s in (loaded.spacing or (1.0,) * arr.ndim))
    if arr.ndim == 2:
        arr = arr[None]
        spacing = (1.0, *spacing)
    return arr, spacing  # type: ignore[return-value]


def _fmt(values: Any) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:10])
    return f"[{shown}{', ...' if len(values) > 10 else ''}]"


def _outside_paths(path: Path, meta: dict[str, Any]) -> list[str]:
    """Problems for file paths of a (v1) dataset.json -- ``training: [{image, label}]``,
    ``test: [...]`` -- that leave the dataset folder.  This reader finds the files itself and
    never opens those paths, but a description pointing elsewhere is not to be trusted."""
    entries: list[Any] = []
    for key in ("training", "test"):
        value = meta.get(key)
        if isinstance(value, list):
            for item in value:
                entries += list(item.values()) if isinstance(item, dict) else [item]
    outside = [e for e in entries if isinstance(e, str) and escapes_folder(e)]
    if not outside:
        return []
    return [f"{path}: file entry {outside[0]!r} points outside the dataset folder; refused"]


@dataclass(frozen=True)
class _Case:
    """One training case: its id, channel-0 image and label file."""

    name: str
    image: Path
    label: Path


# ------------------------------------------------------------------------------ reading a pair
def inspect_pair(
    image_path: Path,
    label_path: Path,
    allowed: frozenset[int] | None,
    n_classes: int | None,
) -> tuple[list[str], tuple[np.ndarray, np.ndarray, tuple[float, float, float]] | None]:
    """Read and check one image/label pair; collect every problem.

    Args:
        image_path: the image file (channel ``_0000``).
        label_path: its label map.
        allowed: label ids dataset.json declares (``None``: not known).
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.

    Returns:
        (problems, arrays): ``"<path>: <problem>"`` lines; when there is none, ``arrays`` is
        (normalised float32 image D x H x W, label D x H x W as uint8 or int32, spacing
        (D, H, W) in mm), else ``None``.
    """
    problems: list[str] = []
    image = label = None
    try:
        image = read_image(image_path)
    except InputError as err:
        problems.append(str(err))
    try:
        label = read_image(label_path)
    except InputError as err:
        problems.append(str(err))
    img_arr = lab_arr = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    if image is not None:
        if image.channel_axis is not None:
            problems.append(f"{image_path}: colour image; nnU-Net cases must be single-channel volumes")
        else:
            img_arr, spacing = _as_volume(image)
    if label is not None:
        if label.channel_axis is not None:
            problems.append(f"{label_path}: colour image; a label map must be single-channel")
        else:
            lab_arr, lab_spacing = _as_volume(label)
            if not np.array_equal(lab_arr, np.rint(lab_arr)):
                problems.append(f"{label_path}: label holds non-integer values")
                lab_arr = None
            else:
                values = np.unique(lab_arr).astype(np.int64)
                if values[0] < 0:
                    problems.append(f"{label_path}: label holds negative values {_fmt(values[values < 0])}")
                if allowed is not None:
                    bad = np.setdiff1d(values, np.fromiter(allowed, dtype=np.int64))
                    if bad.size:
                        problems.append(
                            f"{label_path}: label values {_fmt(bad)} are not in dataset.json labels {_fmt(sorted(allowed))}"
                        )
                elif n_classes is not None and values[-1] >= n_classes:
                    problems.append(
                        f"{label_path}: label value {int(values[-1])} is out of range for n_classes={n_classes}"
                    )
            if img_arr is not None and lab_arr is not None:
                if lab_arr.shape != img_arr.shape:
                    problems.append(
                        f"{label_path}: label shape {lab_arr.shape} (D, H, W) does not match image "
                        f"{image_path.name} shape {img_arr.shape}"
                    )
                elif not np.allclose(lab_spacing, spacing, rtol=1e-4, atol=1e-5):
                    problems.append(
                        f"{label_path}: label spacing {tuple(round(s, 5) for s in lab_spacing)} mm does not match "
                        f"image {image_path.name} spacing {tuple(round(s, 5) for s in spacing)} mm"
                    )
    if problems or img_arr is None or lab_arr is None:
        return problems, None
    top = int(lab_arr.max()) if lab_arr.size else 0
    lab_store = lab_arr.astype(np.uint8 if top <= 255 else np.int32)
    return [], (normalise_percentile(img_arr), lab_store, spacing)


def read_pair(
    case: _Case, allowed: frozenset[int] | None, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """`inspect_pair` that raises the first problem as `InputError`."""
    problems, arrays = inspect_pair(case.image, case.label, allowed, n_classes)
    if problems or arrays is None:
        raise InputError(problems[0] if problems else f"{case.image}: cannot be read")
    return arrays


# ------------------------------------------------------------------------------ volume store
class _VolumeStore:
    """Validated, normalised volumes by case: memory-mapped from a disk cache, or kept in a
    small in-memory LRU when no cache folder can be used.  Safe to pickle (DataLoader
    workers): open maps are dropped and re-opened."""

    def __init__(self, cache_dir: Path | None, allowed: frozenset[int] | None, n_classes: int | None) -> None:
        self.cache_dir = cache_dir
        self.allowed = allowed
        self.n_classes = n_classes
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    @property
    def _capacity(self) -> int:
        return 64 if self.cache_dir is not None else 4

    def _key(self, case: _Case) -> str:
        parts: list[Any] = [_CACHE_VERSION]
        for path in (case.image, case.label):
            try:
                st = path.stat()
            except OSError as exc:
                raise InputError(f"{path}: file not found or unreadable ({exc.strerror})") from exc
            parts += [str(path.resolve()), st.st_size, st.st_mtime_ns]
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()

    def _remember(self, key: str, arrays: tuple[np.ndarray, np.ndarray]) -> None:
        self._open[key] = arrays
        self._open.move_to_end(key)
        while len(self._open) > self._capacity:
            self._open.popitem(last=False)

    def _cached(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        if self.cache_dir is None:
            return None
        image_file, label_file = self.cache_dir / f"{key}.image.npy", self.cache_dir / f"{key}.label.npy"
        if not (image_file.is_file() and label_file.is_file()):
            return None
        try:
            image = np.load(image_file, mmap_mode="r", allow_pickle=False)
            label = np.load(label_file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable cache entry %s (%s)", image_file, exc)
            return None
        if image.shape != label.shape or image.ndim != 3:
            return None
        return image, label

    def store(self, case: _Case, image: np.ndarray, label: np.ndarray) -> None:
        """Put validated arrays of ``case`` into the cache (a no-op without a cache folder)."""
        key = self._key(case)
        if self.cache_dir is None:
            self._remember(key, (image, label))
            return
        try:
            for suffix, arr in (("label", label), ("image", image)):
                def write(tmp: Path, arr: np.ndarray = arr) -> None:
                    with open(tmp, "wb") as handle:
                        np.save(handle, np.ascontiguousarray(arr), allow_pickle=False)

                atomic_write(self.cache_dir / f"{key}.{suffix}.npy", write, suffix=".npy")
        except InputError as err:
            logger.warning("%s; keeping volumes in memory instead of the cache folder", err)
            self.cache_dir = None
            self._remember(key, (image, label))

    def volume(self, case: _Case) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 D x H x W in [0, 1], label integer D x H x W) of ``case``.

        Raises:
            InputError: the pair fails a check of `inspect_pair`.
        """
        key = self._key(case)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        arrays = self._cached(key)
        if arrays is None:
            image, label, _ = read_pair(case, self.allowed, self.n_classes)
            self.store(case, image, label)
            arrays = self._cached(key) or (image, label)
        self._remember(key, arrays)
        return arrays


# ------------------------------------------------------------------------------ datasets
class NnUNetSliceDataset(Dataset):
    """Axial training slices of some nnU-Net cases, read lazily.

    Each item is ``dict(image=float32 tensor 1 x H x W in [0, 1], label=int64 tensor H x W,
    name="<case>_slice<NNN>")``.  Slice counts come from the file headers; a volume is read
    (and cached, see the module docstring) the first time one of its slices is asked for.

    Args:
        cases: the cases, in order.
        store: where volumes come from.

    Raises:
        InputError: an unreadable header (at construction); any problem of a case (when one of
            its slices is read).
    """

    def __init__(self, cases: list[_Case], store: _VolumeStore) -> None:
        self.cases = cases
        self.store = store
        depths = [_header_depth(case.image) for case in cases]
        self.depths = depths
        self.ends = np.cumsum(np.asarray(depths, dtype=np.int64)) if depths else np.zeros(0, np.int64)

    @property
    def names(self) -> list[str]:
        """Slice names in order."""
        return [f"{case.name}_slice{z:03d}" for case, d in zip(self.cases, self.depths) for z in range(d)]

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def locate(self, index: int) -> tuple[int, int]:
        """(case position, slice index) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self.ends, index, side="right"))
        start = int(self.ends[k - 1]) if k else 0
        return k, index - start

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, z = self.locate(int(index))
        case = self.cases[k]
        image, label = self.store.volume(case)
        if image.shape[0] != self.depths[k]:
            raise InputError(f"{case.image}: header declares {self.depths[k]} slices, data holds {image.shape[0]}")
        img = torch.from_numpy(np.array(image[z], dtype=np.float32))[None]
        lab = torch.from_numpy(np.array(label[z], dtype=np.int64))
        return {"image": img, "label": lab, "name": f"{case.name}_slice{z:03d}"}


class NnUNetCaseDataset(Dataset):
    """Whole nnU-Net training cases for evaluation.

    Each item is ``dict(image=float32 ndarray D x H x W in [0, 1], label=int64 ndarray
    D x H x W, name=<case id>, spacing=(D, H, W) floats in mm)``.

    Args:
        cases: the cases, in order.
        allowed: label ids dataset.json declares (``None``: not known).
        n_classes: when given, labels must lie in ``0 .. n_classes - 1``.
    """

    def __init__(self, cases: list[_Case], allowed: frozenset[int] | None, n_classes: int | None) -> None:
        self.cases = cases
        self.allowed = allowed
        self.n_classes = n_classes

    @property
    def names(self) -> list[str]:
        """Case ids in order."""
        return [case.name for case in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image, label, spacing = read_pair(case, self.allowed, self.n_classes)
        return {"image": image, "label": label.astype(np.int64), "name": case.name, "spacing": spacing}


# ------------------------------------------------------------------------------ the layout
@dataclass
class _Scan:
    """What the folder holds (computed once per layout object)."""

    meta: dict[str, Any] | None
    meta_problems: list[str]
    file_ending: str
    labels: dict[str, int] | None  # name -> id, from dataset.json
    images: dict[str, dict[int, Path]]  # case -> channel -> path
    no_suffix: dict[str, Path]  # imagesTr files without _NNNN
    unexpected: list[Path]  # imagesTr/labelsTr files with another ending
    label_files: dict[str, Path]  # case -> label path
    test_no_suffix: list[Path]  # imagesTs files without _NNNN


@register_layout
class NnUNetLayout(Layout):
    """An nnU-Net raw dataset folder (see the module docstring).

    Args:
        root: the dataset folder (holds ``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        n_classes: classes including background; when given, dataset.json's labels must fit.
        fold: fold of ``splits_final.json`` / of the default split used for train/val (0).
        n_folds: folds of the default split (5: 80/20).
        seed: seed of the default split (12345, nnU-Net's).
        cache_dir: folder of the volume cache; ``False`` keeps volumes in memory; default
            see the module docstring.
    """

    name = "nnunet"
    splits = SPLITS

    def __init__(self, root: str | os.PathLike, n_classes: int | None = None, **options: Any) -> None:
        super().__init__(root, n_classes, **options)
        unknown = set(options) - {"fold", "n_folds", "seed", "cache_dir"}
        if unknown:
            raise InputError(f"nnunet layout: unknown options {sorted(unknown)}; known: cache_dir, fold, n_folds, seed")
        self.fold = int(options.get("fold", 0))
        self.n_folds = int(options.get("n_folds", 5))
        self.seed = int(options.get("seed", 12345))
        cache = options.get("cache_dir")
        self.cache_dir: Path | None = None if cache is False else (Path(cache) if cache else _default_cache_dir())
        self._scan_result: _Scan | None = None
        self._store: _VolumeStore | None = None

    # -------------------------------------------------------------- dataset.json
    def _read_meta(self) -> tuple[dict[str, Any] | None, list[str]]:
        path = self.root / "dataset.json"
        if not path.is_file():
            return None, [f"{path}: not found (nnU-Net needs channel_names, labels, numTraining, file_ending)"]
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, [f"{path}: not valid JSON ({' '.join(str(exc).split())})"]
        if not isinstance(meta, dict):
            return None, [f"{path}: expected a JSON object"]
        return meta, []

    def _parse_labels(self, meta: dict[str, Any]) -> tuple[dict[str, int] | None, list[str]]:
        path = self.root / "dataset.json"
        raw = meta.get("labels")
        if not isinstance(raw, dict) or not raw:
            return None, [f"{path}: 'labels' must be a non-empty object {{name: id}}"]
        labels: dict[str, int] = {}
        problems: list[str] = []
        v1 = all(isinstance(k, str) and k.strip().isdigit() for k in raw)
        v1 = v1 and all(isinstance(v, str) for v in raw.values())
        for key, value in raw.items():
            name, ident = (value, key) if v1 else (key, value)
            if isinstance(ident, (list, tuple)):
                problems.append(f"{path}: label {name!r} is a region {ident}; region-based labels are not supported")
                continue
            try:
                number = int(ident)
                if isinstance(ident, float) and number != ident:
                    raise ValueError(ident)
            except (TypeError, ValueError):
                problems.append(f"{path}: label {name!r} has id {ident!r}, not an integer")
                continue
            labels[str(name)] = number
        ids = sorted(labels.values())
        if len(set(ids)) != len(ids):
            problems.append(f"{path}: label ids {_fmt(ids)} are not unique")
        elif ids and ids != list(range(len(ids))):
            problems.append(
                f"{path}: label ids {_fmt(ids)} are not consecutive from 0 (nnU-Net needs 0 .. K-1, 0 = background)"
            )
        if self.n_classes is not None and ids and max(ids) >= self.n_classes:
            problems.append(f"{path}: labels go up to {max(ids)}, more than n_classes={self.n_classes} allows")
        return labels, problems

    def _scan(self) -> _Scan:
        if self._scan_result is not None:
            return self._scan_result
        meta, problems = self._read_meta()
        labels: dict[str, int] | None = None
        ending = ""
        if meta is not None:
            labels, label_problems = self._parse_labels(meta)
            problems += label_problems
            problems += _outside_paths(self.root / "dataset.json", meta)
            channels = meta.get("channel_names", meta.get("modality"))
            if isinstance(channels, dict) and len(channels) > 1:
                problems.append(
                    f"{self.root / 'dataset.json'}: {len(channels)} channels {sorted(channels.values())}; this layout "
                    "reads single-channel datasets only"
                )
            declared = meta.get("file_ending")
            if declared is not None:
                if declared not in FILE_ENDINGS:
                    problems.append(
                        f"{self.root / 'dataset.json'}: file_ending {declared!r} is not supported; use one of {', '.join(FILE_ENDINGS)}"
                    )
                else:
                    ending = declared
        images_dir, labels_dir = self.root / "imagesTr", self.root / "labelsTr"

        def files(folder: Path) -> list[Path]:
            if not folder.is_dir():
                return []
            return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())

        image_files, label_files_all, test_files = files(images_dir), files(labels_dir), files(self.root / "imagesTs")
        if not ending:
            found = [next((e for e in FILE_ENDINGS if p.name.endswith(e)), None) for p in image_files]
            counts = {e: found.count(e) for e in FILE_ENDINGS if e in found}
            ending = max(counts, key=counts.get) if counts else ".nii.gz"  # type: ignore[arg-type]
        images: dict[str, dict[int, Path]] = {}
        no_suffix: dict[str, Path] = {}
        unexpected: list[Path] = []
        for path in image_files:
            if not path.name.endswith(ending):
                unexpected.append(path)
                continue
            stem = path.name[: -len(ending)]
            match = _CHANNEL.fullmatch(stem)
            if match is None:
                no_suffix[stem] = path
            else:
                images.setdefault(match["case"], {})[int(match["channel"])] = path
        label_files: dict[str, Path] = {}
        for path in label_files_all:
            if not path.name.endswith(ending):
                unexpected.append(path)
            else:
                label_files[path.name[: -len(ending)]] = path
        test_no_suffix = [
            p for p in test_files if p.name.endswith(ending) and _CHANNEL.fullmatch(p.name[: -len(ending)]) is None
        ]
        self._scan_result = _Scan(
            meta, problems, ending, labels, images, no_suffix, unexpected, label_files, test_no_suffix
        )
        return self._scan_result

    # -------------------------------------------------------------- public helpers
    @property
    def file_ending(self) -> str:
        """The file ending of the dataset (``.nii.gz`` ...)."""
        return self._scan().file_ending

    def class_names(self) -> list[str] | None:
        """Label names ordered by id (background first), or ``None`` without valid labels."""
        labels = self._scan().labels
        if not labels or sorted(labels.values()) != list(range(len(labels))):
            return None
        return [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]

    def _allowed(self) -> frozenset[int] | None:
        labels = self._scan().labels
        return frozenset(labels.values()) if labels else None

    def case_ids(self) -> list[str]:
        """Sorted ids of the training cases that have a ``_0000`` image and a label."""
        scan = self._scan()
        return sorted(c for c in scan.images if 0 in scan.images[c] and c in scan.label_files)

    def _case(self, name: str) -> _Case:
        scan = self._scan()
        channels = scan.images.get(name, {})
        label = scan.label_files.get(name)
        if 0 not in channels:
            raise InputError(f"{self.root / 'imagesTr' / (name + '_0000' + scan.file_ending)}: image file not found")
        if len(channels) > 1:
            extra = sorted(c for c in channels if c)
            raise InputError(
                f"{channels[extra[0]]}: case {name!r} has {len(channels)} channels; this layout reads single-channel cases only"
            )
        if label is None:
            missing = self.root / "labelsTr" / (name + scan.file_ending)
            raise InputError(f"{missing}: label file not found for case {name!r}")
        return _Case(name, channels[0], label)

    def _splits_final(self) -> tuple[list[str], list[str]] | None:
        path = self.root / "splits_final.json"
        if not path.is_file():
            return None
        try:
            folds = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from exc
        if not isinstance(folds, list) or not folds:
            raise InputError(f"{path}: expected a list of folds [{{'train': [...], 'val': [...]}}, ...]")
        if not 0 <= self.fold < len(folds):
            raise InputError(f"{path}: fold {self.fold} requested, the file holds {len(folds)} fold(s)")
        entry = folds[self.fold]
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("train", "val")):
            raise InputError(f"{path}: fold {self.fold} must have 'train' and 'val' lists of case ids")
        train, val = [str(c) for c in entry["train"]], [str(c) for c in entry["val"]]
        outside = next((c for c in train + val if escapes_folder(c)), None)
        if outside is not None:
            raise InputError(f"{path}: fold {self.fold} entry {outside!r} points outside the dataset folder; refused")
        known = set(self.case_ids())
        unknown = [c for c in train + val if c not in known]
        if unknown:
            raise InputError(
                f"{path}: fold {self.fold} names {len(unknown)} case(s) without image and label, e.g. {unknown[0]!r}"
            )
        return train, val

    def split_ids(self, split: str) -> list[str]:
        """Case ids of ``split`` (``"train"``, ``"val"`` or ``"all"``)."""
        if split not in SPLITS:
            raise InputError(f"nnunet layout: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if split == "all":
            return self.case_ids()
        chosen = self._splits_final()
        if chosen is None:
            chosen = kfold_split(self.case_ids(), self.fold, self.n_folds, self.seed)
        return chosen[0] if split == "train" else chosen[1]

    def _volume_store(self) -> _VolumeStore:
        if self._store is None:
            self._store = _VolumeStore(self.cache_dir, self._allowed(), self.n_classes)
        return self._store

    # -------------------------------------------------------------- Layout interface
    def slices(self, split: str) -> Dataset:
        cases = [self._case(name) for name in self.split_ids(split)]
        if not cases:
            raise InputError(f"{self.root}: split {split!r} holds no training case (imagesTr/ + labelsTr/)")
        return NnUNetSliceDataset(cases, self._volume_store())

    def cases(self, split: str) -> Dataset:
        cases = [self._case(name) for name in self.split_ids(split)]
        if not cases:
            raise InputError(f"{self.root}: split {split!r} holds no training case (imagesTr/ + labelsTr/)")
        return NnUNetCaseDataset(cases, self._allowed(), self.n_classes)

    def verify(self) -> list[str]:
        """Every problem at once: dataset.json, names, pairing, and every pair's contents
        (readability, NaN, label values, shape and spacing).  Good pairs are put into the
        volume cache on the way, so that training does not read them a second time."""
        scan = self._scan()
        problems = list(scan.meta_problems)
        ending = scan.file_ending
        if not (self.root / "imagesTr").is_dir():
            problems.append(f"{self.root / 'imagesTr'}: folder not found")
        if not (self.root / "labelsTr").is_dir():
            problems.append(f"{self.root / 'labelsTr'}: folder not found")
        for path in scan.unexpected:
            problems.append(f"{path}: unexpected file; files must end with {ending} (dataset.json file_ending)")
        for stem, path in sorted(scan.no_suffix.items()):
            problems.append(f"{path}: missing channel suffix; name it {stem}_0000{ending}")
        for path in scan.test_no_suffix:
            problems.append(f"{path}: missing channel suffix; name it {path.name[: -len(ending)]}_0000{ending}")
        for case, channels in sorted(scan.images.items()):
            if 0 not in channels:
                problems.append(f"{channels[min(channels)]}: case {case!r} has no channel _0000 image")
            extra = sorted(c for c in channels if c)
            if extra:
                problems.append(
                    f"{channels[extra[0]]}: case {case!r} has {len(channels)} channels; this layout reads single-channel "
                    "cases only (multi-channel datasets are not supported)"
                )
            if case not in scan.label_files:
                missing = self.root / "labelsTr" / (case + ending)
                problems.append(f"{channels[min(channels)]}: image without label ({missing} not found)")
        for case, path in sorted(scan.label_files.items()):
            if case not in scan.images and case not in scan.no_suffix:
                missing = self.root / "imagesTr" / (case + "_0000" + ending)
                problems.append(f"{path}: label without image ({missing} not found)")
        n_cases = len(set(scan.images) | set(scan.label_files) | set(scan.no_suffix))
        if scan.meta is not None and "numTraining" in scan.meta:
            declared = scan.meta["numTraining"]
            if not isinstance(declared, int) or declared != n_cases:
                problems.append(
                    f"{self.root / 'dataset.json'}: numTraining is {declared!r}, imagesTr/labelsTr hold {n_cases} case(s)"
                )
        try:
            self._splits_final()
        except InputError as err:
            problems.append(str(err))
        allowed = self._allowed()
        store = self._volume_store()
        for case in self.case_ids():
            channels = scan.images[case]
            pair_problems, arrays = inspect_pair(channels[0], scan.label_files[case], allowed, self.n_classes)
            problems += pair_problems
            if arrays is not None and len(channels) == 1:
                store.store(_Case(case, channels[0], scan.label_files[case]), arrays[0], arrays[1])
        if not self.case_ids() and not problems:
            problems.append(
                f"{self.root}: no training case (imagesTr/<CASE>_0000{ending} with labelsTr/<CASE>{ending})"
            )
        return problems
