"""Synapse-layout readers: good files load, planted bad files raise InputError naming them."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from simmpnet.data import RandomAugment, SynapseSliceDataset, SynapseVolumeDataset
from simmpnet.errors import InputError

H, W = 12, 10


def _slice(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((H, W), dtype=np.float32), rng.integers(0, 9, (H, W)).astype(np.uint8)


def _write_list(root: Path, name: str, entries: list[str]) -> None:
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / name).write_text("".join(f"{e}\n" for e in entries))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """A small valid data set: 2 slices, 1 volume."""
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    for i in range(2):
        image, label = _slice(i)
        np.savez(tmp_path / "train_npz" / f"case0001_slice{i:03d}.npz", image=image, label=label)
    with h5py.File(tmp_path / "test_vol_h5" / "case0002.npy.h5", "w") as f:
        f["image"] = np.random.default_rng(5).random((3, H, W), dtype=np.float32)
        f["label"] = np.zeros((3, H, W), np.float32)  # float storage, as in the original data
        f.attrs["spacing"] = [2.5, 0.7, 0.7]
    _write_list(tmp_path, "train.txt", ["case0001_slice000", "case0001_slice001"])
    _write_list(tmp_path, "test_vol.txt", ["case0002"])
    return tmp_path


def test_valid_slice_items(root: Path) -> None:
    ds = SynapseSliceDataset(root, n_classes=9)
    assert len(ds) == 2 and ds.names == ["case0001_slice000", "case0001_slice001"]
    item = ds[1]
    image, label = _slice(1)
    assert item["name"] == "case0001_slice001"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, H, W)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    np.testing.assert_array_equal(item["label"].numpy(), label)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 1, H, W) and batch["name"] == ds.names


def test_slice_with_transform(root: Path) -> None:
    ds = SynapseSliceDataset(root, transform=RandomAugment(16, rng=0), n_classes=9)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["label"].shape == (16, 16)
    assert item["label"].dtype == torch.int64


def test_acdc_img_key_and_float_labels(root: Path) -> None:
    image, label = _slice(3)
    np.savez(root / "train_npz" / "acdc.npz", img=image, label=label.astype(np.float32))
    item = SynapseSliceDataset(root, list_file=_list(root, ["acdc"]))[0]
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    np.testing.assert_array_equal(item["label"].numpy(), label)


def _list(root: Path, entries: list[str]) -> Path:
    _write_list(root, "custom.txt", entries)
    return root / "lists" / "custom.txt"


def _plant(root: Path, name: str, **arrays: np.ndarray) -> None:
    np.savez(root / "train_npz" / f"{name}.npz", **arrays)


@pytest.mark.parametrize(
    ("name", "plant", "n_classes", "problem"),
    [
        ("corrupt", lambda p: p.write_bytes(b"PK\x03\x04 garbage, not a zip"), None, "corrupt"),
        ("truncated", "truncate", None, "corrupt"),
        ("nolabel", {"image": np.zeros((H, W), np.float32)}, None, "missing key 'label'"),
        ("noimage", {"label": np.zeros((H, W), np.uint8)}, None, "missing key 'image"),
        ("nan", "nan", None, "NaN"),
        ("inf", "inf", None, "NaN or Inf"),
        ("label9", "label9", 9, "label value 9"),
        ("negative", "negative", None, "negative"),
        ("fraction", "fraction", None, "non-integer"),
        ("mismatch", {"image": np.zeros((H, W), np.float32), "label": np.zeros((H, W + 1), np.uint8)},
         None, "does not match"),
        ("threed", {"image": np.zeros((2, H, W), np.float32), "label": np.zeros((2, H, W), np.uint8)},
         None, "2 dimensions"),
        ("missing", None, None, "not found"),
    ],
)
def test_bad_slice_files(root: Path, name: str, plant: object, n_classes: int | None, problem: str) -> None:
    path = root / "train_npz" / f"{name}.npz"
    image, label = _slice(0)
    if callable(plant):
        plant(path)
    elif isinstance(plant, dict):
        _plant(root, name, **plant)
    elif plant == "truncate":
        _plant(root, name, image=image, label=label)
        path.write_bytes(path.read_bytes()[:300])
    elif plant in ("nan", "inf"):
        image[3, 4] = np.nan if plant == "nan" else np.inf
        _plant(root, name, image=image, label=label)
    elif plant == "label9":
        label[0, 0] = 9
        _plant(root, name, image=image, label=label)
    elif plant == "negative":
        _plant(root, name, image=image, label=label.astype(np.int16) - 1)
    elif plant == "fraction":
        _plant(root, name, image=image, label=label + np.float32(0.5))
    ds = SynapseSliceDataset(root, list_file=_list(root, ["case0001_slice000", name]), n_classes=n_classes)
    ds[0]  # the good entry still reads
    with pytest.raises(InputError) as err:
        ds[1]
    msg = str(err.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


def test_label_within_n_classes_is_accepted(root: Path) -> None:
    image, label = _slice(0)
    label[0, 0] = 8
    _plant(root, "label8", image=image, label=label)
    assert SynapseSliceDataset(root, list_file=_list(root, ["label8"]), n_classes=9)[0]["label"].max() == 8


@pytest.mark.parametrize("entry", ["../x", "sub/../../x", "/etc/passwd"])
def test_list_entry_outside_root_is_refused(root: Path, entry: str) -> None:
    list_file = _list(root, ["case0001_slice000", entry])
    with pytest.raises(InputError) as err:
        SynapseSliceDataset(root, list_file=list_file)
    assert str(list_file) in str(err.value) and entry in str(err.value)
    with pytest.raises(InputError, match="outside"):
        SynapseVolumeDataset(root, list_file=list_file)


def test_missing_and_empty_list_files(root: Path) -> None:
    with pytest.raises(InputError, match="list file not found"):
        SynapseSliceDataset(root, split="val")
    with pytest.raises(InputError, match="no entries"):
        SynapseSliceDataset(root, list_file=_list(root, []))
    with pytest.raises(InputError, match="plain list name"):
        SynapseSliceDataset(root, split="../train")


def test_valid_volume(root: Path) -> None:
    ds = SynapseVolumeDataset(root, n_classes=9)
    item = ds[0]
    assert item["name"] == "case0002" and item["spacing"] == (2.5, 0.7, 0.7)
    assert item["image"].dtype == np.float32 and item["image"].shape == (3, H, W)
    assert item["label"].dtype == np.int64 and item["label"].shape == (3, H, W)


def _h5(path: Path, spacing: object = None, **arrays: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        if spacing is not None:
            f.attrs["spacing"] = spacing


def test_volume_default_spacing_and_img_key(root: Path) -> None:
    _h5(root / "test_vol_h5" / "acdc.npy.h5", img=np.ones((2, H, W), np.float32), label=np.ones((2, H, W), np.uint8))
    item = SynapseVolumeDataset(root, list_file=_list(root, ["acdc"]))[0]
    assert item["spacing"] == (1.0, 1.0, 1.0) and item["image"].shape == (2, H, W)


@pytest.mark.parametrize("problem", ["corrupt", "nolabel", "nan", "label9", "mismatch", "spacing", "missing"])
def test_bad_volume_files(root: Path, problem: str) -> None:
    path = root / "test_vol_h5" / f"{problem}.npy.h5"
    img, lab = np.zeros((2, H, W), np.float32), np.zeros((2, H, W), np.uint8)
    expected = {
        "corrupt": "corrupt", "nolabel": "missing dataset 'label'", "nan": "NaN", "label9": "label value 9",
        "mismatch": "does not match", "spacing": "spacing", "missing": "not found",
    }[problem]
    if problem == "corrupt":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    elif problem == "nolabel":
        _h5(path, image=img)
    elif problem == "nan":
        img[1, 2, 3] = np.nan
        _h5(path, image=img, label=lab)
    elif problem == "label9":
        lab[0, 0, 0] = 9
        _h5(path, image=img, label=lab)
    elif problem == "mismatch":
        _h5(path, image=img, label=lab[:1])
    elif problem == "spacing":
        _h5(path, spacing=[1.0, -1.0, 1.0], image=img, label=lab)
    ds = SynapseVolumeDataset(root, list_file=_list(root, [problem]), n_classes=9)
    with pytest.raises(InputError) as err:
        ds[0]
    assert str(path) in str(err.value) and expected in str(err.value)
