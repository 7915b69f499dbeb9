"""The gradient comparison of tools/compare_with_authors.py, without the authors' code: rounding
noise of another computation order passes (gradients that are zero in theory included), a
parameter changed by 1e-6 relative fails."""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from simmpnet.models import SimMPNet
from simmpnet.training import DeepSupervisionLoss

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_with_authors.py"
SIDE = 64


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_with_authors", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def network(tool):
    """The tiny network at 64 px in float64, after warm-up, dropout off, in train(); a batch of
    two images and labels."""
    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", n_classes=9, img_size_a=SIDE, img_size_b=SIDE * 7 // 8).double()
    model.train()
    model.end_warmup()
    tool._disable_dropout(model)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, SIDE, SIDE, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 9, (2, SIDE, SIDE), generator=generator)
    return model, x, labels


def _gradients(model, x, labels) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)  # the same draws on both sides, whatever the forward draws
    DeepSupervisionLoss()(model(x), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _compare(tool, network, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]):
    model, x, _ = network
    assert ours.keys() == theirs.keys() and len(ours) == len(list(model.parameters()))
    return tool.compare_gradients([(name, ours[name], theirs[name]) for name in ours], x.shape[0] * SIDE * SIDE)


@pytest.fixture(scope="module")
def reference(network) -> dict[str, torch.Tensor]:
    model, x, labels = network
    return _gradients(copy.deepcopy(model), x, labels)


def _channels_last(model, x, labels):
    return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), labels


def _batch_swapped(model, x, labels):
    return model, x.flip(0), labels.flip(0)


@pytest.mark.parametrize("other", [_channels_last, _batch_swapped], ids=["channels_last", "batch_order"])
def test_rounding_noise_of_another_computation_passes(tool, network, reference, other):
    """Another memory format or batch order sums in another order: every gradient differs by
    rounding noise, the bias before the stem's BatchNorm (zero in theory) in full."""
    model, x, labels = network
    theirs = _gradients(*other(copy.deepcopy(model), x, labels))
    result = _compare(tool, network, reference, theirs)
    rows = {row.name: row for row in result.rows}
    total = sum(float(g.double().norm()) ** 2 for g in theirs.values()) ** 0.5
    zero_in_theory = rows["stem.0.bias"]  # conv1x1 -> BatchNorm in train(): its gradient cancels
    assert zero_in_theory.norm_theirs < 1e-10 * total
    assert zero_in_theory.rel > 0 and float((reference["stem.0.bias"] - theirs["stem.0.bias"]).norm()) > 0
    assert result.below_floor >= 1 and result.floor < 1e-3 * total
    assert 0 < result.worst <= tool.GRAD_REL, result.rows[:3]


@pytest.mark.parametrize("name", ["heads.0.weight", "encoder_a.backbone.stages_1.blocks.0.attn_block.attn.qkv.weight"])
def test_a_parameter_changed_by_1e_6_relative_fails(tool, network, reference, name):
    """A head and an attention projection of encoder A multiplied by 1 + 1e-6 (not a weight
    right before a normalisation, which makes its uniform scaling invisible downstream)."""
    model, x, labels = network
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.get_parameter(name).mul_(1 + 1e-6)
    result = _compare(tool, network, reference, _gradients(changed, x, labels))
    assert result.worst > tool.GRAD_REL, result.rows[:3]


def test_floor_follows_float64_rounding_of_the_whole_gradient(tool):
    """Numbers of a paper-scale step (batch of two 256 x 256 images): rounding noise of 5e-12 in
    a gradient that is zero in theory, next to a whole gradient of norm 616, passes; a
    difference of 1e-5 relative in a gradient above the floor fails."""
    terms = 2 * 256 * 256
    big = torch.full((100,), 61.6, dtype=torch.float64)  # norm 616
    noise = torch.full((4,), 2.5e-12, dtype=torch.float64)  # norm 5e-12
    result = tool.compare_gradients([("weight", big, big), ("bias", noise, -noise)], terms)
    assert result.floor == pytest.approx(terms * torch.finfo(torch.float64).eps / tool.GRAD_REL * 616)
    assert result.worst == pytest.approx(1e-11 / result.floor) and result.worst <= tool.GRAD_REL
    assert result.below_floor == 1
    changed = tool.compare_gradients([("weight", big * (1 + 1e-5), big), ("bias", noise, -noise)], terms)
    assert changed.rows[0].name == "weight" and changed.worst == pytest.approx(1e-5)
