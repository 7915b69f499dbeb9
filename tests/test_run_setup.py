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
