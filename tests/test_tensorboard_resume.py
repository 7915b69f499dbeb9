"""TensorBoard across a resume: the event files of a run that was interrupted and resumed hold
the points of a run that never stopped, each step once, the checkpoint's step included."""
from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from simmpnet.training import TrainConfig, Trainer

pytest.importorskip("tensorboard")


def _dataset(root: Path, n_slices: int = 4, side: int = 16) -> Path:
    """A tiny Synapse-layout dataset: ``n_slices`` training slices and one test volume, each
    with a disc of foreground (so that every validation has a Dice score)."""
    rng = np.random.default_rng(0)
    for folder in ("train_npz", "test_vol_h5", "lists"):
        (root / folder).mkdir(parents=True)
    yy, xx = np.mgrid[:side, :side]
    label = ((yy - side // 2) ** 2 + (xx - side // 2) ** 2 < (side // 3) ** 2).astype(np.uint8)
    names = [f"case0001_slice{z:03d}" for z in range(n_slices)]
    for name in names:
        image = (0.5 * label + 0.5 * rng.random((side, side))).astype(np.float32)
        np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
    with h5py.File(root / "test_vol_h5" / "case0002.npy.h5", "w") as f:
        f.create_dataset("image", data=(0.5 * label + 0.5 * rng.random((2, side, side))).astype(np.float32))
        f.create_dataset("label", data=np.stack([label, label]))
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "lists" / "test_vol.txt").write_text("case0002\n")
    return root


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    """A U-Net of a few thousand weights on 16 px slices, TensorBoard on: 2 steps an epoch,
    a validation after every epoch (steps 2, 4, 6, 8), every step logged."""
    config = {
        "data_root": str(data), "n_classes": 2, "model": "unet", "input_size": 16,
        "model_overrides": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "epochs": 4, "batch_size": 2, "lr": 1e-2, "eval_start_epoch": 1, "device": "cpu", "threads": 1,
        "progress": False, "log_every": 1, "tensorboard": True, "output_dir": str(out),
    }
    config.update(changes)
    return TrainConfig.from_dict(config)


def _next_second() -> None:
    """TensorBoard reads the event files of a folder in name order; a name starts with the
    second the file was opened in, then a counter that is not zero-padded (9 sorts after 10).
    Each life of the run opens its file in a second of its own, as real resumes do."""
    now = int(time.time())
    while int(time.time()) == now:
        time.sleep(0.02)


def _points(folder: Path) -> dict[str, list[tuple[int, float | None]]]:
    """Every scalar and picture tag of the event files in ``folder``, as TensorBoard shows them:
    (step, value) in the order read (value None for pictures)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    points: dict[str, list[tuple[int, float | None]]] = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]
    }
    points.update({tag: [(e.step, None) for e in events.Images(tag)] for tag in tags["images"]})
    return points


def test_a_resumed_run_keeps_every_point_up_to_its_checkpoint_once(tmp_path):
    """Stopped after epoch 2 (its checkpoint at step 4 comes after that epoch's validation,
    epoch record and pictures), the run went on to the end, and then started again from that
    checkpoint, as a run killed at the end with its last checkpoint at step 4 would: its
    TensorBoard holds the points of the uninterrupted run, the validation at step 4 included,
    and the interrupted life's points after step 4 once, not twice."""
    data = _dataset(tmp_path / "data")
    Trainer(_config(data, tmp_path / "straight")).fit()

    out = tmp_path / "run"
    assert Trainer(_config(data, out, max_steps=4)).fit()["steps"] == 4
    checkpoint = (out / "last.pt").read_bytes()
    for life in range(2):
        _next_second()
        trainer = Trainer(_config(data, out))
        trainer.resume()
        assert trainer.state["global_step"] == 4
        assert trainer.fit()["steps"] == 8
        if life == 0:  # the interrupted life wrote steps 5-8; its checkpoint at step 4 comes back
            (out / "last.pt").write_bytes(checkpoint)

    straight, resumed = _points(tmp_path / "straight" / "tensorboard"), _points(out / "tensorboard")
    assert [step for step, _ in straight["val/dsc"]] == [2, 4, 6, 8]
    assert resumed["val/dsc"] == straight["val/dsc"]
    assert resumed.keys() == straight.keys()
    for tag, series in straight.items():
        steps = [step for step, _ in resumed[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step twice: {steps}"
        assert sorted(resumed[tag]) == sorted(series), tag
