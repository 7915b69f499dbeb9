"""Images whose channel count differs from the model's in_channels: converted with a warning
where the layout can (folder2d), refused before any work where it cannot, in every command."""
import numpy as np
import pytest
import yaml
from PIL import Image

from simmpnet.cli import main


@pytest.fixture
def colour_folder(tmp_path):
    """A folder2d dataset of 12 RGB pictures (a bright square on a noisy background)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "colour"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(12):
        label = np.zeros((40, 40), np.uint8)
        label[8 + i : 24 + i, 10:26] = 1
        image = rng.integers(0, 90, (40, 40, 3), dtype=np.uint8)
        image[label > 0] = (220, 180, 140)
        Image.fromarray(image).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(label).save(root / "masks" / f"p{i:02d}.png")
    return root


def _config(root, out, **changes):
    values = {
        "data_root": str(root), "layout": "folder2d", "train_list": "train", "val_list": "val", "n_classes": 2,
        "in_channels": 1, "model": "unet", "input_size": 32, "batch_size": 4, "epochs": 1, "max_steps": 2,
        "eval_start_epoch": 1, "device": "cpu", "threads": 1, "progress": False, "output_dir": str(out),
        "model_overrides": {"channels": [8, 16], "strides": [2]},
    }
    values.update(changes)
    return values


def test_colour_pictures_for_a_grey_model_are_converted_with_a_warning_in_every_command(colour_folder, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(colour_folder, tmp_path / "run")))
    assert main(["verify", "--data", str(colour_folder), "--layout", "folder2d", "--in-channels", "1"]) == 0
    assert main(["--quiet", "train", "--config", str(config)]) == 0
    out = tmp_path / "eval"
    checkpoint = str(tmp_path / "run" / "last.pt")
    assert main(["--quiet", "evaluate", "--checkpoint", checkpoint, "--data", str(colour_folder), "--output", str(out)]) == 0
    warning = f"{colour_folder}: 3-channel pictures converted to 1 channel(s) for in_channels 1"
    assert capsys.readouterr().err.count(warning) == 3  # verify, train, evaluate
    assert (out / "metrics.json").is_file()


def test_a_contradicting_channels_option_is_refused_before_any_work(colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(colour_folder, out, layout_options={"channels": 3})))
    assert main(["--quiet", "train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "layout_options.channels 3" in err and "in_channels is 1" in err and str(colour_folder) in err
    assert not out.exists()
