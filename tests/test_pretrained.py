"""One public path for trained models (issue 18, item 1): ``save_pretrained`` /
``from_pretrained`` (config.json + model.safetensors, the CLI's checkpoints, Hub ids),
the preprocessing that travels with a model, ``model.predict``, ``export --format
safetensors``, and files of the wrong kind named as what they are (item 4)."""
import json
import subprocess
import sys
import textwrap
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import cli_env, small_train_config
from safetensors.torch import save_file

from simmpnet import Preprocessing, SimMPNet
from simmpnet.checkpoint import load_checkpoint
from simmpnet.cli import main
from simmpnet.errors import CheckpointError, InputError
from simmpnet.predict import normalise_intensity

CLASS_NAMES = ["background", "frontal", "insula", "limbic", "occipital", "parietal", "temporal", "cerebellum", "other"]
WINDOW = [0.0, 1000.0]  # not what percentile normalisation of the 0..800 volume gives


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, value in sa.items():
        assert value.dtype == sb[name].dtype and torch.equal(value, sb[name]), name


@pytest.fixture(scope="module")
def model():
    """A tiny network whose memory banks and counters moved away from their initial values."""
    torch.manual_seed(0)
    net = SimMPNet.from_variant("tiny", n_classes=4, img_size_a=64, img_size_b=56, warmup_iters=1)
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, 64, 64))
    net.commit_memory()
    net.preprocessing = Preprocessing(64, 1, (-125, 275), ("bg", "liver", "kidney", "spleen"), "logits")
    return net


