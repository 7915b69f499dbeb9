"""Crash safety: every file simmpnet writes goes through a temporary file and a rename.

* A failed write (a full disk, simulated by making ``os.fsync``, ``os.replace`` or
  ``torch.save`` fail with ENOSPC) ends in a clear error naming the file, leaves the previous
  version of the file as it was and no temporary file behind.
* Training killed with SIGKILL at random moments, again and again, and resumed each time,
  ends with the same weights and the same training log as a run that was never interrupted.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import cli_env
from simmpnet import checkpoint as checkpoint_module
from simmpnet.checkpoint import load_checkpoint, save_checkpoint
from simmpnet.cli import main
from simmpnet.data.io import read_image, write_label_map
from simmpnet.errors import SimMPNetError
from simmpnet.evaluation.report import plot_curves, save_overlay, write_json, write_metrics_markdown
from simmpnet.training import TrainConfig, Trainer

def _dataset(root: Path, n_slices: int = 4, side: int = 16) -> Path:
    """A tiny Synapse-layout dataset: ``n_slices`` training slices, one test volume."""
    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    yy, xx = np.mgrid[:side, :side]
    label = ((yy - side // 2) ** 2 + (xx - side // 2) ** 2 < (side // 3) ** 2).astype(np.uint8)
    names = [f"case0001_slice{z:03d}" for z in range(n_slices)]
    for name in names:
        np.savez(root / "train_npz" / f"{name}.npz", image=(0.5 * label + 0.5 * rng.random((side, side))).astype(np.float32), label=label)
    with h5py.File(root / "test_vol_h5" / "case0002.npy.h5", "w") as f:
        f.create_dataset("image", data=rng.random((2, side, side)).astype(np.float32))
        f.create_dataset("label", data=np.stack([label, label]))
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "lists" / "test_vol.txt").write_text("case0002\n")
    return root


def _config(data: Path, out: Path, **changes) -> dict:
    """A U-Net of a few thousand weights on 16 px slices: one step per epoch, milliseconds each."""
    config = {
        "data_root": str(data), "n_classes": 2, "model": "unet", "input_size": 16,
        "model_overrides": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "epochs": 4, "batch_size": 4, "val_list": None, "device": "cpu", "threads": 1,
        "progress": False, "log_every": 1, "output_dir": str(out),
    }
    config.update(changes)
    return config


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


def _same_training_state(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["state"]["global_step"] == second["state"]["global_step"]
    weights_a, weights_b = first["model"]["state_dict"], second["model"]["state_dict"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for index, state in first["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], second["optimizer"]["state"][index]["exp_avg"])


def _log_records(path: Path) -> list[dict]:
    """The records of a training log without their clock readings."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record.pop("elapsed_s", None)
    return records


# ------------------------------------------------------------------------- failed writes
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


#: Where a full disk shows: at write-back time (fsync) or, on some file systems, the rename.
FAILURES = {"fsync": "os.fsync", "replace": "os.replace"}


def _summary(run: int) -> dict:
    """A small metrics summary in the form :func:`summarize` returns."""
    from simmpnet.evaluation.metrics import evaluate_case, summarize

    truth = np.zeros((1, 8, 8), np.uint8)
    truth[0, 2:6, 2:6] = 1
    return summarize({"case": evaluate_case(np.roll(truth, run % 3, axis=2), truth, 2)}, ["fg"])


