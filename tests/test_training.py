import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cli_env, small_train_config

from simmpnet.errors import CheckpointError, InputError
from simmpnet.training import TrainConfig, Trainer, TrainingError


def _write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "simmpnet", "--quiet", *args], env=cli_env(), **kwargs)


def _model_state(path: Path) -> dict:
    payload = torch.load(path, weights_only=True)
    return payload["model"]["state_dict"], payload["state"], payload["optimizer"]


def test_training_learns_and_writes_its_outputs(brain_data, tmp_path):
    config = TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", epochs=4))
    trainer = Trainer(config)
    result = trainer.fit()
    assert result["stop"] == "epochs" and result["epochs"] == 4 and result["steps"] == 16
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert len(epochs) == 4 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all("val_dsc" in r for r in epochs[1:])
    for name in ("last.pt", "best.pt", "curves.png"):
        assert (tmp_path / "run" / name).is_file()
    assert not trainer.model.in_warmup  # 16 steps > 5 warm-up steps
    # W-LD reached the encoder blocks only (the authors' choice, the default)
    blocks = trainer.model.dmwla_blocks
    assert {b.update_count for b in blocks("decoder")} == {50}


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_same_weights(brain_data, tmp_path):
    values = small_train_config(brain_data, tmp_path / "straight", epochs=4, val_list=None)
    straight = _write_config(tmp_path / "straight.yaml", values)
    assert _run_cli(["train", "--config", str(straight)]).wait(timeout=300) == 0

    values["output_dir"] = str(tmp_path / "killed")
    killed = _write_config(tmp_path / "killed.yaml", values)
    process = _run_cli(["train", "--config", str(killed)])
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, interrupted_state, _ = _model_state(last)
    assert interrupted_state["epoch"] < 4
    assert _run_cli(["train", "--config", str(killed), "--resume"]).wait(timeout=300) == 0

    weights_a, state_a, optim_a = _model_state(tmp_path / "straight" / "last.pt")
    weights_b, state_b, optim_b = _model_state(last)
    assert state_a["global_step"] == state_b["global_step"] == 16
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key  # memory banks included
    assert torch.equal(optim_a["state"][0]["exp_avg"], optim_b["state"][0]["exp_avg"])


@pytest.mark.slow
def test_resume_mid_epoch_after_a_step_budget(brain_data, tmp_path):
    straight = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "a", val_list=None)))
    straight.fit()
    first = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "b", val_list=None, max_steps=5)))
    assert first.fit()["stop"] == "max_steps"
    assert first.state["batch_in_epoch"] == 1  # stopped inside epoch 2
    second = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "b", val_list=None)))
    second.resume()
    second.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def test_resume_refuses_a_checkpoint_of_another_model(brain_data, tmp_path):
    Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", max_steps=4, val_list=None))).fit()
    other = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", warmup_iters=7)))
    with pytest.raises(CheckpointError, match="another model configuration"):
        other.resume()


def _everything(trainer):
    """Copies of all the state a step can change: weights and buffers (memory banks,
    prototypes, counters, key weights, BatchNorm statistics), optimiser, W-LD."""
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optim = trainer.optimizer.state_dict()
    optim = {i: {k: v.clone() for k, v in st.items()} for i, st in optim["state"].items()}
    return model, optim, dict(trainer.wld.state_dict())


def _assert_same(before, after):
    for key, value in before[0].items():
        assert torch.equal(after[0][key], value), key
    assert before[1].keys() == after[1].keys()
    for i, st in before[1].items():
        for key, value in st.items():
            assert torch.equal(after[1][i][key], value), (i, key)
    assert before[2] == after[2]


def test_nonfinite_losses_stop_training_with_a_clear_message(brain_data, tmp_path):
    trainer = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", max_nonfinite_losses=2, warmup_iters=2)))
    torch.manual_seed(1)
    image, label = torch.rand(2, 1, 64, 64), torch.randint(0, 9, (2, 64, 64))
    poisoned = image.clone()
    poisoned[0, 0, 10, 10] = float("nan")
    assert trainer.train_step(image, label, 1) is not None  # in warm-up, optimiser state exists
    assert trainer.model.in_warmup
    before = _everything(trainer)
    assert trainer.train_step(poisoned, label, 1) is None
    _assert_same(before, _everything(trainer))
    assert trainer.train_step(image, label, 1) is not None  # the second warm-up step: k-means
    assert not trainer.model.in_warmup
    assert trainer.train_step(image, label, 1) is not None  # a memory update
    before = _everything(trainer)
    assert trainer.train_step(poisoned, label, 1) is None  # would update banks and key weights
    _assert_same(before, _everything(trainer))
    assert not any(b.has_pending_memory for b in trainer.model.dmwla_blocks())
    with pytest.raises(TrainingError, match="NaN or Inf 3 times.*max_nonfinite_losses=2"):
        trainer.train_step(poisoned, label, 1)
    _assert_same(before, _everything(trainer))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown training config keys"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(InputError, match="model must be one of"):
        TrainConfig.from_dict({"model": "resnet"})
    with pytest.raises(InputError, match=r"resample must be one of \['labels', 'logits'\], got 'nearest'"):
        TrainConfig.from_dict({"resample": "nearest"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(InputError, match="data folder not found"):
        Trainer(TrainConfig.from_dict({"data_root": str(tmp_path / "nowhere")}))
    assert np.isclose(TrainConfig().lr, 1e-4)  # the paper's setting is the default


#: The shipped training configs; experiment specs (a list of configurations) are checked in
#: tests/test_experiment.py.
TRAINING_CONFIGS = [
    path for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    if "configurations" not in yaml.safe_load(path.read_text())
]


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from simmpnet.data.layouts import LAYOUTS
    from simmpnet.models import VARIANTS

    config = TrainConfig.from_yaml(path)
    assert config.layout in LAYOUTS
    assert len(config.names) == config.n_classes
    model_config = VARIANTS[config.variant].with_overrides(**config.model_overrides)
    if config.variant == "paper" and path.stem != "new_dataset":
        assert model_config.decoder_memory.num_k == 10 and model_config.decoder_memory.feature_dim == 128
        assert (config.lr, config.weight_decay, config.seed) == (1e-4, 1e-4, 2222)
        assert (config.wld_start_epoch, config.warmup_iters, config.eval_start_epoch) == (100, 2000, 100)


def test_bf16_training_on_cpu_keeps_memory_in_fp32(brain_data, tmp_path):
    trainer = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", amp="bf16", max_steps=8, val_list=None)))
    result = trainer.fit()
    assert result["steps"] == 8 and not trainer.model.in_warmup
    for block in trainer.model.dmwla_blocks():
        assert block.memory.bank.dtype == torch.float32 and torch.isfinite(block.memory.bank).all()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log if r["event"] == "step")
    assert {block.island_precision for block in trainer.model.dmwla_blocks()} == {"bf16"}
    fp32_islands = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "y", amp="bf16", amp_islands="fp32")))
    assert {block.island_precision for block in fp32_islands.model.dmwla_blocks()} == {"fp32"}
    with pytest.raises(InputError, match="amp_islands must be one of fp32, bf16, got 'fp16'"):
        TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "z", amp_islands="fp16"))
    with pytest.raises(InputError, match="fp16 needs CUDA"):
        Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "x", amp="fp16")))