@pytest.fixture(scope="module")
def trained(brain_data, tmp_path_factory):
    """A 2-step CLI training run whose config sets every preprocessing key."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    config = out.parent / "train.yaml"
    values = small_train_config(
        brain_data, out, val_list=None, intensity_window=WINDOW, class_names=CLASS_NAMES, resample="logits"
    )
    config.write_text(yaml.safe_dump(values))
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2"]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def nifti(brain_data, tmp_path_factory):
    """A brain test volume as an int16 NIfTI in raw intensities (0..800)."""
    with h5py.File(next((brain_data / "test_vol_h5").glob("*.h5")), "r") as f:
        volume = f["image"][:]
    path = tmp_path_factory.mktemp("nifti") / "scan.nii.gz"
    affine = np.diag([0.9, 0.9, 1.2, 1.0])
    nib.save(nib.Nifti1Image((volume.transpose(2, 1, 0) * 800).astype(np.int16), affine), path)
    return path


def test_save_pretrained_round_trip(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "simmpnet-pretrained" and config["preprocessing"]["normalisation"] == "window"
    loaded = SimMPNet.from_pretrained(folder)
    assert not loaded.training
    assert loaded.config == model.config and (loaded.n_classes, loaded.in_channels) == (4, 1)
    assert loaded.preprocessing == model.preprocessing
    _state_equal(model, loaded)
    # every buffer, the memory banks and counters included (timm's non-persistent position
    # tables are rebuilt from the config)
    again = dict(loaded.named_buffers())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, again[name]), name
    assert {"bank", "prototypes", "warmup_counter", "update_count"} <= {
        name.rsplit(".", 1)[-1] for name in loaded.state_dict() if ".memory." in name
    }
    assert not loaded.in_warmup and not model.in_warmup
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    # the file and config.json forms of the same folder
    for source in (folder / "model.safetensors", folder / "config.json", str(folder)):
        _state_equal(model, SimMPNet.from_pretrained(source))
    # SimMPNet.save keeps the preprocessing as well
    assert SimMPNet.load(model.save(tmp_path / "model.pt")).preprocessing == model.preprocessing


def test_a_new_model_has_default_preprocessing():
    net = SimMPNet.from_variant("tiny", n_classes=3, in_channels=3)
    assert net.preprocessing == Preprocessing(input_size=128, in_channels=3)
    assert net.preprocessing.normalisation == "percentile" and net.preprocessing.resample == "labels"
    with pytest.raises(InputError, match="low < high"):
        Preprocessing(64, intensity_window=(5, 5))
    with pytest.raises(InputError, match="resample"):
        Preprocessing(64, resample="cubic")


def test_predict_leaves_the_model_as_it_was(model):
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, (3, 50, 70)).astype(np.float32)
    labels, probs = model.predict(volume, probabilities=True)
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert labels.shape == (3, 50, 70) and labels.dtype == np.uint8
    assert probs.shape == (4, 3, 50, 70) and probs.dtype == np.float32
    assert np.array_equal(probs.argmax(0), labels)  # "logits": softmax of the interpolated logits
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(model.predict(volume), labels)
    # "labels" (the paper's nearest resize): the probabilities follow the label map
    labels, probs = model.predict(volume, probabilities=True, resample="labels", batch_size=2)
    assert np.array_equal(probs.argmax(0), labels)
    # 2D images: grey (H, W) and colour (H, W, 3), converted to grey for a 1-channel model
    image = rng.uniform(0, 255, (40, 30, 3))
    labels, probs = model.predict(image, probabilities=True)
    assert labels.shape == (40, 30) and probs.shape == (4, 40, 30)
    assert model.predict(image[..., 0]).shape == (40, 30)
    assert model.predict(image, volume=True).shape == (40, 30, 3)
    assert model.training
    model.eval()
    with pytest.raises(InputError, match="NaN"):
        model.predict(np.full((8, 8), np.nan))
    with pytest.raises(InputError, match="shape"):
        model.predict(np.zeros((2, 8, 8, 1)))


def test_from_pretrained_reads_a_training_checkpoint(trained):
    from simmpnet.training import load_trained_model

    model = SimMPNet.from_pretrained(trained)
    assert not model.training
    assert model.preprocessing == Preprocessing(
        input_size=64, in_channels=1, intensity_window=tuple(WINDOW), class_names=tuple(CLASS_NAMES), resample="logits",
        trained_on="resized-slices",
    )
    reference, size, _ = load_trained_model(trained)
    assert size == 64
    _state_equal(model, reference)
    # SimMPNet.load takes the trainer's files too
    loaded = SimMPNet.load(trained)
    assert loaded.preprocessing == model.preprocessing
    _state_equal(model, loaded)


def test_export_safetensors_writes_a_folder_from_pretrained_loads(trained, tmp_path, capsys):
    out = tmp_path / "weights"
    args = ["export", "--checkpoint", str(trained), "--format", "safetensors"]
    assert main(["--quiet", *args, "--output", str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    exported = SimMPNet.from_pretrained(out)
    reference = SimMPNet.from_pretrained(trained)
    _state_equal(exported, reference)
    assert exported.preprocessing == reference.preprocessing
    assert (out / "model.safetensors").stat().st_size < trained.stat().st_size / 2  # no optimiser state
    assert main([*args, "--output", str(tmp_path / "w2"), "--input-size", "32"]) == 2
    assert "--input-size does not apply" in capsys.readouterr().err


@pytest.mark.slow
def test_notebook_journey_matches_the_cli(trained, nifti, tmp_path):
    """train (fixture) -> from_pretrained(last.pt) -> save_pretrained -> from_pretrained in a
    fresh process -> predict on a NIfTI volume: the labels the CLI's predict writes, byte for
    byte.  Both sides run one thread, so that no sum is split differently."""
    folder = SimMPNet.from_pretrained(trained).save_pretrained(tmp_path / "pretrained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict = ["--quiet", "predict", "--input", str(nifti)]
        assert main([*predict, "--checkpoint", str(trained), "--output", str(tmp_path / "cli")]) == 0
        # the CLI takes the folder as --checkpoint too
        assert main([*predict, "--checkpoint", str(folder), "--output", str(tmp_path / "cli_folder")]) == 0
    finally:
        torch.set_num_threads(threads)
    expected = np.asarray(nib.load(tmp_path / "cli" / "scan.nii.gz").dataobj)
    assert np.asarray(nib.load(tmp_path / "cli_folder" / "scan.nii.gz").dataobj).tobytes() == expected.tobytes()
    script = textwrap.dedent(
        """
        import sys
        import nibabel as nib
        import numpy as np
        import torch
        from simmpnet import SimMPNet

        torch.set_num_threads(1)
        model = SimMPNet.from_pretrained(sys.argv[1])
        volume = nib.load(sys.argv[2]).get_fdata(dtype=np.float32).T  # (x, y, z) -> (D, H, W)
        labels = model.predict(volume)
        np.save(sys.argv[3], labels.T)
        print(model.preprocessing)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(nifti), str(tmp_path / "labels.npy")],
        env=cli_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "intensity_window=(0.0, 1000.0)" in result.stdout and "resample='logits'" in result.stdout
    labels = np.load(tmp_path / "labels.npy")
    assert labels.dtype == expected.dtype == np.uint8 and labels.shape == expected.shape
    assert labels.tobytes() == expected.tobytes()
    # the window mattered: percentile normalisation of the same volume is another input
    volume = nib.load(nifti).get_fdata(dtype=np.float32).T
    assert not np.array_equal(normalise_intensity(volume, WINDOW), normalise_intensity(volume))


