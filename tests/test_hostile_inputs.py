"""A corpus of hostile inputs for every reader and every command (train, evaluate, predict,
verify, prepare), generated here: no binary fixture is committed.

Each case builds its files in a fresh folder and returns the command line to run.  The
command must end with exit code 2 (1 for ``verify``, which lists problems), exactly one line
on stderr that names the offending file and the problem, no traceback, and no partial file in
the output folder.  Most cases run ``simmpnet.cli.main`` in-process; a few run a real
subprocess, and one checks that ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from PIL import Image, ImageFile

from conftest import cli_env
from simmpnet.cli import main
from simmpnet.data.io import MAX_PIXELS
from simmpnet.errors import CheckpointError, SimMPNetError
from simmpnet.training import TrainConfig, Trainer

N_CLASSES = 3
SIDE = 24


# ---------------------------------------------------------------------------------- base data
def _slice(seed: int, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A small image in [0, 1] and a label with classes 0, 1, 2."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    label = np.zeros((side, side), np.uint8)
    label[(yy - side // 2) ** 2 + (xx - side // 2) ** 2 < (side // 3) ** 2] = 1
    label[(yy - side // 2) ** 2 + (xx - side // 2) ** 2 < (side // 6) ** 2] = 2
    image = np.clip(0.3 * label + rng.random((side, side)) * 0.4, 0, 1).astype(np.float32)
    return image, label


def make_synapse(root: Path) -> Path:
    """A tiny dataset in the Synapse layout: 4 training slices, 2 test volumes of 3 slices."""
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    names = [f"case0001_slice{z:03d}" for z in range(4)]
    for z, name in enumerate(names):
        image, label = _slice(z)
        np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
    for case in ("case0002", "case0003"):
        pairs = [_slice(10 + z) for z in range(3)]
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f.create_dataset("image", data=np.stack([p[0] for p in pairs]))
            f.create_dataset("label", data=np.stack([p[1] for p in pairs]))
            f.attrs["spacing"] = np.array([2.0, 0.8, 0.8])
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "lists" / "test_vol.txt").write_text("case0002\ncase0003\n")
    return root


def make_folder2d(root: Path, names: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """A tiny folder2d dataset: grey PNG pictures and 8-bit class-id masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, name in enumerate(names):
        image, label = _slice(seed, 16)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "masks" / f"{name}.png")
    return root


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def make_nnunet(root: Path) -> Path:
    """A tiny nnU-Net raw dataset of two single-channel cases."""
    root.mkdir(parents=True)
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in ("c1", "c2"):
        volume = np.stack([_slice(z, 12)[0] for z in range(3)], axis=-1)  # X x Y x Z
        label = np.stack([_slice(z, 12)[1] for z in range(3)], axis=-1)
        _nifti(root / "imagesTr" / f"{case}_0000.nii.gz", volume)
        _nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    return root


ISIC_IN, ISIC_GT = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"


def make_isic(root: Path, n: int = 3) -> Path:
    """ISIC 2018 Task 1 as distributed, three small pictures."""
    (root / ISIC_IN).mkdir(parents=True)
    (root / ISIC_GT).mkdir(parents=True)
    for i in range(n):
        image, label = _slice(i, 16)
        Image.fromarray((np.repeat(image[..., None], 3, -1) * 255).astype(np.uint8)).save(root / ISIC_IN / f"ISIC_{i:07d}.jpg")
        Image.fromarray(((label > 0) * 255).astype(np.uint8)).save(root / ISIC_GT / f"ISIC_{i:07d}_segmentation.png")
    return root


def make_synapse_raw(root: Path) -> Path:
    """The Synapse download, two small CT cases (HU and organ ids 0..13)."""
    for case in (1, 2):
        rng = np.random.default_rng(case)
        _nifti(root / "RawData/Training/img" / f"img{case:04d}.nii.gz", rng.integers(-500, 500, (12, 12, 3)).astype(np.int16))
        _nifti(root / "RawData/Training/label" / f"label{case:04d}.nii.gz", rng.integers(0, 14, (12, 12, 3)).astype(np.uint8))
    return root


