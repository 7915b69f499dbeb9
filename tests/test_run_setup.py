"""What a training run is built from: one size truth for the network and the slices."""
import pytest
from conftest import small_train_config

from simmpnet.errors import InputError
from simmpnet.training import TrainConfig, Trainer


def test_input_size_sets_the_encoder_sizes(brain_data, tmp_path):
    values = small_train_config(brain_data, tmp_path / "run", input_size=64)
    del values["model_overrides"]
    trainer = Trainer(TrainConfig.from_dict(values))
    config = trainer.model.config
    assert (config.img_size_a, config.img_size_b) == (64, 56)
    assert trainer.input_size == 64


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"input_size": 48}, "input_size must be a positive multiple of 32 for simmpnet (e.g. 64, 96, 128, 256), got 48"),
        ({"input_size": 0}, "multiple of 32"),
        ({"input_size": 96, "model_overrides": {"img_size_a": 128}}, "input_size 96 and model_overrides.img_size_a 128 disagree"),
        ({"model": "unet", "input_size": 40, "model_overrides": {}}, "multiple of 16 for unet"),
    ],
)
def test_invalid_sizes_are_refused_when_the_config_is_read(brain_data, tmp_path, changes, needle):
    values = small_train_config(brain_data, tmp_path / "run", **changes)
    with pytest.raises(InputError) as err:
        TrainConfig.from_dict(values)
    assert needle in str(err.value)


# ---------------------------------------------------------------- the run's plan
# small_train_config: 16 slices at batch 4 are 4 steps an epoch, 3 epochs.
@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"eval_start_epoch": 100}, "eval_start_epoch 100 comes after the last of the 3 epochs"),
        ({"wld_start_epoch": 2}, "wld_start_epoch 2 leaves no epoch of the 3"),
        ({"warmup_iters": 12}, "warmup_iters 12 is not below the 12 steps"),
    ],
)
def test_schedule_keys_beyond_the_run_are_refused_before_any_work(brain_data, tmp_path, changes, needle):
    out = tmp_path / "run"
    with pytest.raises(InputError, match=needle):
        Trainer(TrainConfig.from_dict(small_train_config(brain_data, out, **changes)))
    assert not out.exists()


def test_unset_schedule_keys_scale_with_the_run(brain_data, tmp_path):
    """Left out, validation, W-LD and the warm-up start a third of the way in (the paper's
    100 of 300 epochs), and a longer run moves them."""
    unset = {"eval_start_epoch": None, "wld_start_epoch": None, "warmup_iters": None}
    short = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "a", **unset)))
    assert (short.plan.epochs, short.plan.steps) == (3, 12)
    assert (short.plan.eval_start_epoch, short.plan.wld_start_epoch, short.plan.warmup_iters) == (1, 1, 4)
    assert all(b.memory.warmup_iters == 4 for b in short.model.dmwla_blocks("all"))
    assert short.wld.start_epoch == 1
    long = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "b", epochs=30, **unset)))
    assert (long.plan.eval_start_epoch, long.plan.wld_start_epoch, long.plan.warmup_iters) == (10, 10, 40)
    # the paper's length keeps the paper's values
    paper = Trainer(TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "c", epochs=300, **unset)))
    assert (paper.plan.eval_start_epoch, paper.plan.wld_start_epoch, paper.plan.warmup_iters) == (100, 100, 400)


def test_a_run_cut_by_max_steps_is_warned_and_says_why_it_has_no_best_model(brain_data, tmp_path, caplog):
    config = TrainConfig.from_dict(small_train_config(brain_data, tmp_path / "run", eval_start_epoch=3, max_steps=5))
    with caplog.at_level("INFO", logger="simmpnet"):
        result = Trainer(config).fit()
    text = caplog.text
    assert "max_steps 5 ends the run in epoch 2 of 3, before eval_start_epoch 3: no validation, no best.pt" in text
    assert result["best_checkpoint"] is None and not (tmp_path / "run" / "best.pt").exists()
    assert "validation starts after epoch 3" in result["no_best_reason"]
    assert f"no best.pt: {result['no_best_reason']}" in text


def test_a_run_writes_its_resolved_config_and_summarises_itself(brain_data, tmp_path, caplog):
    import yaml

    out = tmp_path / "run"
    config = TrainConfig.from_dict(small_train_config(brain_data, out, input_size=None, warmup_iters=None, max_steps=8))
    with caplog.at_level("INFO", logger="simmpnet"):
        trainer = Trainer(config)
        result = trainer.fit()
    assert result["best_checkpoint"] == str(out / "best.pt") and (out / "best.pt").is_file()
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["input_size"] == 64 and resolved["warmup_iters"] == 2  # a third of the 8 steps
    again = TrainConfig.from_yaml(out / "resolved_config.yaml", output_dir=str(tmp_path / "again"))
    assert again.warmup_iters == 2 and again.input_size == 64
    params = sum(p.numel() for p in trainer.model.parameters())
    assert f"{params / 1e6:.2f} M parameters, 64 px input" in caplog.text
    assert "training on 'small' (16 slices), validation on 'test_vol' (3 cases) after epoch 2" in caplog.text
    assert "plan: 8 steps (2 epoch(s) of 4, batch 4)" in caplog.text and "warmup_iters scaled" in caplog.text


def test_a_resumed_run_keeps_the_schedule_it_started_with(brain_data, tmp_path):
    """A longer run resumed from a short one would scale the unset warm-up to 4 forwards;
    it keeps the 1 it started with, so the clustered memory does not go back into warm-up."""
    out = tmp_path / "run"
    Trainer(TrainConfig.from_dict(small_train_config(brain_data, out, warmup_iters=None, max_steps=4, val_list=None))).fit()
    longer = Trainer(TrainConfig.from_dict(small_train_config(brain_data, out, warmup_iters=None, val_list=None)))
    assert longer.plan.warmup_iters == 4
    longer.resume()
    assert longer.plan.warmup_iters == 1
    assert all(b.memory.warmup_iters == 1 and not b.in_warmup for b in longer.model.dmwla_blocks("all"))
    assert longer.model.config.encoder_memory.warmup_iters == 1