class Writers:
    """Every kind of file simmpnet writes; ``write(kind, run)`` (re)writes one, with content
    that differs from run to run."""

    KINDS = ("checkpoint", "label_png", "label_nifti", "label_npz", "metrics_json", "metrics_md", "overlay_png", "curves_png")
    TARGETS = {
        "checkpoint": "last.pt", "label_png": "scan.png", "label_nifti": "scan.nii.gz", "label_npz": "slab.npz",
        "metrics_json": "metrics.json", "metrics_md": "metrics.md", "overlay_png": "overlay.png", "curves_png": "curves.png",
    }

    def __init__(self, folder: Path) -> None:
        import nibabel as nib

        inputs = folder / "in"
        inputs.mkdir(parents=True)
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(inputs / "scan.png")
        nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.float32), np.eye(4)), str(inputs / "scan.nii.gz"))
        np.savez(inputs / "slab.npz", image=np.zeros((2, 5, 5), np.float32))
        self.references = {kind: read_image(inputs / name) for kind, name in
                           (("label_png", "scan.png"), ("label_nifti", "scan.nii.gz"), ("label_npz", "slab.npz"))}
        self.log = inputs / "log.jsonl"
        self.out = folder / "out"

    def target(self, kind: str) -> Path:
        return self.out / self.TARGETS[kind]

    def write(self, kind: str, run: int) -> None:
        target = self.target(kind)
        if kind == "checkpoint":
            save_checkpoint({"weights": torch.full((3,), float(run))}, target)
        elif kind.startswith("label_"):
            reference = self.references[kind]
            write_label_map(np.full(reference.label_shape, run % 2, np.uint8), reference, target)
        elif kind == "metrics_json":
            write_json({"run": run}, target)
        elif kind == "metrics_md":
            write_metrics_markdown(_summary(run), target)
        elif kind == "overlay_png":
            save_overlay(np.random.default_rng(run).random((8, 8)), None, np.zeros((8, 8), np.uint8), target)
        else:
            self.log.write_text("".join(f'{{"event": "step", "step": {s}, "loss": {1 / s}}}\n' for s in range(1, run + 3)))
            plot_curves(self.log, target)


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("kind", Writers.KINDS)
def test_full_disk_keeps_the_previous_file(kind, failure, tmp_path, monkeypatch):
    writers = Writers(tmp_path)
    target = writers.target(kind)
    writers.write(kind, 1)
    before = target.read_bytes()
    monkeypatch.setattr(FAILURES[failure], _no_space)
    with pytest.raises(SimMPNetError) as info:
        writers.write(kind, 2)
    message = str(info.value)
    assert target.name in message and "No space left on device" in message and "\n" not in message, message
    monkeypatch.undo()
    assert target.read_bytes() == before, "the previous file was changed"
    assert _temporaries(target.parent) == []
    if kind == "checkpoint":
        assert torch.equal(load_checkpoint(target)["weights"], torch.full((3,), 1.0))
    writers.write(kind, 2)  # space is back: the next write succeeds
    assert target.read_bytes() != before and _temporaries(target.parent) == []


def test_half_written_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save gets part of the file out, then the disk is full."""
    target = save_checkpoint({"weights": torch.ones(4)}, tmp_path / "last.pt")

    def half_then_full(obj, handle):
        handle.write(b"PK\x03\x04" + b"\x00" * 100)
        _no_space()

    monkeypatch.setattr(checkpoint_module.torch, "save", half_then_full)
    with pytest.raises(SimMPNetError, match="last.pt: cannot write checkpoint .*No space left on device.*previous checkpoint is unchanged"):
        save_checkpoint({"weights": torch.zeros(4)}, target)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(target)["weights"], torch.ones(4))
    assert _temporaries(tmp_path) == []


def test_training_on_a_full_disk_stops_cleanly_and_resumes(tmp_path, monkeypatch, capsys):
    """The CLI: a checkpoint write fails mid-run; one line on stderr, exit 2, the previous
    checkpoint usable; once there is space, --resume reaches an uninterrupted run's weights."""
    data = _dataset(tmp_path / "data")
    Trainer(TrainConfig.from_dict(_config(data, tmp_path / "straight"))).fit()

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(data, tmp_path / "run", epochs=2)))
    assert main(["--quiet", "train", "--config", str(config)]) == 0
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    config.write_text(yaml.safe_dump(_config(data, tmp_path / "run")))

    def half_then_full(obj, handle):
        handle.write(b"\x00" * 64)
        _no_space()

    monkeypatch.setattr(checkpoint_module.torch, "save", half_then_full)
    capsys.readouterr()
    assert main(["--quiet", "train", "--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simmpnet: error: ") and "last.pt" in err[0] and "No space left" in err[0], err
    monkeypatch.undo()
    assert last.read_bytes() == before and load_checkpoint(last)["state"]["epoch"] == 2
    assert not [n for n in _temporaries(tmp_path / "run") if n.endswith(".tmp")]
    assert main(["--quiet", "train", "--config", str(config), "--resume"]) == 0
    _same_training_state(tmp_path / "straight" / "last.pt", last)


def test_failed_prepare_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch, capsys):
    from simmpnet.data.prepare import isic  # noqa: F401 - imported before os.replace breaks

    raw = tmp_path / "raw"
    (raw / "ISIC2018_Task1-2_Training_Input").mkdir(parents=True)
    (raw / "ISIC2018_Task1_Training_GroundTruth").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(raw / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "dataset.json").write_text("{}")  # an earlier conversion's
    monkeypatch.setattr("os.replace", _no_space)
    capsys.readouterr()
    assert main(["--quiet", "prepare", "isic2018", "--raw", str(raw), "--output", str(out), "--converter-option", "size=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"] and (out / "dataset.json").read_text() == "{}"
    assert not list(tmp_path.glob(".prepared*"))


# ------------------------------------------------------------------------- SIGKILL
KILLS = 10
EPOCHS = 120
#: Steps a life may train before its kill comes at the latest: KILLS lives of at most a few
#: steps each stay far from the end of the run, however fast the machine trains.
STEPS_PER_LIFE = 5


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "simmpnet", "--quiet", *args], env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _steps_logged(log: Path) -> int:
    return log.read_text(errors="replace").count('"event": "step"') if log.exists() else 0