def png_bytes(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def constant_png(width: int, height: int) -> bytes:
    """A valid grey PNG of ``width x height`` black pixels, deflated row by row: a 20000 x 20000
    picture (400 MB decoded) is a file of about 400 kB."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join([deflate.compress(row) for _ in range(height)] + [deflate.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _OpensAFile:
    """Pickles as a call to ``open(marker, "w")``: a checkpoint that would run code on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@dataclass(frozen=True)
class Base:
    """Built once per session: a valid dataset, a checkpoint trained on it, a huge PNG."""

    data: Path
    checkpoint: Path
    huge_png: bytes


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("hostile_base")
    data = make_synapse(root / "data")
    config = {
        "data_root": str(data), "n_classes": N_CLASSES, "model": "unet", "input_size": 32,
        "model_overrides": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
        "epochs": 1, "batch_size": 4, "max_steps": 1, "val_list": None, "device": "cpu",
        "progress": False, "output_dir": str(root / "run"),
    }
    Trainer(TrainConfig.from_dict(config)).fit()
    huge = constant_png(20000, 20000)
    assert len(huge) < 1_000_000  # the bomb stays cheap to write and to ship
    return Base(data, root / "run" / "last.pt", huge)


# ---------------------------------------------------------------------------------- the corpus
@dataclass
class Env:
    """What a case builder gets: its own folder, the session's base data, a monkeypatch, and
    a list of undo actions run after the case (e.g. giving a folder its permissions back)."""

    tmp: Path
    base: Base
    monkeypatch: pytest.MonkeyPatch
    undo: list[Callable[[], object]] = field(default_factory=list)

    def lock(self, folder: Path) -> None:
        """``chmod 000`` on ``folder`` until the case is over."""
        folder.chmod(0)
        self.undo.append(lambda: folder.chmod(0o755))

    def file(self, name: str, content: bytes = b"") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def synapse(self) -> Path:
        data = self.tmp / "data"
        shutil.copytree(self.base.data, data)
        return data

    def predict(self, source: Path, checkpoint: Path | None = None) -> Hostile:
        out = self.tmp / "pred"
        argv = ["--quiet", "predict", "--checkpoint", str(checkpoint or self.base.checkpoint), "--input", str(source), "--output", str(out)]
        return Hostile(argv, (), out)

    def evaluate(self, data: Path) -> Hostile:
        out = self.tmp / "eval"
        argv = ["--quiet", "evaluate", "--checkpoint", str(self.base.checkpoint), "--data", str(data), "--output", str(out)]
        return Hostile(argv, (), out)

    def train(self, data: Path, layout: str = "synapse") -> Hostile:
        out = self.tmp / "run"
        config = {
            "data_root": str(data), "layout": layout, "n_classes": N_CLASSES, "model": "unet", "input_size": 32,
            "model_overrides": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
            "epochs": 1, "batch_size": 2, "val_list": None, "device": "cpu", "progress": False, "output_dir": str(out),
        }
        path = self.tmp / "train.yaml"
        path.write_text(yaml.safe_dump(config))
        return Hostile(["--quiet", "train", "--config", str(path), "--max-steps", "1"], (), out)

    def verify(self, data: Path, layout: str, *sets: str) -> Hostile:
        argv = ["--quiet", "verify", "--data", str(data), "--layout", layout, "--n-classes", str(N_CLASSES)]
        for item in sets:
            argv += ["--layout-option", item]
        return Hostile(argv, (), None, code=1)

    def prepare(self, dataset: str, raw: Path, *sets: str) -> Hostile:
        out = self.tmp / "prepared"
        argv = ["--quiet", "prepare", dataset, "--raw", str(raw), "--output", str(out)]
        for item in sets:
            argv += ["--converter-option", item]
        return Hostile(argv, (), out)

    def forbid_decoding_large_pictures(self) -> Callable[[], str | None]:
        """Fail the test if Pillow starts decoding a picture above the pixel limit; returns a
        check that the process did not grow by the 400 MB such a picture needs."""
        original = ImageFile.ImageFile.load

        def guarded(im):
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise AssertionError(f"decoded a {im.size} picture despite the pixel limit")
            return original(im)

        self.monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux

        def grew() -> str | None:
            growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
            return f"peak memory grew by {growth} kB" if growth > 100_000 else None

        return grew


@dataclass
class Hostile:
    """A command line that must fail cleanly.

    Attributes:
        argv: arguments of ``simmpnet``.
        needles: what the error line must contain (the file's name, a word of the problem).
        out: output folder that must end up without partial files.
        code: expected exit code.
        keep: names of files allowed in ``out`` afterwards (complete results of earlier inputs).
        check: called after the run; returns a reason when something else went wrong.
    """

    argv: list[str]
    needles: tuple[str, ...]
    out: Path | None
    code: int = 2
    keep: set[str] = field(default_factory=set)
    check: Callable[[], str | None] = lambda: None

    def expect(self, *needles: str, keep: set[str] | None = None) -> Hostile:
        self.needles = needles
        self.keep = keep or set()
        return self


CASES: dict[str, Callable[[Env], Hostile]] = {}


def case(builder: Callable[[Env], Hostile]) -> Callable[[Env], Hostile]:
    CASES[builder.__name__] = builder
    return builder


#: Cases that need ``chmod 000`` to stop this process from reading a folder.
NEEDS_PERMISSIONS = {"predict_input_folder_unreadable", "verify_folder_unreadable"}
#: Runs a command without root's right to read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
WITHOUT_DAC = [
    "setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"
]


def _chmod_protects(tmp: Path) -> bool:
    """Whether ``chmod 000`` stops this process from reading (not as root with its DAC
    override capability)."""
    probe = tmp / "probe"
    probe.mkdir()
    probe.chmod(0)
    try:
        os.listdir(probe)
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        probe.rmdir()
    return False


def _run_cli(argv: list[str], prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "simmpnet", *argv], capture_output=True, text=True, env=cli_env(), timeout=120)


# -- predict: the input files --------------------------------------------------------------
@case
def predict_png_zero_bytes(env: Env) -> Hostile:
    return env.predict(env.file("empty.png")).expect("empty.png", "empty")


