"""nnU-Net's 2d U-Net as a peer network (``model: nnunet``): the topology is nnU-Net's own
plan for the slice size, it trains on the trainer's footing, and its checkpoint predicts the
same labels after a reload."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from conftest import small_train_config  # noqa: E402

from simmpnet.errors import CheckpointError, InputError  # noqa: E402
from simmpnet.evaluation.inference import predict_slices  # noqa: E402
from simmpnet.loading import load_trained_model  # noqa: E402
from simmpnet.models.factory import build_model, model_from_payload, model_payload  # noqa: E402
from simmpnet.models.nnunet_unet import nnunet_size_step, nnunet_unet_kwargs  # noqa: E402
from simmpnet.training import Trainer, TrainConfig  # noqa: E402


def test_topology_is_nnunets_plan_for_the_slice_size():
    """96 px: 5 stages down to 6 px (4 poolings, nnU-Net stops above 4 px); 128 px: 6 stages.
    Features double from 32 and stop at 512, two convolutions per stage."""
    small = nnunet_unet_kwargs(9, 1, 96)["architecture"]
    assert small["n_stages"] == 5 and small["strides"] == [[1, 1]] + [[2, 2]] * 4
    assert small["features_per_stage"] == [32, 64, 128, 256, 512]
    large = nnunet_unet_kwargs(9, 1, 128)["architecture"]
    assert large["n_stages"] == 6 and large["features_per_stage"] == [32, 64, 128, 256, 512, 512]
    assert large["n_conv_per_stage"] == [2] * 6 and large["n_conv_per_stage_decoder"] == [2] * 5
    assert (nnunet_size_step(96), nnunet_size_step(128)) == (16, 32)
    model = build_model("nnunet", 9, overrides={"patch_size": 96})
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules()) == 2 * (5 + 4)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 96, 96)).shape == (2, 9, 96, 96)


def test_sizes_and_keys_it_cannot_take_are_refused_before_training(brain_data, tmp_path):
    with pytest.raises(InputError, match="input_size 100 .* pad the patch to 112.*multiple of 16"):
        TrainConfig.from_dict(small_train_config(brain_data, tmp_path, model="nnunet", input_size=100, model_overrides={}))
    with pytest.raises(InputError, match="unknown key\\(s\\) depth"):
        TrainConfig.from_dict(small_train_config(brain_data, tmp_path, model="nnunet", model_overrides={"depth": 3}))
    with pytest.raises(InputError, match="needs the slice size"):
        build_model("nnunet", 9)


def test_trains_and_its_checkpoint_predicts_the_same_labels(brain_data, tmp_path):
    config = small_train_config(
        brain_data, tmp_path / "run", model="nnunet", model_overrides={}, input_size=64, epochs=1, max_steps=3, val_list=None
    )
    trainer = Trainer(TrainConfig.from_dict(config))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.fit()["steps"] == 3
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    model, size, _ = load_trained_model(tmp_path / "run" / "last.pt", torch.device("cpu"))
    assert size == 64 and model.peer_name == "nnunet" and model.peer_kwargs["patch_size"] == 64
    slices = np.random.default_rng(0).random((3, 80, 72), dtype=np.float32)
    labels = predict_slices(model, slices, size)
    assert labels.shape == slices.shape
    assert np.array_equal(labels, predict_slices(trainer.model.eval(), slices, size))
    payload = model_payload(model, 64)
    assert payload["name"] == "nnunet"
    assert np.array_equal(predict_slices(model_from_payload(payload), slices, size), labels)
    from simmpnet.models import SimMPNet

    with pytest.raises(CheckpointError, match="holds nnU-Net's 2d U-Net \\(model: nnunet\\), not a Sim-MPNet"):
        SimMPNet.from_pretrained(tmp_path / "run" / "last.pt")
    payload["name"] = "segformer"
    with pytest.raises(CheckpointError, match="unknown peer network 'segformer'"):
        model_from_payload(payload, "x.pt")