def test_resuming_a_finished_run_logs_as_one_uninterrupted_run(tmp_path):
    """A run killed after its end record (or resumed once done, or resumed with more epochs)
    keeps one end record: the log equals that of a run that was never stopped."""
    data = _dataset(tmp_path / "data")
    for epochs in (2, 3):
        Trainer(TrainConfig.from_dict(_config(data, tmp_path / f"straight{epochs}", epochs=epochs))).fit()
    Trainer(TrainConfig.from_dict(_config(data, tmp_path / "run", epochs=2))).fit()
    log = tmp_path / "run" / "log.jsonl"
    for epochs in (2, 3):
        trainer = Trainer(TrainConfig.from_dict(_config(data, tmp_path / "run", epochs=epochs)))
        trainer.resume()
        trainer.fit()
        assert _log_records(log) == _log_records(tmp_path / f"straight{epochs}" / "log.jsonl"), epochs
        assert [r["event"] for r in _log_records(log)].count("end") == 1


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_reaches_the_same_weights(tmp_path):
    """``simmpnet train --resume`` killed with SIGKILL ``KILLS`` times at random moments of
    training (mid-step, mid-log, mid-checkpoint) always resumes from a usable checkpoint and
    ends with the weights of an uninterrupted run."""
    data = _dataset(tmp_path / "data")
    Trainer(TrainConfig.from_dict(_config(data, tmp_path / "straight", epochs=EPOCHS))).fit()

    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(_config(data, tmp_path / "killed", epochs=EPOCHS)))
    last, log = tmp_path / "killed" / "last.pt", tmp_path / "killed" / "log.jsonl"
    seed = int(time.time())
    rng = random.Random(seed)
    kills, epochs_at_kill = 0, []
    while True:
        # A life killed after its first log line but before its first checkpoint leaves a run
        # folder with nothing to resume: the next life starts it afresh.
        resume = ["--resume"] if last.exists() else ["--overwrite"] if log.exists() else []
        logged = _size(log)
        process = _cli(["train", "--config", str(config), *resume])
        if kills == KILLS:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err.decode()
            break
        deadline = time.monotonic() + 120
        while _size(log) == logged and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until this process has trained a step
        trained = _steps_logged(log)
        kill_at = time.monotonic() + rng.uniform(0.0, 0.1)  # a step takes about 15 ms
        while time.monotonic() < kill_at and _steps_logged(log) < trained + STEPS_PER_LIFE:
            time.sleep(0.002)
        assert process.poll() is None, f"the run ended before kill {kills + 1} (seed {seed})"
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        if last.exists():  # after every kill the checkpoint in place is a complete one
            epochs_at_kill.append(load_checkpoint(last)["state"]["epoch"])
    assert kills == KILLS
    assert epochs_at_kill == sorted(epochs_at_kill), epochs_at_kill  # never a step back
    _same_training_state(tmp_path / "straight" / "last.pt", last)
    # the log tells the story of the uninterrupted run: each step once, no line cut off by a kill
    assert _log_records(log) == _log_records(tmp_path / "straight" / "log.jsonl")
    assert load_checkpoint(last)["state"]["global_step"] == EPOCHS
    assert not list((tmp_path / "killed").glob(".last.pt.*.tmp"))  # killed writes are cleaned up
