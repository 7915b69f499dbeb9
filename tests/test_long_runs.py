"""Long and large runs: `predict` streams over long folders with flat memory, and evaluation
computes its metrics in worker processes with the same result as in one process."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from simmpnet.cli import main
from simmpnet.errors import InputError
from simmpnet.evaluation.evaluate import evaluate_volumes
from simmpnet.models.factory import build_model

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from benchlib.predict_memory import make_checkpoint, make_inputs, peak_of_predict  # noqa: E402


@pytest.mark.slow
def test_predict_memory_does_not_grow_with_the_number_of_slices(tmp_path):
    """The fast version of `benchmarks/bench.py predict-memory`: 200 versus 600 slices."""
    checkpoint = make_checkpoint(tmp_path, 32)
    peaks = {}
    for count in (200, 600):
        inputs = make_inputs(tmp_path / f"in{count}", count, 32, tmp_path / "pool")
        peaks[count], _ = peak_of_predict(checkpoint, inputs, tmp_path / f"out{count}", threads=1)
        assert len(list((tmp_path / f"out{count}").glob("*.png"))) == count
    assert peaks[600] <= 1.10 * peaks[200], peaks


def _volumes(n: int = 6) -> list[dict]:
    """Labelled volumes of different sizes, some with an empty class, with spacing."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        depth, side = 2 + i % 3, 20 + 4 * (i % 2)
        label = np.zeros((depth, side, side), np.int64)
        label[:, 4 : 10 + i, 5:12] = 1
        if i % 2:
            label[:, 14:18, 14:18] = 2
        image = (0.4 * label + 0.6 * rng.random(label.shape)).astype(np.float32)
        cases.append({"image": image, "label": label, "name": f"case{i}", "spacing": (2.0, 0.7, 0.7 + 0.1 * i)})
    return cases


def test_metrics_in_worker_processes_equal_those_of_one_process():
    torch.manual_seed(0)
    model = build_model("unet", 3, 1, overrides={"channels": [4, 8], "strides": [2], "num_res_units": 0}).eval()
    names = ["background", "a", "b"]
    one = evaluate_volumes(model, iter(_volumes()), 32, 3, names, workers=1)
    seen = []
    two = evaluate_volumes(model, iter(_volumes()), 32, 3, names, workers=2, on_case=lambda name, *_: seen.append(name))
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
    assert list(two["per_case"]) == [f"case{i}" for i in range(6)] == seen
    with pytest.raises(InputError, match="workers"):
        evaluate_volumes(model, _volumes(1), 32, 3, names, workers=0)


@pytest.mark.slow
def test_evaluate_command_with_workers(tmp_path, capsys):
    """`simmpnet evaluate --workers 2` writes the metrics of `--workers 1`."""
    data = tmp_path / "data"
    for folder in ("train_npz", "test_vol_h5", "lists"):
        (data / folder).mkdir(parents=True)
    cases = _volumes(4)
    for case in cases:
        np.savez(data / "train_npz" / f"{case['name']}.npz", image=case["image"][0, :20, :20], label=case["label"][0, :20, :20])
        with h5py.File(data / "test_vol_h5" / f"{case['name']}.npy.h5", "w") as f:
            f.create_dataset("image", data=case["image"])
            f.create_dataset("label", data=case["label"])
            f.attrs["spacing"] = np.asarray(case["spacing"])
    (data / "lists" / "train.txt").write_text("\n".join(c["name"] for c in cases) + "\n")
    (data / "lists" / "test_vol.txt").write_text("\n".join(c["name"] for c in cases) + "\n")
    config = {
        "data_root": str(data), "n_classes": 3, "model": "unet", "input_size": 32, "val_list": None,
        "model_overrides": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "epochs": 1, "batch_size": 4, "max_steps": 1, "device": "cpu", "progress": False, "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["--quiet", "train", "--config", str(tmp_path / "train.yaml")]) == 0
    metrics = {}
    for workers in (1, 2):
        out = tmp_path / f"eval{workers}"
        argv = ["--quiet", "evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(data),
                "--output", str(out), "--max-overlays", "2", "--workers", str(workers)]
        assert main(argv) == 0
        metrics[workers] = json.loads((out / "metrics.json").read_text())
        assert len(list((out / "overlays").glob("*.png"))) == 2
    assert metrics[1] == metrics[2]
    capsys.readouterr()
    assert main(["--quiet", "evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(data),
                 "--output", str(tmp_path / "eval0"), "--workers", "0"]) == 2
    assert "workers must be a positive integer" in capsys.readouterr().err
