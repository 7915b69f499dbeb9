"""3-D dataset layouts and converters: nnU-Net raw folders, the MT-UNet ACDC variant, and the
Synapse / ACDC download converters.  Every fixture dataset is written here, in the exact
on-disk layout, with small volumes and non-trivial affines."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import small_train_config

from simmpnet.cli import main
from simmpnet.data.io import read_image
from simmpnet.data.layouts import open_layout
from simmpnet.data.layouts import acdc as acdc_layout
from simmpnet.data.layouts import nnunet
from simmpnet.data.prepare import acdc_raw, synapse_raw
from simmpnet.errors import InputError

# file grid (X, Y, Z): read_image returns D x H x W = Z x Y x X
X, Y, Z = 40, 36, 6
AFFINE = np.array([[0.0, -0.9, 0.0, 12.0], [0.8, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])
SPACING_DHW = (2.5, 0.9, 0.8)  # zooms (0.8, 0.9, 2.5) reversed
LABELS = {"background": 0, "liver": 1, "tumour": 2}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMMPNET_CACHE_DIR", str(tmp_path / "cache"))


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _case_arrays(seed: int, shape=(X, Y, Z)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image (int16 HU) and a label (0..2) that follows it, in file order (X, Y, Z)."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = ((xx - shape[0] / 2 - seed) ** 2 + (yy - shape[1] / 2) ** 2) < (shape[0] / 4) ** 2
    label = np.repeat(disc[..., None], shape[2], axis=2).astype(np.uint8)
    label[: shape[0] // 3] *= 2  # part of the disc is class 2
    image = (rng.normal(-300, 80, shape) + 400 * (label > 0)).astype(np.int16)
    return image, label


def make_nnunet(root: Path, n_cases: int = 5, test_cases: int = 1) -> Path:
    for i in range(n_cases):
        image, label = _case_arrays(i)
        _nifti(root / "imagesTr" / f"case{i:03d}_0000.nii.gz", image)
        _nifti(root / "labelsTr" / f"case{i:03d}.nii.gz", label)
    for i in range(test_cases):
        _nifti(root / "imagesTs" / f"test{i:03d}_0000.nii.gz", _case_arrays(50 + i)[0])
    meta = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# ============================================================================ nnU-Net layout
def test_nnunet_clean_dataset_splits_and_items(tmp_path, monkeypatch):
    root = make_nnunet(tmp_path / "Dataset001_Toy")
    layout = open_layout("nnunet", root, 3)
    assert isinstance(layout, nnunet.NnUNetLayout)
    assert layout.verify() == []
    assert layout.class_names() == ["background", "liver", "tumour"]
    ids = [f"case{i:03d}" for i in range(5)]
    train, val = layout.split_ids("train"), layout.split_ids("val")
    assert len(train) == 4 and len(val) == 1 and sorted(train + val) == ids
    assert layout.split_ids("all") == ids
    assert open_layout("nnunet", root, 3).split_ids("val") == val  # deterministic
    # nnU-Net's default split is sklearn's KFold(5, shuffle=True, random_state=12345) on the
    # sorted ids; its first test fold is the first fifth of a RandomState(12345) permutation.
    perm = np.arange(5)
    np.random.RandomState(12345).shuffle(perm)
    assert val == [ids[perm[0]]]

    # slices: the axial slices of read_image's D x H x W array, normalised like predict
    reads = []
    real = nnunet.read_image
    monkeypatch.setattr(nnunet, "read_image", lambda p, **k: reads.append(Path(p).name) or real(p, **k))
    slices = open_layout("nnunet", root, 3, cache_dir=False).slices("train")
    assert len(slices) == 4 * Z
    case = train[1]
    expected_img = nnunet.normalise_percentile(read_image(root / "imagesTr" / f"{case}_0000.nii.gz").array)
    expected_lab = read_image(root / "labelsTr" / f"{case}.nii.gz").array.astype(np.int64)
    reads.clear()
    for z in range(Z):
        item = slices[Z + z]
        assert item["name"] == f"{case}_slice{z:03d}"
        assert item["image"].shape == (1, Y, X) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64
        np.testing.assert_array_equal(item["image"][0].numpy(), expected_img[z])
        np.testing.assert_array_equal(item["label"].numpy(), expected_lab[z])
    assert reads == [f"{case}_0000.nii.gz", f"{case}.nii.gz"]  # one read for all six slices
    assert 0.0 <= float(expected_img.min()) and float(expected_img.max()) <= 1.0

    # the disk cache: verify filled it, a fresh layout serves slices without reading NIfTI
    reads.clear()
    fresh = open_layout("nnunet", root, 3).slices("train")
    np.testing.assert_array_equal(fresh[Z + 2]["image"][0].numpy(), expected_img[2])
    assert reads == [] and list((tmp_path / "cache" / "nnunet").glob("*.image.npy"))
    import pickle  # DataLoader workers get a pickled copy

    copy = pickle.loads(pickle.dumps(fresh))
    np.testing.assert_array_equal(copy[Z + 2]["label"].numpy(), expected_lab[2])

    cases = layout.cases("val")
    item = cases[0]
    assert item["name"] == val[0] and item["spacing"] == pytest.approx(SPACING_DHW)
    assert item["image"].shape == (Z, Y, X) and item["label"].dtype == np.int64

    # the user's splits_final.json wins
    (root / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "val": ids[3:]}]))
    layout = open_layout("nnunet", root, 3)
    assert layout.split_ids("train") == ids[:3] and layout.split_ids("val") == ids[3:]
    with pytest.raises(InputError, match="unknown split"):
        layout.slices("test")


def test_nnunet_verify_lists_every_problem_at_once(tmp_path):
    root = make_nnunet(tmp_path / "Dataset002_Bad", n_cases=3)
    image, label = _case_arrays(7)
    # wrong label value
    bad = label.copy()
    bad[5, 5, 1] = 7
    _nifti(root / "imagesTr" / "wrongvalue_0000.nii.gz", image)
    _nifti(root / "labelsTr" / "wrongvalue.nii.gz", bad)
    # size mismatch
    _nifti(root / "imagesTr" / "sizemismatch_0000.nii.gz", image)
    _nifti(root / "labelsTr" / "sizemismatch.nii.gz", label[:, :-2])
    # spacing mismatch
    _nifti(root / "imagesTr" / "geom_0000.nii.gz", image)
    _nifti(root / "labelsTr" / "geom.nii.gz", label, np.diag([1.0, 1.0, 3.0, 1.0]))
    # image without mask, mask without image
    _nifti(root / "imagesTr" / "nomask_0000.nii.gz", image)
    _nifti(root / "labelsTr" / "orphan.nii.gz", label)
    # missing _0000 suffix
    _nifti(root / "imagesTr" / "nosuffix.nii.gz", image)
    _nifti(root / "labelsTr" / "nosuffix.nii.gz", label)
    # NaN image, unreadable image, second channel
    nan = image.astype(np.float32)
    nan[1, 2, 3] = np.nan
    _nifti(root / "imagesTr" / "nanimage_0000.nii.gz", nan)
    _nifti(root / "labelsTr" / "nanimage.nii.gz", label)
    (root / "imagesTr" / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    _nifti(root / "labelsTr" / "broken.nii.gz", label)
    _nifti(root / "imagesTr" / "case000_0001.nii.gz", image)

    problems = open_layout("nnunet", root, 3).verify()
    expected = {
        "wrongvalue.nii.gz": "label values [7]",
        "sizemismatch.nii.gz": "does not match",
        "geom.nii.gz": "spacing",
        "nomask_0000.nii.gz": "image without label",
        "orphan.nii.gz": "label without image",
        "nosuffix.nii.gz": "missing channel suffix",
        "nanimage_0000.nii.gz": "NaN",
        "broken_0000.nii.gz": "not a readable NIfTI",
        "case000_0001.nii.gz": "single-channel",
        "dataset.json": "numTraining",
    }
    for name, needle in expected.items():
        hits = [p for p in problems if name in p and needle in p]
        assert hits, f"no problem reported for {name} ({needle}): {problems}"
    assert all("\n" not in p for p in problems)
    assert not any("case001" in p or "case002" in p for p in problems)  # sound cases stay quiet

    # dataset.json problems: labels not consecutive, missing file
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1, "tumour": 3}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert any("not consecutive" in p for p in open_layout("nnunet", root).verify())
    (root / "dataset.json").unlink()
    assert any("dataset.json: not found" in p for p in open_layout("nnunet", root).verify())

    # the CLI prints them all and exits 1
    assert main(["--quiet", "verify", "--layout", "nnunet", "--data", str(root), "--n-classes", "3"]) == 1


def test_nnunet_mha_and_nrrd_cases(tmp_path):
    import SimpleITK as sitk

    for ending in (".mha", ".nrrd"):
        root = tmp_path / ending.strip(".")
        for i in range(2):
            image, label = _case_arrays(i, (20, 18, 4))
            for arr, path in ((image, root / "imagesTr" / f"c{i}_0000{ending}"), (label, root / "labelsTr" / f"c{i}{ending}")):
                path.parent.mkdir(parents=True, exist_ok=True)
                img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
                img.SetSpacing((0.7, 0.6, 3.0))
                img.SetOrigin((5.0, -3.0, 1.0))
                sitk.WriteImage(img, str(path))
        meta = {"channel_names": {"0": "MR"}, "labels": LABELS, "numTraining": 2, "file_ending": ending}
        (root / "dataset.json").write_text(json.dumps(meta))
        layout = open_layout("nnunet", root, 3)
        assert layout.verify() == []
        item = layout.cases("all")[1]
        assert item["image"].shape == (4, 18, 20) and item["spacing"] == pytest.approx((3.0, 0.6, 0.7))
        assert len(layout.slices("all")) == 8


def _config(tmp_path: Path, data: Path, out: Path, **changes) -> Path:
    # validation after epoch 3: the split is opened and checked, a 2-step run never scores it;
    # the warm-up scales with these few-slice datasets (an epoch can be a single step)
    config = small_train_config(data, out, **{"eval_start_epoch": 3, "warmup_iters": None, **changes})
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _assert_same_geometry(pred: Path, source: Path) -> None:
    out, src = nib.load(str(pred)), nib.load(str(source))
    assert out.shape == src.shape
    assert np.array_equal(out.affine, src.affine)
    assert out.header.get_zooms() == src.header.get_zooms()
    assert np.asarray(out.dataobj).dtype == np.uint8


def test_cli_train_evaluate_predict_on_nnunet(tmp_path, capsys):
    root = make_nnunet(tmp_path / "Dataset003_Cli")
    out = tmp_path / "run_nnunet"
    config = _config(tmp_path, root, out, n_classes=3, train_list="train", val_list="val")
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2", "--set", "layout=nnunet"]) == 0
    checkpoint = out / "last.pt"
    assert checkpoint.is_file()
    metrics_dir = tmp_path / "eval_nnunet"
    args = ["--quiet", "evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "val",
            "--layout", "nnunet", "--output", str(metrics_dir), "--max-overlays", "0"]
    assert main(args) == 0
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    assert len(metrics["per_case"]) == 1 and len(metrics["classes"]) == 2
    predicted = tmp_path / "pred_nnunet"
    assert main(["--quiet", "predict", "--checkpoint", str(checkpoint), "--input", str(root / "imagesTs"),
                 "--output", str(predicted)]) == 0
    _assert_same_geometry(predicted / "test000.nii.gz", root / "imagesTs" / "test000_0000.nii.gz")
    capsys.readouterr()


# ============================================================================ Synapse converter
RAW_SHAPE = (24, 20, 3)  # X, Y, Z
SYN_AFFINE = np.array([[-0.7, 0.05, 0.0, 100.0], [0.0, -0.7, 0.0, 50.0], [0.0, 0.0, 2.5, -300.0], [0.0, 0.0, 0.0, 1.0]])
ORGAN_TO_CLASS = {0: 0, 1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}
ALL_CASES = list(range(1, 11)) + list(range(21, 41))


def _raw_synapse_case(case: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(case)
    hu = rng.integers(-1000, 1001, RAW_SHAPE).astype(np.int16)
    hu[0, 0, :] = -125
    hu[1, 0, :] = 275
    hu[2, 0, :] = 75
    hu[3, 0, :] = -1000
    hu[4, 0, :] = 1000
    organs = ((np.arange(RAW_SHAPE[0])[:, None, None] + np.arange(RAW_SHAPE[2])[None, None, :]) % 14) * np.ones(RAW_SHAPE)
    return hu, organs.astype(np.uint8)


@pytest.fixture(scope="module")
def synapse_raw_dir(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("synapse_raw") / "RawData" / "Training"
    for case in ALL_CASES:
        hu, organs = _raw_synapse_case(case)
        _nifti(raw / "img" / f"img{case:04d}.nii.gz", hu, SYN_AFFINE)
        _nifti(raw / "label" / f"label{case:04d}.nii.gz", organs, SYN_AFFINE)
    return raw.parent.parent


@pytest.fixture(scope="module")
def synapse_prepared(synapse_raw_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synapse_prepared") / "data"
    assert main(["--quiet", "prepare", "synapse", "--raw", str(synapse_raw_dir), "--output", str(out)]) == 0
    return out


def test_synapse_converter_classes_window_split(synapse_raw_dir, synapse_prepared):
    root = synapse_prepared
    test = ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038"]
    train = [f"{c:04d}" for c in ALL_CASES if f"{c:04d}" not in test]
    assert len(train) == 18
    assert (root / "lists" / "test_vol.txt").read_text().split() == [f"case{c}" for c in test]
    assert (root / "lists" / "train.txt").read_text().split() == [
        f"case{c}_slice{z:03d}" for c in train for z in range(RAW_SHAPE[2])
    ]
    hu, organs = _raw_synapse_case(5)
    hu_dhw, organs_dhw = np.transpose(hu, (2, 1, 0)), np.transpose(organs, (2, 1, 0))
    for z in range(RAW_SHAPE[2]):
        with np.load(root / "train_npz" / f"case0005_slice{z:03d}.npz") as f:
            image, label = f["image"], f["label"]
        assert image.dtype == np.float32 and image.shape == (RAW_SHAPE[1], RAW_SHAPE[0])
        expected = np.vectorize(ORGAN_TO_CLASS.get)(organs_dhw[z])
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(organs_dhw[z])) == set(range(14))  # all 13 organs in every slice
        np.testing.assert_allclose(image, np.clip((hu_dhw[z].astype(np.float64) + 125) / 400, 0, 1), atol=1e-6)
        assert image[0, :5].tolist() == [0.0, 1.0, 0.5, 0.0, 1.0]  # -125, 275, 75, -1000, 1000 HU
    assert set(np.unique(organs)) == set(range(14))
    with h5py.File(root / "test_vol_h5" / "case0022.npy.h5", "r") as f:
        assert f["image"].shape == (RAW_SHAPE[2], RAW_SHAPE[1], RAW_SHAPE[0])
        np.testing.assert_allclose(f.attrs["spacing"], read_image(synapse_raw_dir / "RawData/Training/img/img0022.nii.gz").spacing)
        assert tuple(f.attrs["spacing"]) == pytest.approx((2.5, 0.70178, 0.7), abs=1e-4)
        assert f["label"][()].max() <= 8
    assert open_layout("synapse", root, 9).verify() == []


def test_synapse_converter_names_missing_files(synapse_raw_dir, tmp_path):
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir()
    for case in ALL_CASES:
        if case != 29:
            (raw / "img" / f"img{case:04d}.nii.gz").symlink_to(synapse_raw_dir / "RawData/Training/img" / f"img{case:04d}.nii.gz")
        if case != 7:
            (raw / "label" / f"label{case:04d}.nii.gz").symlink_to(synapse_raw_dir / "RawData/Training/label" / f"label{case:04d}.nii.gz")
    with pytest.raises(InputError) as err:
        synapse_raw.prepare(raw, tmp_path / "out")
    assert "img0029.nii.gz" in str(err.value) and "label0007.nii.gz" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "lists").exists()


def test_cli_train_evaluate_predict_on_prepared_synapse(synapse_raw_dir, synapse_prepared, tmp_path, capsys):
    out = tmp_path / "run_synapse"
    config = _config(tmp_path, synapse_prepared, out, train_list="train", val_list="test_vol")
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2", "--set", "layout=synapse"]) == 0
    metrics_dir = tmp_path / "eval_synapse"
    assert main(["--quiet", "evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(synapse_prepared),
                 "--output", str(metrics_dir), "--max-overlays", "0"]) == 0
    metrics = json.loads((metrics_dir / "metrics.json").read_text())
    assert len(metrics["per_case"]) == 12 and len(metrics["classes"]) == 8
    source = synapse_raw_dir / "RawData/Training/img/img0001.nii.gz"
    assert main(["--quiet", "predict", "--checkpoint", str(out / "last.pt"), "--input", str(source),
                 "--output", str(tmp_path / "pred")]) == 0
    _assert_same_geometry(tmp_path / "pred" / "img0001.nii.gz", source)
    capsys.readouterr()


# ============================================================================ ACDC
def _acdc_slice(seed: int, shape=(12, 10)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), rng.integers(0, 4, shape).astype(np.float32)


def make_acdc_variant(root: Path) -> tuple[dict, dict, np.ndarray]:
    """The npz form of ACDC in this research line: train/ valid/ slices, test/ volumes,
    lists_ACDC/; returns the slice names per split, their seeds and the test volume."""
    slices = {"train": ["case_001_sliceED_0", "case_001_sliceED_1", "case_001_sliceES_0"],
              "valid": [f"case_019_sliceED_{i}" for i in (0, 1, 2, 10)] + ["case_019_sliceES_0"]}
    seeds = {}
    for split, names in slices.items():
        (root / split).mkdir(parents=True)
        for i, name in enumerate(names):
            seeds[name] = len(seeds)
            image, label = _acdc_slice(seeds[name])
            np.savez(root / split / f"{name}.npz", img=image, label=label)
    (root / "test").mkdir()
    volume = np.random.default_rng(9).random((3, 12, 10), dtype=np.float32)
    np.savez(root / "test" / "case_002_volume_ED.npz", img=volume, label=np.ones((3, 12, 10), np.float32))
    (root / "lists_ACDC").mkdir()
    for split, names in slices.items():
        (root / "lists_ACDC" / f"{split}.txt").write_text("".join(f"{n}.npz\n" for n in names))
    (root / "lists_ACDC" / "test.txt").write_text("case_002_volume_ED.npz\n")
    return slices, seeds, volume


def test_acdc_mtunet_variant(tmp_path):
    root = tmp_path / "ACDC"
    slices, seeds, volume = make_acdc_variant(root)

    layout = open_layout("acdc", root, 4)
    assert isinstance(layout, acdc_layout.AcdcLayout) and layout.verify() == []
    train = layout.slices("train")
    assert len(train) == 3 and train.names == slices["train"]
    item = train[1]
    image, label = _acdc_slice(seeds["case_001_sliceED_1"])
    assert item["image"].shape == (1, 12, 10) and item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    np.testing.assert_array_equal(item["label"].numpy(), label)
    test = layout.cases("test")
    assert test.names == ["case_002_volume_ED"]
    item = test[0]
    np.testing.assert_array_equal(item["image"], volume)
    assert item["label"].dtype == np.int64 and item["spacing"] is None
    valid = layout.cases("valid")
    assert valid.names == ["case_019_volume_ED", "case_019_volume_ES"]
    stacked = valid[0]
    assert stacked["image"].shape == (4, 12, 10)
    np.testing.assert_array_equal(stacked["image"][3], _acdc_slice(seeds["case_019_sliceED_10"])[0])
    with pytest.raises(InputError, match="whole volumes"):
        layout.slices("test")

    (root / "valid" / "case_019_sliceED_1.npz").unlink()
    label = np.zeros((3, 12, 10), np.float32)
    label[0, 0, 0] = 5
    np.savez(root / "test" / "case_002_volume_ED.npz", img=volume, label=label)
    problems = layout.verify()
    assert any("case_019_sliceED_1.npz" in p and "not found" in p for p in problems)
    assert any("case_002_volume_ED.npz" in p and "label value 5" in p for p in problems)


def _raw_acdc(root: Path, patients: list[int]) -> Path:
    for p in patients:
        folder = root / "training" / f"patient{p:03d}"
        for frame in (1, 12):
            rng = np.random.default_rng(p * 100 + frame)
            image = (rng.random((16, 14, 3)) * 800).astype(np.int16)
            label = rng.integers(0, 4, (16, 14, 3)).astype(np.uint8)
            affine = np.diag([1.4, 1.4, 10.0, 1.0])
            _nifti(folder / f"patient{p:03d}_frame{frame:02d}.nii.gz", image, affine)
            _nifti(folder / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz", label, affine)
        _nifti(folder / f"patient{p:03d}_4d.nii.gz", np.zeros((4, 4, 2, 3), np.int16), np.eye(4))
    return root


def test_acdc_converter_split_and_contents(tmp_path):
    train, valid, test = acdc_raw.split_patients(range(1, 101))
    assert len(train) == 80 and valid == [] and len(test) == 20
    assert sorted(train + test) == list(range(1, 101)) and 8 in test and 71 in train
    train2, valid2, _ = acdc_raw.split_patients(range(1, 101), n_valid=10)
    assert len(valid2) == 10 and sorted(train2 + valid2) == sorted(train)
    with pytest.raises(InputError, match="patient007"):
        acdc_raw.split_patients([p for p in range(1, 101) if p != 7])

    raw = _raw_acdc(tmp_path / "raw", list(range(1, 11)))
    out = acdc_raw.prepare(raw, tmp_path / "prepared", split="random", seed=3)
    lists = {name: (out / "lists" / f"{name}.txt").read_text().split() for name in ("train", "valid_vol", "test_vol")}
    assert len(lists["test_vol"]) == 2 * 2 and len(lists["valid_vol"]) == 2 * 1
    assert len(lists["train"]) == 7 * 2 * 3
    patients = lambda names: {n[7:10] for n in names}  # noqa: E731
    assert not patients(lists["train"]) & patients(lists["test_vol"])
    first = lists["train"][0]
    assert first.endswith("_frame010")  # Sim-MPNet naming: frame 01, slice 0
    with np.load(out / "train_npz" / f"{first}.npz") as f:
        assert 0.0 <= f["image"].min() and f["image"].max() <= 1.0 and f["label"].max() <= 3
    name = lists["test_vol"][0]
    with h5py.File(out / "test_vol_h5" / f"{name}.npy.h5", "r") as f:
        assert f["image"].shape == (3, 14, 16) and tuple(f.attrs["spacing"]) == pytest.approx((10.0, 1.4, 1.4))
        source = read_image(raw / "training" / f"patient{name[7:10]}" / f"patient{name[7:10]}_frame{name[10:12]}_gt.nii.gz")
        np.testing.assert_array_equal(f["label"][()], source.array)
    layout = open_layout("synapse", out, 4)
    assert layout.verify() == []


def test_cli_verify_train_evaluate_predict_on_acdc_variant(tmp_path, capsys):
    root = tmp_path / "ACDC"
    make_acdc_variant(root)
    assert main(["verify", "--layout", "acdc", "--data", str(root), "--n-classes", "4"]) == 0
    out = tmp_path / "run_acdc"
    config = _config(tmp_path, root, out, n_classes=4, train_list="train", val_list="valid", batch_size=2)
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2", "--set", "layout=acdc"]) == 0
    report = tmp_path / "eval_acdc"
    assert main(["--quiet", "evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(root),
                 "--split", "test", "--output", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert list(metrics["per_case"]) == ["case_002_volume_ED"] and len(metrics["classes"]) == 3
    predicted = tmp_path / "pred_acdc"
    assert main(["--quiet", "predict", "--checkpoint", str(out / "last.pt"), "--input",
                 str(root / "test" / "case_002_volume_ED.npz"), "--output", str(predicted)]) == 0
    with np.load(predicted / "case_002_volume_ED.npz") as f:
        assert f["label"].shape == (3, 12, 10) and f["label"].max() < 4
    capsys.readouterr()
