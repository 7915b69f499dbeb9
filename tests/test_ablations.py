"""The ablation switches of Sim-MPNet (docs/method.md, "Ablation switches"): each removes or
replaces a module for real, the network still trains and predicts, and a saved ablated
network loads back as the same network."""
import numpy as np
import pytest
import torch
from conftest import small_train_config

from simmpnet import SimMPNet
from simmpnet.errors import InputError
from simmpnet.evaluation.memory_maps import MemoryProbe, block_names
from simmpnet.models import DMWLA, DSGIM, NonLocalAttention, PrototypeMemory, SimMPNetConfig
from simmpnet.models.encoders import MaxViTEncoder
from simmpnet.training import TrainConfig, Trainer
from simmpnet.training.losses import DeepSupervisionLoss

SMALL = {"img_size_a": 64, "img_size_b": 56}

SWITCHES = {
    "no-dsgim": {"dsgim": False},
    "encoder-plain": {"encoder_attention": "plain"},
    "encoder-none": {"encoder_attention": "none"},
    "decoder-plain": {"decoder_attention": "plain"},
    "decoder-none": {"decoder_attention": "none"},
    "no-encoder-a": {"encoder_a": False},
}

#: Trainable parameters of ``tiny`` (n_classes 9, in_channels 1) under each switch, as in
#: docs/method.md.  ``plain`` keeps every trainable parameter: the memory it drops is state
#: (buffers), which the state-dict size below sees.
TINY_PARAMETERS = {
    "default": 10_043_415,
    "no-dsgim": 9_903_159,
    "encoder-plain": 10_043_415,
    "encoder-none": 9_887_767,
    "decoder-plain": 10_043_415,
    "decoder-none": 9_981_975,
    "no-encoder-a": 2_782_770,
}