def test_hub_id_without_network_fails_quickly(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("from_pretrained tried to reach the network while offline")

    # fails quickly because it never waits on a connection (checked, not timed)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(CheckpointError, match="could not be downloaded from the Hugging Face Hub"):
        SimMPNet.from_pretrained("simmpnet-tests/no-such-model", cache_dir=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        SimMPNet.from_pretrained("simmpnet-tests/no-such-model", local_files_only=True, cache_dir=tmp_path / "hf")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        SimMPNet.from_pretrained(tmp_path / "missing")


def test_files_of_the_wrong_kind_are_named(model, trained, tmp_path, capsys):
    conv = torch.nn.Conv2d(1, 2, 1)
    script = tmp_path / "model_ts.pt"
    onnx_file = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of TorchScript and its ONNX exporter
        torch.jit.save(torch.jit.trace(conv, torch.rand(1, 1, 8, 8)), str(script))
        torch.onnx.export(conv, (torch.rand(1, 1, 8, 8),), str(onnx_file), dynamo=False)
    other = tmp_path / "resnet"  # another library's Hub folder
    other.mkdir()
    save_file({k: v.contiguous() for k, v in conv.state_dict().items()}, str(other / "model.safetensors"))
    (other / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 2}))
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    save_file({"w": torch.zeros(2)}, str(lone))
    mixed = model.save_pretrained(tmp_path / "mixed")  # our config.json, another model's weights
    save_file({k: v.contiguous() for k, v in conv.state_dict().items()}, str(mixed / "model.safetensors"))

    cases = {
        script: "a TorchScript archive",
        onnx_file: "an ONNX model",
        other: "describes another model (architecture: resnet18)",
        other / "model.safetensors": "describes another model",
        lone: "a safetensors weights file without the config.json",
        mixed: "written for another configuration",
        trained.parent: "a training run folder",
    }
    for path, needle in cases.items():
        with pytest.raises(CheckpointError) as err:
            SimMPNet.from_pretrained(path)
        message = str(err.value)  # names the path given, or the folder of a file in a folder
        assert needle in message and (str(path) in message or f"{path.parent}:" in message), message
    # the same files given to the CLI's --checkpoint (and to the checkpoint loader)
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.savez(inputs / "slab.npz", image=np.zeros((1, 16, 16), np.float32))
    named = {script: "a TorchScript archive", onnx_file: "an ONNX model", lone: "a safetensors weights file"}
    for path, needle in named.items():
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(path)
        for command in (
            ["predict", "--input", str(inputs), "--output", str(tmp_path / "out")],
            ["export", "--output-file", str(tmp_path / "x.onnx"), "--no-check"],
        ):
            assert main([command[0], "--checkpoint", str(path), *command[1:]]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and needle in err[0] and "weights_only" not in err[0], err


def test_save_pretrained_writes_a_model_card_and_keeps_the_users_own(model, tmp_path):
    from simmpnet.model_card import CARD_MARKER

    folder = model.save_pretrained(tmp_path / "m")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: simmpnet\n") and "pipeline_tag: image-segmentation" in card
    assert "**Research use only.**" in card and "not a medical device" in card
    assert "bg, liver, kidney, spleen" in card and "[-125.0, 275.0]" in card and "`logits` resampling" in card
    assert "Not recorded with these weights" in card and "## Evaluation" not in card
    assert card.rstrip().endswith(CARD_MARKER)
    # the user's own card is never replaced; a card simmpnet wrote is
    (folder / "README.md").write_text("# my notes\n")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my notes\n"
    (folder / "README.md").write_text(card.replace("# Sim-MPNet segmentation model", "# old"))
    model.save_pretrained(folder)
    assert "# Sim-MPNet segmentation model" in (folder / "README.md").read_text()
    assert SimMPNet.from_pretrained(folder).preprocessing == model.preprocessing


def test_export_writes_the_runs_config_and_scores_into_the_model_card(trained, tmp_path):
    metrics = {
        "checkpoint": str(trained), "data": "brain", "layout": "synapse", "split": "test_vol", "n_cases": 3,
        "headline_convention": "present", "distance_unit": "mm", "classes": list(CLASS_NAMES[1:]),
        "mean": {"dsc": 0.7154, "hd95": 4.25}, "per_class": {CLASS_NAMES[1]: {"dsc": 0.8, "hd95": 3.0}},
        "pooled_dsc": {"mean": 0.8087},
    }
    (trained.parent / "metrics.json").write_text(json.dumps(metrics))
    try:
        assert main(["--quiet", "export", "--checkpoint", str(trained), "--output", str(tmp_path / "w")]) == 0
        card = (tmp_path / "w" / "README.md").read_text()
        assert f"from `{trained}`" in card and '`train_list`: `"small"`' in card and '`variant`: `"tiny"`' in card
        assert "## Evaluation" in card and "**71.54 %**" in card and f"| {CLASS_NAMES[1]} | 80.00 % | 3.00 |" in card
        assert "Pooled DSC (all voxels of all cases at once): 80.87 %." in card
        # scores of another checkpoint are not this model's
        (trained.parent / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": str(tmp_path / "other.pt")}))
        assert main(["--quiet", "export", "--checkpoint", str(trained), "--output", str(tmp_path / "w2")]) == 0
        assert "## Evaluation" not in (tmp_path / "w2" / "README.md").read_text()
    finally:
        (trained.parent / "metrics.json").unlink()
