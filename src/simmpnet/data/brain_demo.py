"""The embedded demo data set: brain lobes on the Colin27 ("ch2") T1 MRI.

Nothing has to be downloaded by hand. The Debian package ``mricron-data`` (BSD-3-Clause)
ships a real T1-weighted MRI of one subject (``templates/ch2.nii.gz``, 181 x 217 x 181 at
1 mm) and the AAL atlas drawn on the same scan (``templates/aal.nii.gz``, labels 0-116).
`fetch_mricron_templates` finds or fetches those two files and checks their SHA-256;
`prepare_brain_demo` merges the 116 AAL regions into 8 lobe-level classes plus
background and writes axial slices in the on-disk layout of the paper's Synapse data::

    <out>/train_npz/<case>_sliceNNN.npz     keys image (float32 H x W, [0, 1]), label (uint8 H x W)
    <out>/test_vol_h5/<case>.npy.h5         datasets image (float32 D x H x W), label (uint8 D x H x W),
                                            attribute spacing (D, H, W) in mm
    <out>/lists/train.txt                   one slice name per line, no extension
    <out>/lists/test_vol.txt                one case name per line
    <out>/lists/all.txt, all_vol.txt        the slices and the volumes of every slab
    <out>/dataset.json                      class names, spacing, sources, split rule, cases

so that `simmpnet.data.layouts.synapse` reads it exactly like Synapse or ACDC.  Every slab is
written both as slices and as a volume, so that the synapse layout's ``fold`` / ``n_folds``
options can test each slab once over the folds (``lists/all*.txt``); ``train.txt`` and
``test_vol.txt`` hold the fixed split of the demo.  All slabs come from one subject: folds
measure the variation over regions of one brain, not over patients.

Orientation of the written arrays (after ``nibabel.as_closest_canonical``, i.e. RAS):
D runs inferior -> superior (axial slices), H runs anterior -> posterior (the face points
up), W runs from the subject's left to right (neurological convention).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simmpnet.errors import InputError

from .io import atomic_write, sha256_file

logger = logging.getLogger(__name__)

#: Debian package that ships the two source files.
MRICRON_PACKAGE = "mricron-data"
#: Where the Debian package installs its templates.
SYSTEM_TEMPLATE_DIR = Path("/usr/share/mricron/templates")
#: Path of the templates inside the package's data archive.
_DEB_TEMPLATE_DIR = Path("usr/share/mricron/templates")
T1_FILE = "ch2.nii.gz"
ATLAS_FILE = "aal.nii.gz"
#: SHA-256 of the two source files in mricron-data 1.2.20211006+dfsg-4 (Debian bookworm).
SOURCE_SHA256: dict[str, str] = {
    T1_FILE: "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    ATLAS_FILE: "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
}

DATASET_NAME = "simmpnet-brain-lobes-demo"
FORMAT_VERSION = 2
CLASS_NAMES: tuple[str, ...] = (
    "background",
    "frontal",
    "insula_cingulate",
    "medial_temporal",
    "occipital",
    "parietal",
    "deep_grey",
    "temporal",
    "cerebellum",
)
N_CLASSES = len(CLASS_NAMES)
#: (class, first AAL label, last AAL label), inclusive. Every other value maps to 0.
AAL_MERGE: tuple[tuple[int, int, int], ...] = (
    (1, 1, 28),  # precentral, frontal gyri, rolandic operculum, SMA, olfactory, rectus
    (2, 29, 36),  # insula, anterior / middle / posterior cingulum
    (3, 37, 42),  # hippocampus, parahippocampal gyrus, amygdala
    (4, 43, 56),  # calcarine, cuneus, lingual, occipital gyri, fusiform
    (5, 57, 70),  # postcentral, parietal, supramarginal, angular, precuneus, paracentral
    (6, 71, 78),  # caudate, putamen, pallidum, thalamus
    (7, 79, 90),  # Heschl, temporal gyri and poles
    (8, 91, 116),  # cerebellar hemispheres and vermis
)
AAL_MAX_LABEL = 116

SLAB_SIZE = 10
TEST_EVERY = 5
TEST_REMAINDER = 2
CASE_PREFIX = "brain_slab"
#: The lists of every slab, as slices and as volumes: the names the synapse layout's folds read
#: (`simmpnet.data.layouts.synapse.FOLD_SLICES_LIST`, ``FOLD_CASES_LIST``).
ALL_SLICES_LIST = "all"
ALL_VOLUMES_LIST = "all_vol"
INTENSITY_PERCENTILES = (0.5, 99.5)

_SUBPROCESS_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def default_cache_dir() -> Path:
    """Folder where the two source files are cached.

    ``$SIMMPNET_CACHE/mricron`` when the environment variable ``SIMMPNET_CACHE`` is set,
    else ``~/.cache/simmpnet/mricron``.
    """
    base = os.environ.get("SIMMPNET_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "simmpnet"
    return root / "mricron"


# --------------------------------------------------------------------------------------
# Obtaining the source files
# --------------------------------------------------------------------------------------
def _verified(folder: Path, problems: list[str]) -> bool:
    """True when ``folder`` holds both source files with the expected SHA-256."""
    ok = True
    for name, expected in SOURCE_SHA256.items():
        path = folder / name
        if not path.is_file():
            ok = False
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"{path} has SHA-256 {actual[:12]}..., expected {expected[:12]}...")
            ok = False
    return ok


def _run(cmd: Sequence[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    logger.info("running %s", " ".join(cmd))
    return subprocess.run(
        list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _apt_download(dest: Path, timeout_s: float, problems: list[str]) -> Path | None:
    """Download the ``mricron-data`` .deb into ``dest`` with ``apt-get download``.

    Retries once after ``apt-get update`` (which needs root). Returns the .deb or None.
    """
    if shutil.which("apt-get") is None:
        problems.append("apt-get not found (not a Debian/Ubuntu system)")
        return None
    for attempt in range(2):
        if attempt == 1:
            try:
                upd = _run(["apt-get", "update"], dest, timeout_s)
                if upd.returncode != 0:
                    problems.append(f"apt-get update failed: {_last_line(upd.stderr)}")
            except (subprocess.TimeoutExpired, OSError) as exc:
                problems.append(f"apt-get update failed: {exc}")
        try:
            res = _run(["apt-get", "download", MRICRON_PACKAGE], dest, timeout_s)
        except (subprocess.TimeoutExpired, OSError) as exc:
            problems.append(f"apt-get download {MRICRON_PACKAGE} failed: {exc}")
            continue
        debs = sorted(dest.glob(f"{MRICRON_PACKAGE}_*.deb"))
        if res.returncode == 0 and debs:
            return debs[-1]
        problems.append(f"apt-get download {MRICRON_PACKAGE} failed: {_last_line(res.stderr)}")
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def extract_deb_members(deb: Path, members: Sequence[str], dest: Path) -> None:
    """Extract selected files from a Debian package without ``dpkg``.

    A .deb is an ``ar`` archive holding ``data.tar.{xz,gz,bz2}``; only the listed members
    (paths inside the data archive, e.g. ``usr/share/mricron/templates/aal.nii.gz``) are
    written, under ``dest`` with the same relative paths.

    Raises:
        InputError: the file is not a readable .deb or lacks a member.
    """
    wanted = {m.lstrip("./") for m in members}
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise InputError(f"{deb}: not a Debian package (no ar header)")
        while True:
            header = handle.read(60)
            if len(header) < 60:
                raise InputError(f"{deb}: no data.tar member in the Debian package")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if name.startswith("data.tar"):
                payload = handle.read(size)
                break
            handle.seek(size + (size % 2), os.SEEK_CUR)
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
            found: set[str] = set()
            for info in tar.getmembers():
                rel = info.name.lstrip("./")
                if rel in wanted and info.isfile():
                    src = tar.extractfile(info)
                    if src is None:
                        continue
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(src.read())
                    found.add(rel)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{deb}: cannot read the package's data archive ({exc})") from exc
    missing = wanted - found
    if missing:
        raise InputError(f"{deb}: package lacks {', '.join(sorted(missing))}")


def _unpack_deb(deb: Path, dest: Path, timeout_s: float) -> None:
    """Unpack ``deb`` into ``dest`` with ``dpkg -x`` (pure-Python fallback without dpkg)."""
    if shutil.which("dpkg") is not None:
        res = _run(["dpkg", "-x", str(deb), str(dest)], dest.parent, timeout_s)
        if res.returncode == 0:
            return
        logger.warning("dpkg -x failed (%s); using the built-in extractor", _last_line(res.stderr))
    extract_deb_members(deb, [str(_DEB_TEMPLATE_DIR / n) for n in SOURCE_SHA256], dest)


def _install_from_deb(deb: Path, cache: Path, work: Path, timeout_s: float, problems: list[str]) -> None:
    """Unpack ``deb`` and copy the two verified source files into ``cache``."""
    unpacked = work / "unpacked"
    unpacked.mkdir(exist_ok=True)
    try:
        _unpack_deb(deb, unpacked, timeout_s)
    except (InputError, subprocess.TimeoutExpired, OSError) as exc:
        problems.append(f"cannot unpack {deb}: {exc}")
        return
    for name, expected in SOURCE_SHA256.items():
        src = unpacked / _DEB_TEMPLATE_DIR / name
        if not src.is_file():
            problems.append(f"{deb} does not contain {_DEB_TEMPLATE_DIR / name}")
            return
        actual = sha256_file(src)
        if actual != expected:
            problems.append(
                f"{name} in {deb.name} has SHA-256 {actual[:12]}..., expected {expected[:12]}... "
                "(another package version)"
            )
            return
    for name in SOURCE_SHA256:
        source = unpacked / _DEB_TEMPLATE_DIR / name

        def copy(tmp: Path, source: Path = source) -> None:
            shutil.copyfile(source, tmp)

        atomic_write(cache / name, copy)


def fetch_mricron_templates(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    use_system: bool = True,
    allow_download: bool = True,
    timeout_s: float = _SUBPROCESS_TIMEOUT_S,
) -> Path:
    """Return a folder that holds verified ``ch2.nii.gz`` and ``aal.nii.gz``.

    Tries, in order: the installed package (``/usr/share/mricron/templates``); the cache
    folder; a ``mricron-data_*.deb`` already lying in the cache folder; ``apt-get download
    mricron-data`` into the cache folder (retried once after ``apt-get update``), unpacked
    with ``dpkg -x``. Every file is checked against `SOURCE_SHA256`.

    Args:
        cache_dir: folder that receives the two files; default `default_cache_dir`
            (``$SIMMPNET_CACHE/mricron`` or ``~/.cache/simmpnet/mricron``).
        use_system: look in ``/usr/share/mricron/templates`` first.
        allow_download: run ``apt-get download`` when the files are not found.
        timeout_s: timeout of each subprocess (apt-get, dpkg), in seconds.

    Returns:
        The folder holding both files.

    Raises:
        InputError: the files could not be obtained; the message says how to get them.
    """
    problems: list[str] = []
    if use_system and _verified(SYSTEM_TEMPLATE_DIR, problems):
        logger.info("using the installed %s templates in %s", MRICRON_PACKAGE, SYSTEM_TEMPLATE_DIR)
        return SYSTEM_TEMPLATE_DIR
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if _verified(cache, problems):
        logger.info("using cached templates in %s", cache)
        return cache
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problems.append(f"cannot create {cache}: {exc}")
    if cache.is_dir():
        with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp_name:
            work = Path(tmp_name)
            for deb in sorted(cache.glob(f"{MRICRON_PACKAGE}_*.deb")):
                _install_from_deb(deb, cache, work, timeout_s, problems)
                if _verified(cache, []):
                    return cache
            if allow_download:
                logger.info("downloading %s with apt-get into %s", MRICRON_PACKAGE, cache)
                fetched = _apt_download(work, timeout_s, problems)
                if fetched is not None:
                    _install_from_deb(fetched, cache, work, timeout_s, problems)
        if _verified(cache, problems):
            logger.info("fetched %s and %s into %s", T1_FILE, ATLAS_FILE, cache)
            return cache
    detail = "; ".join(dict.fromkeys(problems)) or "files not found"
    raise InputError(
        f"{cache}: cannot obtain {T1_FILE} and {ATLAS_FILE} from {MRICRON_PACKAGE} ({detail}); "
        f"run `apt-get install {MRICRON_PACKAGE}` or copy both files from "
        f"{SYSTEM_TEMPLATE_DIR} of that package into {cache}"
    )


# --------------------------------------------------------------------------------------
# Label merge, split, intensity
# --------------------------------------------------------------------------------------
def aal_lookup_table() -> np.ndarray:
    """Lookup table AAL label -> lobe class: uint8 array of length 256 (index = AAL value)."""
    lut = np.zeros(256, dtype=np.uint8)
    for cls, first, last in AAL_MERGE:
        lut[first : last + 1] = cls
    return lut


def merge_aal_labels(aal: np.ndarray, source: str = "AAL atlas") -> np.ndarray:
    """Map AAL labels (any shape, integer values 0-116) to the 9 lobe classes (uint8, same shape).

    Raises:
        InputError: negative, non-integer or > 116 values (``source`` names the file).
    """
    arr = np.asarray(aal)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(f"{source}: atlas holds non-integer labels")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > AAL_MAX_LABEL):
        raise InputError(
            f"{source}: atlas labels must lie in 0..{AAL_MAX_LABEL}, found {arr.min()}..{arr.max()}"
        )
    return aal_lookup_table()[arr.astype(np.intp, copy=False)]


@dataclass(frozen=True)
class Slab:
    """One block of consecutive labelled axial slices: one case (volume).

    Attributes:
        index: block number in z order (0-based).
        name: case name, e.g. ``brain_slab02``.
        split: ``"train"`` or ``"test"``.
        z: the axial indices (D axis of the canonical volume) in the block, ascending.
    """

    index: int
    name: str
    split: str
    z: tuple[int, ...]


def split_slabs(
    z_indices: Sequence[int],
    slab_size: int = SLAB_SIZE,
    test_every: int = TEST_EVERY,
    test_remainder: int = TEST_REMAINDER,
) -> list[Slab]:
    """Cut slice indices (sorted ascending first) into blocks of ``slab_size``.

    Block ``i`` is a test case when ``i % test_every == test_remainder``, else train. The
    last block may be shorter.
    """
    if slab_size < 1 or test_every < 1:
        raise InputError(f"split: slab_size and test_every must be >= 1, got {slab_size}, {test_every}")
    zs = sorted(int(z) for z in z_indices)
    slabs = []
    for i, start in enumerate(range(0, len(zs), slab_size)):
        split = "test" if i % test_every == test_remainder else "train"
        slabs.append(Slab(i, f"{CASE_PREFIX}{i:02d}", split, tuple(zs[start : start + slab_size])))
    return slabs


def brain_mask(label_dhw: np.ndarray) -> np.ndarray:
    """Brain outline from an atlas volume (D x H x W): per axial slice, the labelled voxels
    closed (3 iterations) and with holes filled, so white matter and ventricles count too."""
    from scipy import ndimage

    mask = np.zeros(label_dhw.shape, dtype=bool)
    for d in range(label_dhw.shape[0]):
        sl = label_dhw[d] > 0
        if sl.any():
            mask[d] = ndimage.binary_fill_holes(ndimage.binary_closing(sl, iterations=3))
    return mask


def normalise_intensity(
    image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = INTENSITY_PERCENTILES
) -> tuple[np.ndarray, float, float]:
    """Robust [0, 1] scaling: clip at the given percentiles of ``image[mask]``.

    Args:
        image: any-shape intensity array.
        mask: boolean array of the same shape selecting the voxels the percentiles use.
        percentiles: (low, high) percentiles.

    Returns:
        (float32 array in [0, 1], low value, high value).
    """
    values = image[mask]
    if values.size == 0:
        raise InputError("intensity normalisation: empty brain mask")
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if not hi > lo:
        raise InputError(f"intensity normalisation: degenerate range {lo}..{hi}")
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False), lo, hi


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def _load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load a NIfTI, reorient to the closest RAS, return (data X x Y x Z, affine, zooms)."""
    try:
        import nibabel as nib
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise InputError(f"{path}: reading NIfTI needs nibabel (pip install nibabel)") from exc
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    codes = nib.aff2axcodes(img.affine)
    if codes != ("R", "A", "S"):
        raise InputError(f"{path}: cannot reorient to RAS (axis codes {codes})")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, img.affine, zooms  # type: ignore[return-value]