def _build(seed: int = 0, **switches) -> SimMPNet:
    torch.manual_seed(seed)
    return SimMPNet.from_variant("tiny", n_classes=3, warmup_iters=1, **SMALL, **switches)


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _state_size(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def _count(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, 64, 64, generator=generator), torch.randint(0, 3, (2, 64, 64), generator=generator)


@pytest.fixture(scope="module")
def fresh_output(batch):
    """The eval output of a new default network, built from the seed the ablated ones use."""
    with torch.no_grad():
        return _build().eval()(batch[0])


@pytest.fixture(scope="module")
def default(batch):
    """The default network past its warm-up (the memory is read), in eval mode."""
    model = _build().train()
    model(batch[0])
    model.commit_memory()
    assert not model.in_warmup
    return model.eval()


def test_defaults_are_the_papers_network():
    config = SimMPNetConfig()
    assert (config.dsgim, config.encoder_attention, config.decoder_attention, config.encoder_a) == (
        True, "memory", "memory", True,
    )
    assert config.memory_parts == ("encoder", "decoder")


@pytest.mark.parametrize("name", list(TINY_PARAMETERS))
def test_parameter_counts_of_tiny(name):
    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", n_classes=9, **SWITCHES.get(name, {}))
    assert _parameters(model) == TINY_PARAMETERS[name]
    assert sum(model.parameter_breakdown().values()) == TINY_PARAMETERS[name]


@pytest.mark.parametrize("name", list(SWITCHES))
def test_a_switch_removes_modules_and_changes_the_output(name, default, fresh_output, batch):
    switches = SWITCHES[name]
    model = _build(**switches).eval()
    x = batch[0]
    # The network is smaller: fewer trainable parameters, or (plain) less state.
    if "plain" in name:
        assert _parameters(model) == _parameters(default)
    else:
        assert _parameters(model) < _parameters(default)
    assert _state_size(model) < _state_size(default)
    # Same seed, same input: another output.
    with torch.no_grad():
        assert not torch.allclose(model(x), fresh_output)
    # Only modules go: every tensor left is one of the default's, with its shape.  With the
    # default's weights loaded, the output still differs by what was removed.
    mine, theirs = model.state_dict(), default.state_dict()
    assert set(mine) < set(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    model.load_weights({k: theirs[k] for k in mine})
    with torch.no_grad():
        assert not torch.allclose(model(x), default(x), atol=1e-5)
    assert model.config == SimMPNetConfig.from_dict(model.config.to_dict())


def test_what_each_switch_leaves():
    model = _build(dsgim=False)
    assert _count(model, DSGIM) == 0 and len(model.encoder_b.dsgims) == 0
    assert _count(model, DMWLA) == len(model.dmwla_blocks()) == 5 + 4

    model = _build(encoder_attention="plain")
    assert model.dmwla_blocks("encoder") == [] and len(model.dmwla_blocks("decoder")) == 4
    assert _count(model.encoder_b, NonLocalAttention) == 5 and _count(model.encoder_b, PrototypeMemory) == 0
    assert {b.feature_dim for stage in model.encoder_b.stages for b in stage} == {model.config.encoder_memory.feature_dim}
    assert model.config.memory_parts == ("decoder",)

    model = _build(encoder_attention="none")
    assert _count(model.encoder_b, NonLocalAttention) == 0
    assert [len(stage) for stage in model.encoder_b.stages] == [1, 1, 2, 1]  # identities: DS-GIM still runs twice
    assert len(model.encoder_b.dsgims) == 1

    model = _build(decoder_attention="none")
    assert _count(model.decoder, NonLocalAttention) == 0 and model.dmwla_blocks("decoder") == []
    assert len(model.decoder.convs) == 4 and len(model.decoder.channel_attention) == 3  # the rest stays

    model = _build(encoder_attention="none", decoder_attention="plain")
    assert model.dmwla_blocks() == [] and not model.in_warmup and model.config.memory_parts == ()
    assert _count(model, PrototypeMemory) == 0 and block_names(model) == []
    assert MemoryProbe(model).blocks == {}

    model = _build(encoder_a=False)
    assert model.encoder_a is None and model.gate is None and _count(model, MaxViTEncoder) == 0
    assert not any(k.startswith(("encoder_a.", "gate.")) for k in model.state_dict())
    assert [e.proj.out_channels for e in model.encoder_b.embeddings] == [32, 64, 128, 256]  # the backbone's widths


def test_plain_is_dmwla_without_its_memory(batch):
    """A plain block computes what a DMW-LA block computes in its warm-up; after it, the memory
    read is what tells them apart."""
    x = batch[0]
    memory, plain = _build(), _build(encoder_attention="plain", decoder_attention="plain")

    def shared() -> dict[str, torch.Tensor]:
        return {k: v for k, v in memory.state_dict().items() if k in plain.state_dict()}

    plain.load_weights(shared())
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), memory.eval()(x))
    memory.train()(x)
    memory.commit_memory()  # the k-means start: the memory is read from now on
    plain.load_weights(shared())  # (the training forward moved the BatchNorm statistics)
    with torch.no_grad():
        assert not torch.allclose(plain(x), memory.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_an_ablated_network_trains_and_predicts(name, batch):
    x, target = batch
    model = _build(**SWITCHES[name]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = DeepSupervisionLoss()(model(x), target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert model.commit_memory() == len(model.dmwla_blocks())
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    image = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    labels = model.predict(image)
    assert labels.shape == (40, 50) and labels.dtype == np.uint8 and labels.max() < 3
    assert model.training  # predict leaves the model as it was


@pytest.mark.parametrize("name", list(SWITCHES))
def test_a_saved_ablated_network_loads_back(name, batch, tmp_path):
    model = _build(**SWITCHES[name]).eval()
    loaded = SimMPNet.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(loaded(batch[0]), model(batch[0]))
    assert SimMPNet.load(model.save(tmp_path / "model.pt")).config == model.config


def test_unknown_switch_values_are_refused_clearly(tmp_path):
    with pytest.raises(InputError, match=r"encoder_attention must be one of memory, plain, none, got 'linear'"):
        SimMPNet.from_variant("tiny", n_classes=2, encoder_attention="linear")
    with pytest.raises(InputError, match=r"decoder_attention must be one of memory, plain, none, got None"):
        SimMPNetConfig(decoder_attention=None)
    for key in ("dsgim", "encoder_a"):
        with pytest.raises(InputError, match=f"{key} must be true or false, got 'no'"):
            SimMPNet.from_variant("tiny", n_classes=2, **{key: "no"})
    with pytest.raises(InputError, match="encoder_a is false"):
        SimMPNet.from_variant("tiny", n_classes=2, encoder_a=False, pretrained=True)
    # A training config is refused when it is read, before any data is looked at.
    nowhere = {"data_root": str(tmp_path / "nowhere")}
    with pytest.raises(InputError, match="decoder_attention must be one of memory, plain, none"):
        TrainConfig.from_dict({**nowhere, "model_overrides": {"decoder_attention": "off"}})
    with pytest.raises(InputError, match="set pretrained: false"):
        TrainConfig.from_dict({**nowhere, "pretrained": True, "model_overrides": {"encoder_a": False}})


def test_the_trainer_runs_a_network_without_memory(brain_data, tmp_path):
    """No memory anywhere: no warm-up in the plan, no W-LD, and the step commits nothing."""
    overrides = {**SMALL, "encoder_attention": "none", "decoder_attention": "plain", "dsgim": False, "encoder_a": False}
    config = TrainConfig.from_dict(
        small_train_config(
            brain_data, tmp_path / "run", model_overrides=overrides, warmup_iters=None, wld_start_epoch=None,
            max_steps=1, val_list=None,
        )
    )
    trainer = Trainer(config)
    assert trainer.plan.warmup_iters is None and trainer.plan.wld_start_epoch is None and trainer.wld is None
    result = trainer.fit()
    trainer.close()
    assert result["steps"] == 1
    loaded = SimMPNet.from_pretrained(tmp_path / "run" / "last.pt")
    assert loaded.config == trainer.model.config and loaded.config.encoder_a is False


def test_wld_drives_only_the_memory_that_is_left(brain_data, tmp_path):
    overrides = {**SMALL, "encoder_attention": "plain"}
    values = small_train_config(brain_data, tmp_path / "run", model_overrides=overrides, val_list=None)
    trainer = Trainer(TrainConfig.from_dict(values))
    trainer.close()
    assert trainer.plan.wld_start_epoch is None and trainer.wld is None  # wld_blocks encoder: nothing to drive
    trainer = Trainer(TrainConfig.from_dict({**values, "wld_blocks": "all"}))
    trainer.close()
    assert trainer.wld.blocks == trainer.model.dmwla_blocks("decoder") and len(trainer.wld.blocks) == 4
