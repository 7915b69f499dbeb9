import gzip
import json
import logging
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import small_train_config
from PIL import Image

from simmpnet.checkpoint import load_checkpoint, save_checkpoint
from simmpnet.cli import main


@pytest.fixture(scope="module")
def trained(brain_data, tmp_path_factory):
    """A 2-step CLI training run on the real data."""
    out = tmp_path_factory.mktemp("cli") / "run"
    config = tmp_path_factory.mktemp("cfg") / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, out, val_list=None)))
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2"]) == 0
    return out / "last.pt"


def test_train_evaluate_predict_round_trip(brain_data, trained, tmp_path, capsys):
    assert trained.is_file()
    out = tmp_path / "eval"
    assert main(["--quiet", "evaluate", "--checkpoint", str(trained), "--data", str(brain_data), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("protocol", "classes", "mean", "per_class", "per_case"):
        assert key in metrics
    assert set(metrics["mean"]) >= {"dsc", "hd95", "jaccard", "asd"}
    assert len(metrics["per_case"]) == 3 and len(metrics["classes"]) == 8
    assert (out / "metrics.md").is_file() and list((out / "overlays").glob("*.png"))
    assert "DSC" in capsys.readouterr().out

    # inputs of several formats, in one folder
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with h5py.File(sorted((brain_data / "test_vol_h5").glob("*.h5"))[0], "r") as f:
        volume = f["image"][:]
    affine = np.array([[0.0, 0.0, 1.2, -10.0], [0.9, 0.0, 0.0, 20.0], [0.0, 0.9, 0.0, 5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image((volume.transpose(2, 1, 0) * 800).astype(np.int16), affine), inputs / "scan.nii.gz")
    Image.fromarray((volume[5] * 255).astype(np.uint8)).save(inputs / "slice.png")
    np.savez(inputs / "slab.npz", image=volume[:3])
    predicted = tmp_path / "pred"
    args = ["--quiet", "predict", "--checkpoint", str(trained), "--input", str(inputs), "--output", str(predicted), "--overlays",
            "--save-probabilities"]
    assert main(args) == 0
    scan = nib.load(predicted / "scan.nii.gz")
    source = nib.load(inputs / "scan.nii.gz")
    assert np.array_equal(scan.affine, source.affine) and scan.shape == source.shape
    assert scan.header.get_zooms() == source.header.get_zooms()
    labels = np.asarray(scan.dataobj)
    assert labels.dtype == np.uint8 and labels.max() < 9
    png = np.asarray(Image.open(predicted / "slice.png"))
    assert png.shape == volume[5].shape
    with np.load(predicted / "slab.npz") as f:
        assert f["label"].shape == (3, *volume.shape[1:])
    # one layout: label maps at the top (what `evaluate --predictions` reads), the rest in sub-folders
    assert sorted(p.name for p in (predicted / "overlays").iterdir()) == ["scan.png", "slab.png", "slice.png"]
    assert sorted(p.name for p in (predicted / "probabilities").iterdir()) == ["scan.npz", "slab.npz", "slice.npz"]
    with np.load(predicted / "probabilities" / "scan.npz") as f:
        probs = f["probabilities"]
    # class-first, in the axis order of the network's view of the volume (D, H, W)
    assert probs.shape[0] == 9 and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert sorted(p.name for p in predicted.iterdir()) == [
        "overlays", "prediction_summary.json", "probabilities", "scan.nii.gz", "slab.npz", "slice.png"]


def _expect_clean_error(capsys, args, *needles):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("simmpnet: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert "Traceback" not in err[0]


def test_bad_prediction_inputs_end_in_one_clear_line(trained, tmp_path, capsys):
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 100)[:60])
    out = tmp_path / "out"
    _expect_clean_error(capsys, ["predict", "--checkpoint", str(trained), "--input", str(corrupt), "--output", str(out)], "broken.nii.gz")
    assert not out.exists() or not any(out.iterdir())
    nan = tmp_path / "nan.npz"
    np.savez(nan, image=np.full((2, 8, 8), np.nan, dtype=np.float32))
    _expect_clean_error(capsys, ["predict", "--checkpoint", str(trained), "--input", str(nan), "--output", str(out)], "nan.npz")
    missing = tmp_path / "missing.nii.gz"
    _expect_clean_error(capsys, ["predict", "--checkpoint", str(trained), "--input", str(missing), "--output", str(out)], "missing.nii.gz")
    _expect_clean_error(capsys, ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--input", str(nan), "--output", str(out)], "nope.pt")
    assert not out.exists() or not any(out.iterdir())


def _copy_dataset(source: Path, target: Path) -> Path:
    (target / "train_npz").mkdir(parents=True)
    (target / "lists").mkdir()
    names = (source / "lists" / "small.txt").read_text().split()[:4]
    for name in names:
        (target / "train_npz" / f"{name}.npz").write_bytes((source / "train_npz" / f"{name}.npz").read_bytes())
    (target / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    return target / "train_npz" / f"{names[1]}.npz"


@pytest.mark.parametrize(
    "problem, needle",
    [("label_above", "label"), ("size_mismatch", "shape"), ("nan_image", "NaN"), ("missing", "not found")],
)
def test_bad_training_data_ends_in_one_clear_line(brain_data, tmp_path, capsys, problem, needle):
    data = tmp_path / "data"
    victim = _copy_dataset(brain_data, data)
    with np.load(victim) as f:
        image, label = f["image"].copy(), f["label"].copy()
    if problem == "label_above":
        label[0, 0] = 9
    elif problem == "size_mismatch":
        label = label[:-3]
    elif problem == "nan_image":
        image[4, 4] = np.nan
    if problem == "missing":
        victim.unlink()
    else:
        np.savez(victim, image=image, label=label)
    out = tmp_path / "run"
    config = small_train_config(data, out, train_list="train", val_list=None)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    _expect_clean_error(capsys, ["train", "--config", str(path), "--max-steps", "2"], victim.name, needle)
    assert not out.exists() or not any(out.iterdir())


def test_every_command_has_help(capsys):
    for command in ("demo", "train", "evaluate", "predict", "prepare", "verify", "compare"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: simmpnet" in capsys.readouterr().out


def test_verify_lists_every_problem_at_once(brain_data, tmp_path, capsys):
    assert main(["verify", "--data", str(brain_data), "--n-classes", "9"]) == 0
    assert "no problems" in capsys.readouterr().out
    data = tmp_path / "data"
    first = _copy_dataset(brain_data, data)
    names = (data / "lists" / "train.txt").read_text().split()
    second = data / "train_npz" / f"{names[2]}.npz"
    with np.load(first) as f:
        np.savez(first, image=f["image"], label=np.where(f["label"] > 0, 9, 0))
    second.unlink()
    assert main(["verify", "--data", str(data), "--n-classes", "9"]) == 1
    out = capsys.readouterr().out
    assert first.name in out and second.name in out


def test_intensity_normalisation_rules():
    from simmpnet.predict import normalise_intensity

    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    np.testing.assert_allclose(normalise_intensity(hu, (-125, 275)), [0.0, 0.0, 0.5, 1.0, 1.0])
    unit = np.linspace(0, 1, 11)
    assert normalise_intensity(unit) is not None and np.array_equal(normalise_intensity(unit), unit.astype(np.float32))
    raw = np.arange(1000.0)
    scaled = normalise_intensity(raw)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    with pytest.raises(Exception, match="low < high"):
        normalise_intensity(hu, (5, 5))


def test_predict_window_replaces_the_normalisation(trained, tmp_path):
    """``--window LOW HIGH`` clips to the window: a window above every intensity gives the
    prediction of an all-zero image."""
    inputs, zeros = tmp_path / "in", tmp_path / "zeros"
    inputs.mkdir()
    zeros.mkdir()
    rng = np.random.default_rng(0)
    np.savez(inputs / "slab.npz", image=rng.uniform(0, 400, (2, 40, 40)).astype(np.float32))
    np.savez(zeros / "slab.npz", image=np.zeros((2, 40, 40), np.float32))
    common = ["--quiet", "predict", "--checkpoint", str(trained)]
    assert main([*common, "--input", str(inputs), "--output", str(tmp_path / "a"), "--window", "500", "900"]) == 0
    assert main([*common, "--input", str(zeros), "--output", str(tmp_path / "b")]) == 0
    with np.load(tmp_path / "a" / "slab.npz") as a, np.load(tmp_path / "b" / "slab.npz") as b:
        assert np.array_equal(a["label"], b["label"])
    assert main([*common, "--input", str(inputs), "--output", str(tmp_path / "d"), "--window", "900", "500"]) == 2


def test_resample_option_of_evaluate_and_predict(brain_data, trained, tmp_path, capsys):
    """``--resample logits`` reaches the evaluation (recorded in metrics.json and metrics.md)
    and the prediction (label maps in the input's size); without the option, evaluate uses the
    training config's ``resample``; an unknown mode is refused."""
    payload = load_checkpoint(trained)
    assert payload["config"]["resample"] == "labels"
    payload["config"]["resample"] = "logits"
    trained_logits = save_checkpoint(payload, tmp_path / "logits.pt")
    common = ["--quiet", "evaluate", "--data", str(brain_data), "--max-overlays", "0"]
    runs = {
        "flag": ["--checkpoint", str(trained), "--resample", "logits"],
        "config": ["--checkpoint", str(trained_logits)],
        "default": ["--checkpoint", str(trained)],
    }
    for name, args in runs.items():
        assert main([*common, *args, "--output", str(tmp_path / name)]) == 0
    recorded = {name: json.loads((tmp_path / name / "metrics.json").read_text())["resample"] for name in runs}
    assert recorded == {"flag": "logits", "config": "logits", "default": "labels"}
    assert "bilinear interpolation of the logits" in (tmp_path / "flag" / "metrics.md").read_text()
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.savez(inputs / "slab.npz", image=np.random.default_rng(0).random((2, 50, 70), dtype=np.float32))
    predict = ["--quiet", "predict", "--checkpoint", str(trained), "--input", str(inputs)]
    assert main([*predict, "--output", str(tmp_path / "p"), "--resample", "logits"]) == 0
    with np.load(tmp_path / "p" / "slab.npz") as f:
        assert f["label"].shape == (2, 50, 70) and f["label"].max() < 9
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*predict, "--output", str(tmp_path / "q"), "--resample", "cubic"])
    assert exc.value.code == 2 and "invalid choice: 'cubic'" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
    # a hand-edited checkpoint with an unknown mode: one line, and no output folder
    payload["config"]["resample"] = "cubic"
    edited = save_checkpoint(payload, tmp_path / "cubic.pt")
    for command in (["predict", "--input", str(inputs)], ["evaluate", "--data", str(brain_data)]):
        out = tmp_path / f"edited_{command[0]}"
        assert main(["--quiet", command[0], "--checkpoint", str(edited), *command[1:], "--output", str(out)]) == 2
        assert "resample must be one of ['labels', 'logits'], got 'cubic'" in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.slow
def test_compare_trains_both_models_on_the_demo_footing(brain_data, tmp_path, capsys):
    """`simmpnet compare` (what `make compare` runs; `make demo` is its first half) end to end
    with 2 steps per model: the demo config's per-model sections reach the right model, and
    both networks see the same 96 px slices."""
    from simmpnet.checkpoint import load_checkpoint

    out = tmp_path / "compare"
    quick = ["--set", "train_list=small", "--set", "val_list=null", "--set", "progress=false"]
    assert main(["compare", "--data", str(brain_data), "--output", str(out), "--max-steps", "2", "--device", "cpu", *quick]) == 0
    printed = capsys.readouterr().out
    assert "simmpnet DSC" in printed and "unet DSC" in printed and "medial_temporal" in printed
    configs = {}
    for name in ("simmpnet", "unet"):
        summary = json.loads((out / name / "metrics.json").read_text())
        assert 0.0 <= summary["mean"]["dsc"] <= 1.0 and summary["n_cases"] == 3
        assert summary["training"]["stop"] == "max_steps" and summary["training"]["steps"] == 2
        config = configs[name] = load_checkpoint(out / name / "last.pt")["config"]
        assert config["model"] == name and config["input_size"] == 96
        assert config["augment"] == {"p_rot_flip": 0.0}
    assert configs["simmpnet"]["model_overrides"] == {"img_size_a": 96, "img_size_b": 84}
    assert configs["unet"]["model_overrides"] == {}


def test_demo_config_layers_yaml_model_section_and_command_line(tmp_path):
    from simmpnet.demo import demo_config

    unet = demo_config("unet", tmp_path, tmp_path / "out", "cpu")
    assert unet.model == "unet" and unet.model_overrides == {} and unet.input_size == 96
    # a step budget: the demo's result must not depend on the machine's speed
    assert unet.max_steps is not None and unet.max_steps > 0 and unet.time_budget_s is None
    sim = demo_config("simmpnet", tmp_path, tmp_path / "out", "cpu", {"input_size": 128, "model_overrides": {}}, 7, 60)
    assert sim.input_size == 128 and sim.model_overrides == {} and sim.max_steps == 7 and sim.time_budget_s == 60


def test_help_version_and_argument_errors_do_not_import_the_network():
    """`simmpnet --help` stays fast because nothing heavy is imported before a command runs:
    checked by what the process imported, not by a clock."""
    import subprocess
    import sys

    from conftest import cli_env

    probe = (
        "import sys, runpy\n"
        "sys.argv = ['simmpnet', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('simmpnet', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    heavy = sorted(m for m in ('torch', 'timm', 'torchvision', 'scipy', 'monai') if m in sys.modules)\n"
        "    print('EXIT', exit.code, 'HEAVY', heavy)\n"
    )
    for argv, code in ((["--help"], 0), (["--version"], 0), (["train", "--help"], 0), (["evaluate"], 2)):
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=cli_env(), timeout=120
        )
        assert f"EXIT {code} HEAVY []" in result.stdout, (argv, result.stdout, result.stderr)
    version = subprocess.run(
        [sys.executable, "-m", "simmpnet", "--version"], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    from simmpnet import __version__

    assert version.stdout.strip() == f"simmpnet {__version__}"


def test_global_options_are_accepted_after_the_subcommand():
    from simmpnet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--debug", "verify", "--data", "d"]).debug is True
    assert parser.parse_args(["verify", "--data", "d", "--debug", "--quiet"]).quiet is True
    assert parser.parse_args(["verify", "--data", "d"]).debug is False


def test_training_into_a_folder_that_holds_a_run_is_refused_unless_resumed_or_overwritten(brain_data, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, out, val_list=None)))
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2"]) == 0
    capsys.readouterr()  # the first run's own output (its max_steps warning)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "log.jsonl")}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(small_train_config(brain_data, out, val_list=None, lr=0.1)))
    _expect_clean_error(capsys, ["--quiet", "train", "--config", str(other), "--max-steps", "1"], str(out), "--resume", "--overwrite")
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    # --resume continues the same run; --overwrite replaces it: one run per folder either way
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "3", "--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["state"]["global_step"] == 3
    assert main(["--quiet", "train", "--config", str(other), "--max-steps", "1", "--overwrite"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "end" for r in records) == 1
    payload = load_checkpoint(out / "last.pt")
    assert payload["state"]["global_step"] == 1 and payload["config"]["lr"] == 0.1


def test_a_library_warning_is_one_line_without_its_path(monkeypatch, capsys, tmp_path):
    import warnings

    from simmpnet import cli

    def noisy(args):
        logging.getLogger("highdicom.seg").info("an INFO line of a library")
        logging.getLogger("simmpnet.predict").info("our own INFO line")
        warnings.warn("something a library says", UserWarning)
        return 0

    monkeypatch.setattr(cli, "cmd_predict", noisy)
    shown = warnings.showwarning
    assert main(["predict", "--checkpoint", "x", "--input", "y", "--output", str(tmp_path)]) == 0
    assert warnings.showwarning is shown  # restored
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["our own INFO line", "simmpnet: warning: something a library says (UserWarning)"]


def _options(parser) -> dict[str, list]:
    """The visible options of every subcommand: {command: [argparse actions]}."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]
        for name, p in sub.choices.items()
    }


def test_one_flag_name_per_concept_and_every_option_has_help():
    from simmpnet.cli import build_parser

    commands = _options(build_parser())
    for name, actions in commands.items():
        for action in actions:
            assert action.help, f"{name} {action.option_strings}: no help"
    flags = {name: {s for a in actions for s in a.option_strings} for name, actions in commands.items()}
    # --set is a training config key, and only that
    assert {name for name, f in flags.items() if "--set" in f} == {"train", "demo", "compare"}
    assert {name for name, f in flags.items() if "--layout-option" in f} == {"evaluate", "report", "verify"}
    # one name for the step limit; --overlays a switch (predict), --max-overlays a count (evaluate)
    assert not any("--steps" in f for f in flags.values())
    assert all("--max-steps" in flags[name] for name in ("train", "demo", "compare"))
    assert "--max-overlays" in flags["evaluate"] and "--overlays" not in flags["evaluate"]
    # --output is a folder wherever it appears; a file is --output-file
    for name, actions in commands.items():
        for action in actions:
            if "--output" in action.option_strings:
                assert "file" not in action.help.split("(")[0] or "folder" in action.help, (name, action.help)
    assert "--output-file" in flags["report"] and "--output-file" in flags["export"]
    assert "--config" in flags["verify"]


def test_old_spellings_still_work_for_one_release_with_a_warning(capsys):
    from simmpnet.cli import build_parser

    parser = build_parser()
    cases = [
        (["compare", "--steps", "7"], "max_steps", 7),
        (["evaluate", "--output", "o", "--overlays", "2"], "overlays", 2),
        (["evaluate", "--output", "o", "--set", "fold=1", "--layout-option", "seed=2"], "layout_options", ["fold=1", "seed=2"]),
        (["prepare", "isic2018", "--raw", "r", "--output", "o", "--set", "size=8"], "converter_options", ["size=8"]),
        (["report", "run", "--output", "x.html"], "output_file", "x.html"),
    ]
    for argv, dest, value in cases:
        assert getattr(parser.parse_args(argv), dest) == value, argv
        err = capsys.readouterr().err
        assert "is deprecated and goes in the next release" in err, argv


def test_verify_reads_the_dataset_of_a_training_config(brain_data, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, tmp_path / "run")))
    assert main(["verify", "--config", str(config)]) == 0
    assert f"{brain_data}: no problems found (synapse layout" in capsys.readouterr().out
    config.write_text(yaml.safe_dump(small_train_config(tmp_path / "nowhere", tmp_path / "run")))
    assert main(["verify", "--config", str(config)]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