@case
def predict_png_truncated(env: Env) -> Hostile:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    return env.predict(env.file("cut.png", data[: len(data) // 2])).expect("cut.png", "truncated")


@case
def predict_png_wrong_magic(env: Env) -> Hostile:
    return env.predict(env.file("text.png", b"just text pretending to be a picture " * 4)).expect("text.png", "magic")


@case
def predict_jpeg_truncated(env: Env) -> Hostile:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return env.predict(env.file("cut.jpg", buf.getvalue()[:300])).expect("cut.jpg", "truncated")


@case
def predict_png_1x1(env: Env) -> Hostile:
    return env.predict(env.file("dot.png", png_bytes(np.zeros((1, 1), np.uint8)))).expect("dot.png", "1 x 1")


@case
def predict_png_20000x20000(env: Env) -> Hostile:
    hostile = env.predict(env.file("bomb.png", env.base.huge_png)).expect("bomb.png", "limit")
    hostile.check = env.forbid_decoding_large_pictures()
    return hostile


@case
def predict_tiff_float_nan(env: Env) -> Hostile:
    values = np.ones((8, 8), np.float32)
    values[3, 3] = np.nan
    path = env.tmp / "nan.tif"
    Image.fromarray(values, mode="F").save(path)
    return env.predict(path).expect("nan.tif", "NaN")


@case
def predict_tiff_multipage(env: Env) -> Hostile:
    path = env.tmp / "pages.tif"
    frames = [Image.fromarray(np.full((8, 8), i, np.uint8)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return env.predict(path).expect("pages.tif", "frames")


@case
def predict_nifti_zero_bytes(env: Env) -> Hostile:
    return env.predict(env.file("empty.nii.gz")).expect("empty.nii.gz", "empty")


@case
def predict_nifti_truncated(env: Env) -> Hostile:
    data = gzip.compress(_nifti(env.tmp / "src" / "v.nii", np.ones((16, 16, 8), np.float32)).read_bytes())
    return env.predict(env.file("cut.nii.gz", data[: len(data) // 2])).expect("cut.nii.gz", "nifti")


@case
def predict_nifti_broken_header(env: Env) -> Hostile:
    raw = bytearray(_nifti(env.tmp / "src" / "v.nii", np.ones((8, 8, 4), np.float32)).read_bytes())
    raw[70:72] = struct.pack("<h", 9999)  # no such datatype code
    return env.predict(env.file("header.nii", bytes(raw))).expect("header.nii", "nifti")


@case
def predict_nifti_wrong_magic(env: Env) -> Hostile:
    raw = bytearray(_nifti(env.tmp / "src" / "v.nii", np.ones((8, 8, 4), np.float32)).read_bytes())
    raw[344:348] = b"zz9\x00"  # the magic must be n+1
    return env.predict(env.file("magic.nii", bytes(raw))).expect("magic.nii", "nifti")


@case
def predict_nifti_4d(env: Env) -> Hostile:
    return env.predict(_nifti(env.tmp / "series.nii.gz", np.ones((8, 8, 4, 3), np.float32))).expect("series.nii.gz", "volumes")


@case
def predict_nifti_1d(env: Env) -> Hostile:
    return env.predict(_nifti(env.tmp / "line.nii.gz", np.ones((10,), np.float32))).expect("line.nii.gz", "1-D")


@case
def predict_nifti_nan(env: Env) -> Hostile:
    volume = np.ones((8, 8, 4), np.float32)
    volume[2, 2, 2] = np.nan
    return env.predict(_nifti(env.tmp / "nan.nii.gz", volume)).expect("nan.nii.gz", "NaN")


@case
def predict_nifti_header_declares_8g_voxels(env: Env) -> Hostile:
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.uint8)
    return env.predict(env.file("huge.nii", header.binaryblock + b"\x00" * 4)).expect("huge.nii", "limit")


@case
def predict_npz_inf(env: Env) -> Hostile:
    array = np.ones((2, 8, 8), np.float32)
    array[1, 0, 0] = np.inf
    path = env.tmp / "inf.npz"
    np.savez(path, image=array)
    return env.predict(path).expect("inf.npz", "infinite")


@case
def predict_npz_pickled_objects(env: Env) -> Hostile:
    path = env.tmp / "objects.npz"
    np.savez(path, image=np.array([{"a": 1}, None], dtype=object))
    return env.predict(path).expect("objects.npz", "pickled")


@case
def predict_npz_wrong_magic(env: Env) -> Hostile:
    return env.predict(env.file("zip.npz", b"PK\x03\x04 not really a zip archive" * 8)).expect("zip.npz", "npz")


@case
def predict_h5_wrong_magic(env: Env) -> Hostile:
    return env.predict(env.file("fake.h5", b"\x89HDF\r\n\x1a\n but nothing after the signature")).expect("fake.h5", "hdf5")


@case
def predict_h5_declares_4g_voxels(env: Env) -> Hostile:
    path = env.tmp / "huge.h5"
    with h5py.File(path, "w") as f:  # chunked and never written: a tiny file with a huge shape
        f.create_dataset("image", shape=(1024, 1024, 1024), dtype="f4", chunks=(1, 64, 64))
    return env.predict(path).expect("huge.h5", "limit")


@case
def predict_mha_truncated(env: Env) -> Hostile:
    path = env.tmp / "cut.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 16, 16), np.float32)), str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    return env.predict(path).expect("cut.mha", "corrupt")


@case
def predict_input_missing(env: Env) -> Hostile:
    return env.predict(env.tmp / "absent.png").expect("absent.png", "not found")


@case
def predict_input_folder_without_pictures(env: Env) -> Hostile:
    env.file("inputs/notes.txt", b"no pictures here")
    return env.predict(env.tmp / "inputs").expect("inputs", "no supported")


@case
def predict_input_below_a_file(env: Env) -> Hostile:
    env.file("inputs", b"a file where a folder is expected")
    return env.predict(env.tmp / "inputs" / "scan.png").expect("scan.png", "not found")


@case
def predict_input_folder_unreadable(env: Env) -> Hostile:
    env.file("inputs/a.png", png_bytes(np.zeros((8, 8), np.uint8)))
    env.lock(env.tmp / "inputs")
    return env.predict(env.tmp / "inputs").expect("inputs", "cannot list")


@case
def predict_output_is_a_file(env: Env) -> Hostile:
    source = env.file("ok.png", png_bytes((_slice(0)[0] * 255).astype(np.uint8)))
    hostile = env.predict(source)
    hostile.out.write_bytes(b"a file where the output folder should be")
    return hostile.expect("pred", "not a folder")


@case
def predict_folder_one_bad_among_good_stop_on_error(env: Env) -> Hostile:
    good = png_bytes((_slice(0)[0] * 255).astype(np.uint8))
    env.file("inputs/a_good.png", good)
    env.file("inputs/b_bad.png", good[: len(good) // 2])
    env.file("inputs/c_good.png", good)
    # Files are predicted in name order and written one at a time: a_good is complete,
    # b_bad stops the run (--stop-on-error), c_good is never started.
    hostile = env.predict(env.tmp / "inputs")
    hostile.argv.append("--stop-on-error")
    return hostile.expect("b_bad.png", "truncated", keep={"a_good.png"})


# -- predict: the checkpoint ---------------------------------------------------------------
def _payload(env: Env) -> dict:
    return torch.load(env.base.checkpoint, weights_only=True)


def _good_input(env: Env) -> Path:
    return env.file("in.png", png_bytes((_slice(0)[0] * 255).astype(np.uint8)))


@case
def checkpoint_missing(env: Env) -> Hostile:
    return env.predict(_good_input(env), env.tmp / "nope.pt").expect("nope.pt", "not found")


@case
def checkpoint_is_a_folder(env: Env) -> Hostile:
    (env.tmp / "model.pt").mkdir()
    return env.predict(_good_input(env), env.tmp / "model.pt").expect("model.pt", "folder")


@case
def checkpoint_zero_bytes(env: Env) -> Hostile:
    return env.predict(_good_input(env), env.file("empty.pt")).expect("empty.pt", "empty")


@case
def checkpoint_truncated(env: Env) -> Hostile:
    data = env.base.checkpoint.read_bytes()
    return env.predict(_good_input(env), env.file("cut.pt", data[: len(data) // 2])).expect("cut.pt", "not a readable checkpoint")


@case
def checkpoint_wrong_magic(env: Env) -> Hostile:
    path = env.file("text.pt", b"hello, I am not a checkpoint\n" * 10)
    return env.predict(_good_input(env), path).expect("text.pt", "not a readable checkpoint")


@case
def checkpoint_pickled_code(env: Env) -> Hostile:
    marker = env.tmp / "code_ran"
    path = env.tmp / "evil.pt"
    torch.save({"format": "simmpnet-train", "model": {"payload": _OpensAFile(marker)}}, path)
    assert not marker.exists()
    hostile = env.predict(_good_input(env), path).expect("evil.pt", "refused")
    hostile.check = lambda: "the checkpoint ran code on load" if marker.exists() else None
    return hostile


@case
def checkpoint_not_a_dictionary(env: Env) -> Hostile:
    path = env.tmp / "list.pt"
    torch.save([torch.zeros(3)], path)
    return env.predict(_good_input(env), path).expect("list.pt", "dictionary")


@case
def checkpoint_without_model_part(env: Env) -> Hostile:
    payload = _payload(env)
    del payload["model"]
    path = env.tmp / "nomodel.pt"
    torch.save(payload, path)
    return env.predict(_good_input(env), path).expect("nomodel.pt", "'model'")


@case
def checkpoint_for_another_model(env: Env) -> Hostile:
    payload = _payload(env)
    payload["model"]["kwargs"]["out_channels"] = 5  # the weights are those of a 3-class network
    path = env.tmp / "other.pt"
    torch.save(payload, path)
    return env.predict(_good_input(env), path).expect("other.pt", "size mismatch")


@case
def checkpoint_from_a_newer_version(env: Env) -> Hostile:
    payload = _payload(env)
    payload["version"] = 99
    path = env.tmp / "future.pt"
    torch.save(payload, path)
    return env.predict(_good_input(env), path).expect("future.pt", "newer")


@case
def checkpoint_nan_weights(env: Env) -> Hostile:
    payload = _payload(env)
    weights = payload["model"]["state_dict"]
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key].view(-1)[0] = float("nan")
    path = env.tmp / "nan.pt"
    torch.save(payload, path)
    return env.predict(_good_input(env), path).expect("nan.pt", "NaN")


# -- evaluate: Synapse volumes and lists ---------------------------------------------------
def _rewrite_h5(path: Path, **arrays: np.ndarray) -> None:
    with h5py.File(path, "r") as f:
        values = {"image": f["image"][()], "label": f["label"][()]}
    values.update(arrays)
    with h5py.File(path, "w") as f:
        for key, value in values.items():
            f.create_dataset(key, data=value)


@case
def evaluate_volume_inf(env: Env) -> Hostile:
    data = env.synapse()
    path = data / "test_vol_h5" / "case0002.npy.h5"
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    image[1, 3, 3] = np.inf
    _rewrite_h5(path, image=image)
    return env.evaluate(data).expect("case0002.npy.h5", "Inf")


@case
def evaluate_label_255(env: Env) -> Hostile:
    data = env.synapse()
    path = data / "test_vol_h5" / "case0002.npy.h5"
    label = np.zeros((3, SIDE, SIDE), np.uint8)
    label[0, :4, :4] = 255
    _rewrite_h5(path, label=label)
    return env.evaluate(data).expect("case0002.npy.h5", "255")


@case
def evaluate_label_above_class_count(env: Env) -> Hostile:
    data = env.synapse()
    label = np.zeros((3, SIDE, SIDE), np.uint8)
    label[2, 5, 5] = N_CLASSES
    _rewrite_h5(data / "test_vol_h5" / "case0002.npy.h5", label=label)
    return env.evaluate(data).expect("case0002.npy.h5", "out of range")


@case
def evaluate_image_label_shape_mismatch(env: Env) -> Hostile:
    data = env.synapse()
    _rewrite_h5(data / "test_vol_h5" / "case0002.npy.h5", label=np.zeros((3, SIDE, SIDE - 2), np.uint8))
    return env.evaluate(data).expect("case0002.npy.h5", "does not match")


@case
def evaluate_volume_zero_bytes(env: Env) -> Hostile:
    data = env.synapse()
    (data / "test_vol_h5" / "case0002.npy.h5").write_bytes(b"")
    return env.evaluate(data).expect("case0002.npy.h5", "HDF5")


@case
def evaluate_volume_truncated(env: Env) -> Hostile:
    data = env.synapse()
    path = data / "test_vol_h5" / "case0002.npy.h5"
    path.write_bytes(path.read_bytes()[:1500])
    return env.evaluate(data).expect("case0002.npy.h5", "HDF5")


@case
def evaluate_list_names_a_missing_volume(env: Env) -> Hostile:
    data = env.synapse()
    (data / "lists" / "test_vol.txt").write_text("case0002\ncase0099\n")
    return env.evaluate(data).expect("case0099.npy.h5", "not found")


@case
def evaluate_list_escapes_root(env: Env) -> Hostile:
    data = env.synapse()
    (data / "lists" / "test_vol.txt").write_text("case0002\n../../etc/passwd\n")
    return env.evaluate(data).expect("test_vol.txt", "../../etc/passwd", "outside")


@case
def evaluate_list_absolute_path(env: Env) -> Hostile:
    data = env.synapse()
    (data / "lists" / "test_vol.txt").write_text("/etc/passwd\n")
    return env.evaluate(data).expect("test_vol.txt", "/etc/passwd", "outside")


@case
def evaluate_data_is_a_file(env: Env) -> Hostile:
    return env.evaluate(env.file("data", b"a file where the dataset folder should be")).expect("data", "not found")


@case
def evaluate_output_is_a_file(env: Env) -> Hostile:
    hostile = env.evaluate(env.synapse())
    hostile.out.write_bytes(b"a file where the output folder should be")
    return hostile.expect("eval", "not a folder")


# -- train: Synapse slices -----------------------------------------------------------------
def _rewrite_npz(path: Path, **arrays: np.ndarray) -> None:
    with np.load(path) as f:
        values = {"image": f["image"], "label": f["label"]}
    values.update(arrays)
    np.savez(path, **values)


@case
def train_slice_label_255(env: Env) -> Hostile:
    data = env.synapse()
    label = _slice(1)[1]
    label[0, 0] = 255
    _rewrite_npz(data / "train_npz" / "case0001_slice001.npz", label=label)
    return env.train(data).expect("case0001_slice001.npz", "255")


@case
def train_slice_nan(env: Env) -> Hostile:
    data = env.synapse()
    image = _slice(2)[0]
    image[4, 4] = np.nan
    _rewrite_npz(data / "train_npz" / "case0001_slice002.npz", image=image)
    return env.train(data).expect("case0001_slice002.npz", "NaN")


@case
def train_slice_zero_bytes(env: Env) -> Hostile:
    data = env.synapse()
    (data / "train_npz" / "case0001_slice000.npz").write_bytes(b"")
    return env.train(data).expect("case0001_slice000.npz", "corrupt")


@case
def train_slice_truncated(env: Env) -> Hostile:
    data = env.synapse()
    path = data / "train_npz" / "case0001_slice003.npz"
    path.write_bytes(path.read_bytes()[:400])
    return env.train(data).expect("case0001_slice003.npz", "corrupt")


@case
def train_slice_wrong_magic(env: Env) -> Hostile:
    data = env.synapse()
    (data / "train_npz" / "case0001_slice000.npz").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    return env.train(data).expect("case0001_slice000.npz", "npz")


@case
def train_slice_pickled_objects(env: Env) -> Hostile:
    data = env.synapse()
    np.savez(data / "train_npz" / "case0001_slice000.npz", image=np.array([None, {"x": 1}], dtype=object), label=np.zeros(2))
    return env.train(data).expect("case0001_slice000.npz", "corrupt")


@case
def train_slice_1x1(env: Env) -> Hostile:
    data = env.synapse()
    np.savez(data / "train_npz" / "case0001_slice000.npz", image=np.zeros((1, 1), np.float32), label=np.zeros((1, 1), np.uint8))
    return env.train(data).expect("case0001_slice000.npz", "1 x 1")


@case
def train_list_escapes_root(env: Env) -> Hostile:
    data = env.synapse()
    (data / "lists" / "train.txt").write_text("case0001_slice000\n../../../etc/passwd\n")
    return env.train(data).expect("train.txt", "../../../etc/passwd", "outside")


@case
def train_config_not_yaml(env: Env) -> Hostile:
    hostile = env.train(env.synapse())
    Path(hostile.argv[3]).write_text("epochs: [1, 2\nlr: {")
    return hostile.expect("train.yaml", "YAML")


@case
def train_resume_from_an_empty_checkpoint(env: Env) -> Hostile:
    hostile = env.train(env.synapse())
    hostile.out.mkdir()
    (hostile.out / "last.pt").write_bytes(b"")
    hostile.argv.append("--resume")
    return hostile.expect("last.pt", "empty", keep={"last.pt"})


@case
def train_output_is_a_file(env: Env) -> Hostile:
    hostile = env.train(env.synapse())
    hostile.out.write_bytes(b"a file where the run folder should be")
    return hostile.expect("run", "not a folder")


# -- train: folder2d pictures and masks ----------------------------------------------------
@case
def train_mask_rgba(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(data / "masks" / "b.png")
    return env.train(data, "folder2d").expect("b.png", "alpha")


@case
def train_mask_16bit_beyond_classes(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    Image.fromarray(np.full((16, 16), 300, np.uint16)).save(data / "masks" / "a.png")
    return env.train(data, "folder2d").expect("a.png", "16-bit")


@case
def train_mask_float_tiff(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    (data / "masks" / "c.png").unlink()
    Image.fromarray(np.full((16, 16), 1.5, np.float32), mode="F").save(data / "masks" / "c.tif")
    return env.train(data, "folder2d").expect("c.tif", "floating-point")


@case
def train_mask_value_255(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(data / "masks" / "b.png")
    return env.train(data, "folder2d").expect("b.png", "255")


@case
def train_mask_above_class_count(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    Image.fromarray(np.full((16, 16), N_CLASSES, np.uint8)).save(data / "masks" / "a.png")
    return env.train(data, "folder2d").expect("a.png", "outside the class range")


@case
def train_mask_colour(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 1
    Image.fromarray(colour).save(data / "masks" / "c.png")
    return env.train(data, "folder2d").expect("c.png", "colour mask")


@case
def train_mask_size_mismatch(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(data / "masks" / "b.png")
    return env.train(data, "folder2d").expect("b.png", "12 x 16")


@case
def train_mismatched_names(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    (data / "masks" / "c.png").rename(data / "masks" / "z.png")
    return env.train(data, "folder2d").expect("z.png", "without a picture")


@case
def train_picture_1x1(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(data / "masks" / "a.png")
    return env.train(data, "folder2d").expect("a.png", "1 x 1")


@case
def train_picture_20000x20000(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    (data / "images" / "b.png").write_bytes(env.base.huge_png)
    hostile = env.train(data, "folder2d").expect("b.png", "limit")
    hostile.check = env.forbid_decoding_large_pictures()
    return hostile


@case
def train_picture_inf(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    values = np.zeros((16, 16), np.float32)
    values[0, 0] = np.inf
    (data / "images" / "c.png").unlink()
    Image.fromarray(values, mode="F").save(data / "images" / "c.tif")
    return env.train(data, "folder2d").expect("c.tif", "infinite")


@case
def train_split_file_escapes_root(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    (data / "splits.json").write_text(json.dumps({"train": ["a", "../../etc/passwd"], "val": ["b"], "test": ["c"]}))
    return env.train(data, "folder2d").expect("splits.json", "../../etc/passwd", "outside")


@case
def train_images_folder_is_a_file(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    shutil.rmtree(data / "images")
    (data / "images").write_bytes(b"a file where the pictures folder should be")
    return env.train(data, "folder2d").expect("images", "not found")


# -- verify --------------------------------------------------------------------------------
@case
def verify_synapse_nan_slice(env: Env) -> Hostile:
    data = env.synapse()
    image = _slice(0)[0]
    image[:, 0] = np.nan
    _rewrite_npz(data / "train_npz" / "case0001_slice000.npz", image=image)
    return env.verify(data, "synapse").expect("case0001_slice000.npz", "NaN")


@case
def verify_nnunet_broken_header(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    path = data / "imagesTr" / "c2_0000.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[40:42] = struct.pack("<h", 9)  # dim[0], the number of dimensions, must be 1..7
    path.write_bytes(gzip.compress(bytes(raw)))
    return env.verify(data, "nnunet", "cache_dir=false").expect("c2_0000.nii.gz", "NIfTI")


@case
def verify_nnunet_label_4d(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    _nifti(data / "labelsTr" / "c1.nii.gz", np.zeros((12, 12, 3, 2), np.uint8))
    return env.verify(data, "nnunet", "cache_dir=false").expect("c1.nii.gz", "volumes")


@case
def verify_nnunet_shape_mismatch(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    _nifti(data / "labelsTr" / "c2.nii.gz", np.zeros((12, 10, 3), np.uint8))
    return env.verify(data, "nnunet", "cache_dir=false").expect("c2.nii.gz", "does not match")


@case
def verify_nnunet_dataset_json_broken(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    (data / "dataset.json").write_text('{"labels": {"background": 0,')
    return env.verify(data, "nnunet", "cache_dir=false").expect("dataset.json", "JSON")


@case
def verify_nnunet_dataset_json_escapes_root(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    meta = json.loads((data / "dataset.json").read_text())
    meta["training"] = [{"image": "./imagesTr/c1.nii.gz", "label": "../../../etc/passwd"}]
    (data / "dataset.json").write_text(json.dumps(meta))
    return env.verify(data, "nnunet", "cache_dir=false").expect("dataset.json", "../../../etc/passwd", "outside")


@case
def verify_nnunet_split_escapes_root(env: Env) -> Hostile:
    data = make_nnunet(env.tmp / "data")
    (data / "splits_final.json").write_text(json.dumps([{"train": ["c1"], "val": ["../../etc/passwd"]}]))
    return env.verify(data, "nnunet", "cache_dir=false").expect("splits_final.json", "outside")


@case
def verify_folder2d_mask_without_picture(env: Env) -> Hostile:
    data = make_folder2d(env.tmp / "data")
    (data / "images" / "b.png").unlink()
    return env.verify(data, "folder2d").expect("b.png", "without a picture")


@case
def verify_data_missing(env: Env) -> Hostile:
    hostile = env.verify(env.tmp / "nothing", "synapse")
    hostile.code = 2
    return hostile.expect("nothing", "not found")


@case
def verify_folder_unreadable(env: Env) -> Hostile:
    data = env.synapse()
    env.lock(data / "train_npz")
    return env.verify(data, "synapse").expect("case0001_slice000.npz", "cannot be read")


# -- prepare -------------------------------------------------------------------------------
@case
def prepare_isic_truncated_jpeg(env: Env) -> Hostile:
    raw = make_isic(env.tmp / "raw")
    path = raw / ISIC_IN / "ISIC_0000001.jpg"
    path.write_bytes(path.read_bytes()[:-60])
    return env.prepare("isic2018", raw, "size=16").expect("ISIC_0000001.jpg", "truncated")


@case
def prepare_isic_mask_not_binary(env: Env) -> Hostile:
    raw = make_isic(env.tmp / "raw")
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(raw / ISIC_GT / "ISIC_0000002_segmentation.png")
    return env.prepare("isic2018", raw, "size=16").expect("ISIC_0000002_segmentation.png", "128")


@case
def prepare_isic_split_file_escapes_root(env: Env) -> Hostile:
    raw = make_isic(env.tmp / "raw")
    (raw / "splits.json").write_text(json.dumps({"train": ["/etc/passwd"], "val": [], "test": []}))
    return env.prepare("isic2018", raw, "size=16").expect("splits.json", "outside")


@case
def prepare_synapse_truncated_scan(env: Env) -> Hostile:
    raw = make_synapse_raw(env.tmp / "raw")
    path = raw / "RawData/Training/img/img0002.nii.gz"
    path.write_bytes(path.read_bytes()[:120])
    # case 1 converts fine before case 2 fails: nothing of it may reach the output folder
    return env.prepare("synapse", raw, "train_cases=[1]", "test_cases=[2]").expect("img0002.nii.gz", "NIfTI")


@case
def prepare_raw_folder_missing(env: Env) -> Hostile:
    return env.prepare("isic2018", env.tmp / "absent").expect("absent", "not found")


@case
def prepare_output_is_a_file(env: Env) -> Hostile:
    hostile = env.prepare("isic2018", make_isic(env.tmp / "raw"), "size=16")
    hostile.out.write_bytes(b"a file where the output folder should be")
    return hostile.expect("prepared", "not a folder")


# ---------------------------------------------------------------------------------- checks
def _leftovers(out: Path) -> list[Path]:
    """Temporary files inside ``out`` and staging folders next to it (``.<out>.partial-*``)."""
    inside = [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")] if out.is_dir() else []
    return inside + list(out.parent.glob(f".{out.name}*"))


def _assert_clean_failure(hostile: Hostile, code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code == hostile.code, (code, err)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("simmpnet: error: "), line
    for needle in hostile.needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    if hostile.out is not None:
        assert not _leftovers(hostile.out), _leftovers(hostile.out)
        if hostile.out.is_dir():
            left = {p.name for p in hostile.out.rglob("*") if p.is_file()}
            assert left == hostile.keep, f"partial output left in {hostile.out}: {sorted(left)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_ends_in_one_clear_line(name, base, tmp_path, monkeypatch, capsys):
    env = Env(tmp_path, base, monkeypatch)
    try:
        hostile = CASES[name](env)
        before = {p: p.read_bytes() for p in (hostile.out.rglob("*") if hostile.out and hostile.out.is_dir() else []) if p.is_file()}
        capsys.readouterr()
        if name in NEEDS_PERMISSIONS and not _chmod_protects(tmp_path):
            # Root reads a chmod-000 folder anyway: run the command in a process without
            # that right (util-linux setpriv), as an ordinary user would meet it.
            if shutil.which("setpriv") is None:
                pytest.skip(f"running as euid {os.geteuid()} and setpriv is not installed")
            done = _run_cli(hostile.argv, WITHOUT_DAC)
            code, err = done.returncode, done.stderr
        else:
            code = main(hostile.argv)
            err = capsys.readouterr().err
    finally:
        for action in env.undo:
            action()
    _assert_clean_failure(hostile, code, err)
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was changed"
    assert hostile.check() is None, hostile.check()


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    commands = {builder.__name__.split("_")[0] for builder in CASES.values()}
    assert commands >= {"predict", "checkpoint", "evaluate", "train", "verify", "prepare"}


SUBPROCESS_CASES = ["predict_png_truncated", "predict_mha_truncated", "checkpoint_pickled_code", "evaluate_list_escapes_root", "train_slice_nan"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_hostile_input_in_a_real_process(name, base, tmp_path, monkeypatch):
    """The exit code and the one line, for real: what native libraries print to the process's
    stderr (ITK, HDF5, nibabel) counts too."""
    hostile = CASES[name](Env(tmp_path, base, monkeypatch))
    done = _run_cli(hostile.argv)
    _assert_clean_failure(hostile, done.returncode, done.stderr)
    assert hostile.check() is None, hostile.check()


def test_debug_shows_the_traceback(base, tmp_path, monkeypatch):
    hostile = predict_png_truncated(Env(tmp_path, base, monkeypatch))
    with pytest.raises(SimMPNetError, match="cut.png"):
        main(["--debug", *hostile.argv])


def test_a_checkpoint_replaced_while_it_is_read_is_refused(base, tmp_path, monkeypatch):
    """Training saves best.pt (an atomic replace) while predict reads it: the outputs would name
    the new file's SHA-256 beside labels of the old weights, so predict stops before any output."""
    import simmpnet.predict as predict_module

    checkpoint = tmp_path / "best.pt"
    shutil.copy(base.checkpoint, checkpoint)
    newer = tmp_path / "best.pt.tmp"
    newer.write_bytes(checkpoint.read_bytes() + b"another save")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes((_slice(0)[0] * 255).astype(np.uint8)))
    out = tmp_path / "pred"
    real_load = predict_module.load_trained_model

    def load_while_training_saves(path, device):
        loaded = real_load(path, device)
        os.replace(newer, checkpoint)
        return loaded

    monkeypatch.setattr(predict_module, "load_trained_model", load_while_training_saves)
    with pytest.raises(CheckpointError, match=r"best\.pt: the file changed while it was being read"):
        predict_module.predict_paths(checkpoint, inputs, out)
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.setattr(predict_module, "load_trained_model", real_load)
    shutil.copy(base.checkpoint, checkpoint)
    predict_module.predict_paths(checkpoint, inputs, out)  # unchanged while read: it runs
    assert (out / "a.png").is_file()


def test_a_batch_goes_on_past_a_bad_file_and_names_it(base, tmp_path, capsys):
    """4 pictures, 1 corrupt: 3 label maps, the bad one named on the terminal and in the
    summary, exit 1; --skip-existing then redoes only what is missing."""
    good = png_bytes((_slice(0)[0] * 255).astype(np.uint8))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.png", "b_bad.png", "c.png", "d.png"):
        (inputs / name).write_bytes(good[: len(good) // 2] if "bad" in name else good)
    out = tmp_path / "pred"
    argv = ["--quiet", "predict", "--checkpoint", str(base.checkpoint), "--input", str(inputs), "--output", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "3 label map(s) written" in captured.out and "1 failed" in captured.out
    (failure,) = [line for line in captured.err.splitlines() if line.strip()]
    assert "b_bad.png" in failure and "truncated" in failure
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "d.png", "prediction_summary.json"]
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert (summary["written"], summary["skipped"], summary["failed"]) == (3, 0, 1)
    (bad,) = [item for item in summary["inputs"] if item["status"] == "failed"]
    assert bad["input"].endswith("b_bad.png") and "truncated" in bad["reason"]
    assert len(summary["model"]["sha256"]) == 64
    before = (out / "a.png").stat().st_mtime_ns
    (out / "d.png").unlink()
    (inputs / "b_bad.png").write_bytes(good)
    assert main([*argv, "--skip-existing"]) == 0
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert (summary["written"], summary["skipped"], summary["failed"]) == (2, 2, 0)
    assert (out / "a.png").stat().st_mtime_ns == before and (out / "d.png").is_file()


def test_16bit_picture_is_read_and_normalised(base, tmp_path, capsys):
    """Not hostile: a 16-bit grey picture is a legitimate input (scaled by 65535)."""
    deep = (_slice(0)[0] * 65535).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = tmp_path / "pred"
    argv = ["--quiet", "predict", "--checkpoint", str(base.checkpoint), "--input", str(tmp_path / "deep.png"), "--output", str(out)]
    assert main(argv) == 0
    assert np.asarray(Image.open(out / "deep.png")).shape == deep.shape
