"""The 2-D picture layouts (isic2018, segpc2021, folder2d), their converters, and training /
evaluation / prediction on them through the CLI. Every dataset is written by the tests, in
the layouts the challenges distribute."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import small_train_config
from PIL import Image

from simmpnet.cli import main
from simmpnet.data.layouts import open_layout
from simmpnet.data.layouts.folder2d import Folder2DLayout, seeded_split
from simmpnet.data.layouts.isic import ISIC2018Layout
from simmpnet.data.layouts.segpc import SegPC2021Layout
from simmpnet.data.prepare import isic as prepare_isic
from simmpnet.data.prepare import segpc as prepare_segpc
from simmpnet.errors import InputError

H, W = 40, 48
YY, XX = np.mgrid[:H, :W]
TRAIN_IN, TRAIN_GT = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
VAL_IN, VAL_GT = "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"


def _disk(cy, cx, r):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def _picture(rng, dark):
    """An RGB uint8 picture, darker where ``dark`` is True."""
    base = np.empty((H, W, 3))
    base[...] = (200.0, 160.0, 140.0)
    base += rng.normal(0, 8, base.shape)
    base[dark] *= 0.5
    return np.clip(base, 0, 255).astype(np.uint8)


def make_isic(root, n_train=8):
    """ISIC 2018 Task 1 as distributed: training and validation phases with ground truth,
    a test phase without, licence files beside the pictures."""
    rng = np.random.default_rng(0)
    for inputs, truth, ids in ((TRAIN_IN, TRAIN_GT, range(n_train)), (VAL_IN, VAL_GT, range(100, 102))):
        (root / inputs).mkdir(parents=True)
        (root / truth).mkdir(parents=True)
        (root / inputs / "LICENSE.txt").write_text("CC-BY-NC\n")
        (root / truth / "ATTRIBUTION.txt").write_text("ISIC archive\n")
        for i in ids:
            lesion = _disk(H // 2 + rng.integers(-5, 6), W // 2 + rng.integers(-5, 6), rng.integers(6, 12))
            Image.fromarray(_picture(rng, lesion)).save(root / inputs / f"ISIC_{i:07d}.jpg", quality=95)
            Image.fromarray((lesion * 255).astype(np.uint8)).save(root / truth / f"ISIC_{i:07d}_segmentation.png")
    (root / "ISIC2018_Task1-2_Test_Input").mkdir()
    Image.fromarray(_picture(rng, _disk(20, 20, 5))).save(root / "ISIC2018_Task1-2_Test_Input" / "ISIC_0009000.jpg")
    return root


def _cell(cy, cx, r):
    """One SegPC per-cell mask: 20 cytoplasm, 40 nucleus."""
    mask = np.zeros((H, W), np.uint8)
    mask[_disk(cy, cx, r)] = 20
    mask[_disk(cy, cx, r // 2)] = 40
    return mask


def make_segpc(root, n_train=6):
    """SegPC-2021 as distributed: TCIA_SegPC_dataset/{train,validation}/{x,y} plus test/x.
    Picture 1 has two overlapping cells (each nucleus inside the other cell's cytoplasm);
    its second mask is saved as RGB with equal channels."""
    rng = np.random.default_rng(1)
    base = root / "TCIA_SegPC_dataset"
    for phase, ids in (("train", range(1, n_train + 1)), ("validation", range(101, 103))):
        (base / phase / "x").mkdir(parents=True)
        (base / phase / "y").mkdir(parents=True)
        for i in ids:
            shift = 0 if i == 1 else int(rng.integers(-3, 4))
            cells = [_cell(14 + shift, 16, 12), _cell(20 + shift, 24, 10)]
            Image.fromarray(_picture(rng, np.any([c > 0 for c in cells], 0))).save(base / phase / "x" / f"{i}.bmp")
            for k, cell in enumerate(cells, start=1):
                array = np.repeat(cell[..., None], 3, -1) if (i == 1 and k == 2) else cell
                Image.fromarray(array).save(base / phase / "y" / f"{i}_{k}.bmp")
    (base / "test" / "x").mkdir(parents=True)
    Image.fromarray(_picture(rng, _disk(20, 20, 5))).save(base / "test" / "x" / "900.bmp")
    return root


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    return make_isic(tmp_path_factory.mktemp("isic"))


@pytest.fixture(scope="module")
def segpc_root(tmp_path_factory):
    return make_segpc(tmp_path_factory.mktemp("segpc"))


# ------------------------------------------------------------------------------ items
def test_isic_items_shapes_and_mask_mapping(isic_root):
    layout = open_layout("isic2018", isic_root, 2)
    assert isinstance(layout, ISIC2018Layout)
    names = layout.split_ids("all")
    assert len(names) == 10 and "ISIC_0009000" not in names  # the unlabelled test phase is skipped
    item = layout.slices("all")[0]
    assert item["name"] == names[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    mask = np.asarray(Image.open(isic_root / TRAIN_GT / f"{names[0]}_segmentation.png"))
    assert np.array_equal(item["label"].numpy(), (mask == 255).astype(np.int64))
    cases = layout.cases("official_val")
    assert len(cases) == 2
    case = cases[0]
    assert case["image"].shape == (1, H, W, 3) and case["image"].dtype == np.float32
    assert case["label"].shape == (1, H, W) and case["label"].dtype == np.int64
    assert case["spacing"] is None and case["name"] == "ISIC_0000100"
    assert layout.verify() == []
    with pytest.raises(InputError, match="2 classes"):
        ISIC2018Layout(isic_root, 9)


def test_segpc_merges_overlapping_cells_nucleus_first(segpc_root):
    layout = SegPC2021Layout(segpc_root, 3)
    assert set(layout.split_ids("official_train")) == {str(i) for i in range(1, 7)}
    assert layout.split_ids("official_validation") == ["101", "102"]
    assert "900" not in layout.split_ids("all")
    item = layout.slices("all")[layout.split_ids("all").index("1")]
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    cells = [_cell(14, 16, 12), _cell(20, 24, 10)]
    assert np.any((cells[0] == 20) & (cells[1] == 40)) and np.any((cells[1] == 20) & (cells[0] == 40))
    nucleus = np.any([c == 40 for c in cells], 0)
    cytoplasm = np.any([c > 0 for c in cells], 0) & ~nucleus
    expected = np.where(nucleus, 2, np.where(cytoplasm, 1, 0))
    assert item["label"].dtype == torch.int64
    assert np.array_equal(item["label"].numpy(), expected)
    assert layout.verify() == []


def test_folder2d_class_ids_binary_masks_and_channels(tmp_path):
    root = tmp_path / "multi"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(2)
    label = np.zeros((H, W), np.uint8)
    label[_disk(20, 20, 10)] = 1
    label[_disk(20, 20, 4)] = 2
    for name in ("p1", "p2", "p3"):
        Image.fromarray(rng.integers(0, 255, (H, W), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(label).save(root / "masks" / f"{name}_segmentation.png")
    layout = Folder2DLayout(root, 3)
    assert layout.verify() == []
    item = layout.slices("all")[1]
    assert item["name"] == "p2" and item["image"].shape == (1, H, W)  # grey pictures: 1 channel
    assert np.array_equal(item["label"].numpy(), label)
    assert Folder2DLayout(root, 3, channels=3).slices("all")[0]["image"].shape == (3, H, W)

    binary = tmp_path / "binary"
    (binary / "images").mkdir(parents=True)
    (binary / "masks").mkdir()
    Image.fromarray(_picture(rng, label > 0)).save(binary / "images" / "b1.jpg")
    Image.fromarray((label > 0).astype(np.uint8) * 255).save(binary / "masks" / "b1_mask.bmp")
    item = Folder2DLayout(binary, 2).slices("all")[0]
    assert item["image"].shape == (3, H, W)
    assert np.array_equal(item["label"].numpy(), (label > 0).astype(np.int64))
    with pytest.raises(InputError, match="b1_mask.bmp.*255"):
        Folder2DLayout(binary, 3).slices("all")[0]


# ------------------------------------------------------------------------------ splits
def test_seeded_split_is_stable_disjoint_and_complete(isic_root):
    ids = [f"case{i:03d}" for i in range(100)]
    split = seeded_split(ids)
    assert [len(split[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert seeded_split(list(reversed(ids))) == split  # independent of the listing order
    assert seeded_split(ids, seed=7) != split
    assert sorted(split["train"] + split["val"] + split["test"]) == ids

    first, second = ISIC2018Layout(isic_root), ISIC2018Layout(isic_root)
    parts = {s: first.split_ids(s) for s in ("train", "val", "test")}
    assert parts == {s: second.split_ids(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 1, 1]
    together = parts["train"] + parts["val"] + parts["test"]
    assert len(set(together)) == len(together)
    assert sorted(together) == first.split_ids("official_train")  # the training pictures only
    with pytest.raises(InputError, match="unknown split 'test_vol'"):
        first.cases("test_vol")


def test_user_split_file_is_honoured(isic_root, tmp_path):
    root = make_isic(tmp_path / "isic", n_train=5)
    wanted = {"train": ["ISIC_0000000", "ISIC_0000001.jpg"], "val": ["ISIC_0000002"], "test": ["ISIC_0000100"]}
    (root / "splits.json").write_text(json.dumps(wanted))
    layout = ISIC2018Layout(root, 2)
    assert layout.split_ids("train") == ["ISIC_0000000", "ISIC_0000001"]
    assert [item["name"] for item in layout.slices("val")] == ["ISIC_0000002"]
    assert [case["name"] for case in layout.cases("test")] == ["ISIC_0000100"]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"train": ["ISIC_0000003"], "mine": ["ISIC_0000004", "ISIC_0000001"]}))
    layout = ISIC2018Layout(isic_root, split_file=other)
    assert layout.split_ids("mine") == ["ISIC_0000004", "ISIC_0000001"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"train": ["ISIC_0000003", "ISIC_7777777"], "val": ["ISIC_0000003"]}))
    layout = ISIC2018Layout(isic_root, split_file=broken)
    with pytest.raises(InputError, match="ISIC_7777777"):
        layout.slices("train")
    problems = layout.verify()
    assert len(problems) == 2 and all("broken.json" in p for p in problems)


# ------------------------------------------------------------------------------ verify
def _assert_reported(problems, expected):
    for fname, needle in expected.items():
        hits = [p for p in problems if fname in p and needle in p]
        assert len(hits) == 1, (fname, needle, problems)
    assert len(problems) == len(expected), problems
    assert all("\n" not in p for p in problems)


def test_folder2d_verify_lists_every_problem_at_once(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    good = np.zeros((H, W), np.uint8)
    good[_disk(20, 24, 8)] = 1
    good[_disk(20, 24, 3)] = 2
    picture = np.full((H, W), 90, np.uint8)
    for name in ("ok1", "ok2", "a", "b", "c", "d", "f", "g", "h"):
        Image.fromarray(picture).save(root / "images" / f"{name}.{'jpg' if name == 'c' else 'png'}")
    for name in ("ok1", "ok2"):
        Image.fromarray(good).save(root / "masks" / f"{name}_mask.png")
    wrong = good.copy()
    wrong[0, 0] = 5
    Image.fromarray(wrong).save(root / "masks" / "a_mask.png")  # label above the class range
    Image.fromarray(good[:, :-3]).save(root / "masks" / "b_mask.png")  # size mismatch
    Image.fromarray((good > 0).astype(np.uint8) * 255).save(root / "masks" / "d_mask.png")  # 0/255, 3 classes
    Image.fromarray(good).save(root / "masks" / "e_mask.png")  # no picture e
    Image.fromarray(np.dstack([good] * 3 + [np.full((H, W), 255, np.uint8)])).save(root / "masks" / "f_mask.png")
    Image.fromarray(good.astype(np.uint16)).save(root / "masks" / "g_mask.png")
    (root / "masks" / "h_mask.png").write_bytes(b"this is not a picture")
    expected = {
        "a_mask.png": "value(s) 5",
        "b_mask.png": "40 x 45",
        "c.jpg": "without a mask",
        "d_mask.png": "255",
        "e_mask.png": "without a picture",
        "f_mask.png": "alpha",
        "g_mask.png": "16-bit",
        "h_mask.png": "not a readable",
    }
    _assert_reported(Folder2DLayout(root, 3).verify(), expected)
    assert main(["verify", "--data", str(root), "--layout", "folder2d", "--n-classes", "3"]) == 1
    out = capsys.readouterr().out
    assert all(name in out for name in expected)


def test_isic_and_segpc_verify_report_every_planted_problem(tmp_path):
    root = make_isic(tmp_path / "isic", n_train=5)
    mask = np.asarray(Image.open(root / TRAIN_GT / "ISIC_0000000_segmentation.png")).copy()
    mask[3, 3] = 128
    Image.fromarray(mask).save(root / TRAIN_GT / "ISIC_0000000_segmentation.png")
    Image.fromarray(mask[:-2] // 128 * 255).save(root / TRAIN_GT / "ISIC_0000001_segmentation.png")
    (root / TRAIN_GT / "ISIC_0000002_segmentation.png").unlink()
    shutil.copy(root / TRAIN_GT / "ISIC_0000003_segmentation.png", root / TRAIN_GT / "ISIC_0000042_segmentation.png")
    layout = ISIC2018Layout(root, 2)
    _assert_reported(
        layout.verify(),
        {
            "ISIC_0000000_segmentation.png": "128",
            "ISIC_0000001_segmentation.png": "38 x 48",
            "ISIC_0000002.jpg": "without a mask",
            "ISIC_0000042_segmentation.png": "without a picture",
        },
    )
    with pytest.raises(InputError, match="ISIC_0000000_segmentation.png.*128"):
        layout.load_pair("ISIC_0000000")

    root = make_segpc(tmp_path / "segpc", n_train=3)
    y = root / "TCIA_SegPC_dataset" / "train" / "y"
    cell = _cell(20, 20, 8)
    cell[0, 0] = 30
    Image.fromarray(cell).save(y / "2_2.bmp")
    Image.fromarray(_cell(20, 20, 8)).save(y / "77_1.bmp")
    Image.fromarray(_cell(20, 20, 8)).save(y / "notes.bmp")
    for path in y.glob("3_*.bmp"):
        path.unlink()
    _assert_reported(
        SegPC2021Layout(root).verify(),
        {"2_2.bmp": "30", "77_1.bmp": "without a picture", "notes.bmp": "<image>_<cell number>", "3.bmp": "without masks"},
    )


# ------------------------------------------------------------------------------ converters
def test_prepare_isic_writes_a_readable_folder2d(isic_root, tmp_path):
    out = tmp_path / "isic32"
    assert main(["--quiet", "prepare", "isic2018", "--raw", str(isic_root), "--output", str(out), "--converter-option", "size=32"]) == 0
    assert not list(out.rglob(".*"))  # no temporary file left behind
    description = json.loads((out / "dataset.json").read_text())
    assert description["n_classes"] == 2 and description["channels"] == 3 and description["size"] == [32, 32]
    layout = Folder2DLayout(out)
    assert layout.n_classes == 2 and layout.verify() == []
    raw = ISIC2018Layout(isic_root)
    for split in ("train", "val", "test", "official_val"):
        assert layout.split_ids(split) == raw.split_ids(split)
    item = layout.slices("train")[0]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
    assert set(np.unique(item["label"].numpy())) <= {0, 1}
    with pytest.raises(InputError, match="unknown option"):
        prepare_isic.prepare(isic_root, tmp_path / "x", colour="yes")


def test_prepare_segpc_keeps_size_and_labels(segpc_root, tmp_path):
    out = prepare_segpc.prepare(segpc_root, tmp_path / "segpc_full", size=None)
    layout, raw = Folder2DLayout(out), SegPC2021Layout(segpc_root)
    assert layout.n_classes == 3 and layout.verify() == []
    assert layout.split_ids("all") == raw.split_ids("all")
    for name in raw.split_ids("all"):
        image, label = layout.load_pair(name)
        raw_image, raw_label = raw.load_pair(name)
        assert np.array_equal(label, raw_label) and np.array_equal(image, raw_image)


# ------------------------------------------------------------------------------ CLI
def _train(config_dir, data, run, layout, n_classes):
    """A 2-step CLI training run (validation split "val" opened, not scored: the scoring of
    3-channel cases is covered by the evaluate test)."""
    config = small_train_config(
        data, run, layout=layout, n_classes=n_classes, in_channels=3, train_list="train", val_list="val",
        eval_start_epoch=3, warmup_iters=None,  # the warm-up scales with these few pictures
    )
    path = config_dir / f"{layout}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--quiet", "train", "--config", str(path), "--max-steps", "2"]) == 0
    assert (run / "last.pt").is_file()
    return run / "last.pt"


@pytest.fixture(scope="module")
def isic_checkpoint(isic_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("isic_run")
    return _train(base, isic_root, base / "run", "isic2018", 2)


def test_cli_evaluate_on_isic(isic_root, isic_checkpoint, tmp_path):
    report = tmp_path / "eval"
    args = ["--quiet", "evaluate", "--checkpoint", str(isic_checkpoint), "--data", str(isic_root), "--split", "test"]
    assert main([*args, "--output", str(report), "--max-overlays", "1"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["per_case"]) == set(ISIC2018Layout(isic_root).split_ids("test"))
    assert list((report / "overlays").glob("*.png"))


def test_cli_predict_jpegs_to_label_pngs(isic_root, isic_checkpoint, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("ISIC_0000001.jpg", "ISIC_0000005.jpg"):
        shutil.copy(isic_root / TRAIN_IN / name, inputs / name)
    predicted = tmp_path / "pred"
    args = ["--quiet", "predict", "--checkpoint", str(isic_checkpoint), "--input", str(inputs), "--output", str(predicted)]
    assert main(args) == 0
    for name in ("ISIC_0000001", "ISIC_0000005"):
        labels = np.asarray(Image.open(predicted / f"{name}.png"))
        assert labels.shape == (H, W) and labels.dtype == np.uint8 and labels.max() < 2


def test_cli_train_on_segpc(segpc_root, tmp_path):
    _train(tmp_path, segpc_root, tmp_path / "run", "segpc2021", 3)


@pytest.mark.parametrize("which", ["segpc2021", "folder2d"])
def test_cli_verify_train_evaluate_predict(which, segpc_root, tmp_path, capsys):
    data = segpc_root
    if which == "folder2d":  # the converter's output is a plain folder of pictures and masks
        data = tmp_path / "prepared"
        args = ["--quiet", "prepare", "segpc2021", "--raw", str(segpc_root), "--output", str(data), "--converter-option", "size=32"]
        assert main(args) == 0
    assert main(["verify", "--layout", which, "--data", str(data), "--n-classes", "3"]) == 0
    checkpoint = _train(tmp_path, data, tmp_path / "run", which, 3)
    report = tmp_path / "eval"
    args = ["--quiet", "evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "val"]
    assert main([*args, "--output", str(report), "--max-overlays", "1"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["per_case"]) == set(open_layout(which, data, 3).split_ids("val"))
    assert len(metrics["classes"]) == 2
    pictures = sorted(p for p in data.rglob("*") if p.suffix in (".bmp", ".png") and p.parent.name in ("x", "images"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(pictures[0], inputs / pictures[0].name)
    predicted = tmp_path / "pred"
    args = ["--quiet", "predict", "--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(predicted)]
    assert main(args) == 0
    (label_map,) = predicted.glob("*.png")
    source = np.asarray(Image.open(pictures[0]))
    labels = np.asarray(Image.open(label_map))
    assert labels.shape == source.shape[:2] and labels.max() < 3
    capsys.readouterr()


def test_cli_evaluate_layout_options_override_the_trained_ones(isic_root, isic_checkpoint, tmp_path):
    """``evaluate --set seed=7`` scores the test split of seed 7, not the trained seed's."""
    default_ids = set(ISIC2018Layout(isic_root).split_ids("test"))
    other_ids = set(ISIC2018Layout(isic_root, seed=7).split_ids("test"))
    assert other_ids != default_ids
    report = tmp_path / "eval"
    args = ["--quiet", "evaluate", "--checkpoint", str(isic_checkpoint), "--data", str(isic_root), "--split", "test"]
    assert main([*args, "--output", str(report), "--max-overlays", "0", "--layout-option", "seed=7"]) == 0
    assert set(json.loads((report / "metrics.json").read_text())["per_case"]) == other_ids