def to_dhw(volume_xyz: np.ndarray) -> np.ndarray:
    """RAS volume (X x Y x Z) -> D x H x W: D = Z (inferior->superior), H = Y reversed
    (anterior at row 0, face up), W = X (subject's left at column 0). Equivalent to
    ``np.rot90(volume[:, :, z])`` for each axial slice."""
    return np.ascontiguousarray(np.transpose(volume_xyz, (2, 1, 0))[:, ::-1, :])


def load_brain_volumes(template_dir: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load T1 and AAL from ``template_dir`` as D x H x W arrays.

    Returns:
        (t1 float32 D x H x W, aal integer D x H x W, spacing (D, H, W) in mm).
    """
    t1_path, aal_path = template_dir / T1_FILE, template_dir / ATLAS_FILE
    t1, t1_aff, t1_zooms = _load_canonical(t1_path)
    aal, aal_aff, _ = _load_canonical(aal_path)
    if t1.shape != aal.shape or not np.allclose(t1_aff, aal_aff, atol=1e-3):
        raise InputError(f"{aal_path}: atlas grid {aal.shape} does not match {t1_path} grid {t1.shape}")
    spacing = (t1_zooms[2], t1_zooms[1], t1_zooms[0])
    return to_dhw(t1).astype(np.float32), to_dhw(aal), spacing


# --------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------
def _fingerprint() -> dict[str, Any]:
    """Everything that determines the prepared data; a stored copy equal to it means done."""
    return {
        "dataset": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        "sources_sha256": dict(SOURCE_SHA256),
        "class_names": list(CLASS_NAMES),
        "aal_merge": [list(r) for r in AAL_MERGE],
        "split": {"slab_size": SLAB_SIZE, "test_every": TEST_EVERY, "test_remainder": TEST_REMAINDER},
        "intensity_percentiles": list(INTENSITY_PERCENTILES),
        "orientation": "D inferior->superior, H anterior->posterior, W left->right",
    }


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _is_prepared(out: Path) -> bool:
    """True when ``out/dataset.json`` matches `_fingerprint` and every listed file exists."""
    manifest_path = out / "dataset.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("fingerprint") != _fingerprint():
            return False
        train = _read_list(out / "lists" / "train.txt")
        test = _read_list(out / "lists" / "test_vol.txt")
        slices = _read_list(out / "lists" / f"{ALL_SLICES_LIST}.txt")
        volumes = _read_list(out / "lists" / f"{ALL_VOLUMES_LIST}.txt")
    except (OSError, ValueError, AttributeError):
        return False
    if len(train) != manifest.get("n_train_slices") or len(test) != manifest.get("n_test_cases"):
        return False
    if len(slices) != manifest.get("n_slices") or len(volumes) != len(manifest.get("cases", ())):
        return False
    return all((out / "train_npz" / f"{n}.npz").is_file() for n in slices) and all(
        (out / "test_vol_h5" / f"{n}.npy.h5").is_file() for n in volumes
    )


def _check_output_folder(out: Path) -> None:
    """Refuse to write into a folder that holds some other data set."""
    manifest_path = out / "dataset.json"
    if manifest_path.is_file():
        try:
            name = json.loads(manifest_path.read_text(encoding="utf-8")).get("fingerprint", {}).get("dataset")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != DATASET_NAME:
            raise InputError(f"{manifest_path}: folder holds another data set; choose an empty output folder")
    for sub in ("train_npz", "test_vol_h5"):
        folder = out / sub
        if folder.is_dir():
            foreign = [p.name for p in folder.iterdir() if not p.name.startswith((CASE_PREFIX, "."))]
            if foreign:
                raise InputError(
                    f"{folder}: holds files that are not brain-demo slices (e.g. {foreign[0]}); "
                    "choose an empty output folder"
                )


def _save_npz(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, image=image, label=label)

    atomic_write(path, write)


def _save_h5(path: Path, image: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> None:
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=image, compression="gzip", compression_opts=4)
            f.create_dataset("label", data=label, compression="gzip", compression_opts=4)
            f.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)

    atomic_write(path, write)


def prepare_brain_demo(
    out_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Prepare the brain-lobes demo data set in the Synapse layout (see module docstring).

    Idempotent: when ``out_dir/dataset.json`` matches this code's settings and every listed
    file exists, nothing is fetched or written. Every file is written atomically, and
    ``dataset.json`` last, so an interrupted run is simply redone.

    Args:
        out_dir: output folder (created if needed); must be empty or an earlier brain demo.
        cache_dir: where the source files are cached; see `fetch_mricron_templates`.

    Returns:
        ``Path(out_dir)``.

    Raises:
        InputError: the source files cannot be obtained or read, or ``out_dir`` holds
            another data set.
    """
    out = Path(out_dir).expanduser()
    if _is_prepared(out):
        logger.info("brain demo already prepared in %s", out)
        return out
    _check_output_folder(out)
    src_dir = fetch_mricron_templates(cache_dir)
    t1, aal, spacing = load_brain_volumes(src_dir)
    label = merge_aal_labels(aal, source=str(src_dir / ATLAS_FILE))
    image, lo, hi = normalise_intensity(t1, brain_mask(aal))
    labelled_z = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1))
    slabs = split_slabs(labelled_z.tolist())
    logger.info(
        "brain demo: %d labelled axial slices -> %d slabs (%d test)",
        len(labelled_z), len(slabs), sum(s.split == "test" for s in slabs),
    )

    train_dir, test_dir, list_dir = out / "train_npz", out / "test_vol_h5", out / "lists"
    for folder in (train_dir, test_dir, list_dir):
        folder.mkdir(parents=True, exist_ok=True)
    # Every slab as a volume and as slices: the fixed split lists a part of them, the folds
    # of the synapse layout (lists/all*.txt) test each slab once.
    slice_names: list[str] = []
    train_names: list[str] = []
    for slab in slabs:
        zs = list(slab.z)
        _save_h5(test_dir / f"{slab.name}.npy.h5", image[zs], label[zs], spacing)
        for j, z in enumerate(zs):
            name = f"{slab.name}_slice{j:03d}"
            _save_npz(train_dir / f"{name}.npz", image[z], label[z])
            slice_names.append(name)
            if slab.split == "train":
                train_names.append(name)
    test_names = [slab.name for slab in slabs if slab.split == "test"]

    # Remove slices of an older preparation that this one no longer lists.
    keep = {f"{n}.npz" for n in slice_names} | {f"{s.name}.npy.h5" for s in slabs}
    for folder in (train_dir, test_dir):
        for p in folder.iterdir():
            if p.name.startswith(CASE_PREFIX) and p.name not in keep:
                p.unlink()

    _write_text_atomic(list_dir / "train.txt", "".join(f"{n}\n" for n in train_names))
    _write_text_atomic(list_dir / "test_vol.txt", "".join(f"{n}\n" for n in test_names))
    _write_text_atomic(list_dir / f"{ALL_SLICES_LIST}.txt", "".join(f"{n}\n" for n in slice_names))
    _write_text_atomic(list_dir / f"{ALL_VOLUMES_LIST}.txt", "".join(f"{s.name}\n" for s in slabs))
    manifest = {
        "name": DATASET_NAME,
        "task": "brain lobes",
        "description": "Axial slices of the Colin27 T1 MRI with the AAL atlas merged into lobes",
        "class_names": list(CLASS_NAMES),
        "n_classes": N_CLASSES,
        "aal_to_class": {CLASS_NAMES[c]: [first, last] for c, first, last in AAL_MERGE},
        "spacing": list(spacing),
        "spacing_order": "D, H, W in mm",
        "orientation": _fingerprint()["orientation"],
        "shape_hw": [int(image.shape[1]), int(image.shape[2])],
        "sources": {
            name: {"package": MRICRON_PACKAGE, "path": f"/{_DEB_TEMPLATE_DIR / name}",
                   "sha256": sha, "license": "BSD-3-Clause"}
            for name, sha in SOURCE_SHA256.items()
        },
        "split_rule": (
            f"labelled axial slices in z order cut into blocks of {SLAB_SIZE}; block i is one case; "
            f"test when i % {TEST_EVERY} == {TEST_REMAINDER}, else train"
        ),
        "folds": (
            f"every slab is also written as slices and as a volume (lists/{ALL_SLICES_LIST}.txt, "
            f"lists/{ALL_VOLUMES_LIST}.txt): the synapse layout options fold / n_folds test slab i in fold "
            "i % n_folds; all slabs come from one subject, so folds vary the brain region, not the patient"
        ),
        "intensity": {
            "rule": ("clip at the 0.5 / 99.5 percentiles of the brain voxels (AAL-labelled voxels, closed "
                     "and hole-filled per axial slice) of the whole volume, scale to [0, 1]"),
            "low": lo,
            "high": hi,
        },
        "cases": [
            {"name": s.name, "split": s.split, "z_first": s.z[0], "n_slices": len(s.z)} for s in slabs
        ],
        "n_train_slices": len(train_names),
        "n_test_cases": len(test_names),
        "n_slices": len(slice_names),
        "fingerprint": _fingerprint(),
    }
    _write_text_atomic(out / "dataset.json", json.dumps(manifest, indent=2) + "\n")
    logger.info("brain demo written to %s (%d train slices, %d test cases)", out, len(train_names), len(test_names))
    return out
