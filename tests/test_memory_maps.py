"""The prototype-assignment maps and slot counts of MemoryProbe equal what the memory read uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simmpnet.errors import InputError
from simmpnet.evaluation.memory_maps import MemoryProbe, block_names
from simmpnet.models import SimMPNet

#: float64 model: the maps are compared with an independent float64 computation; positions whose
#: two best categories (or slots) lie closer than this are near-ties that rounding may decide.
TIE = 1e-9


@pytest.fixture(scope="module")
def model() -> SimMPNet:
    torch.manual_seed(0)
    net = SimMPNet.from_variant("tiny", n_classes=3, img_size_a=64, img_size_b=56).double()
    net.train()
    with torch.no_grad():  # a few warm-up writes from real features, then the k-means start
        for _ in range(2):
            net(torch.randn(2, 1, 64, 64, dtype=torch.float64))
            net.commit_memory()
    net.end_warmup()
    with torch.no_grad():
        # The k-means start repeats the members of small clusters: exactly equal slots tie in
        # every score.  Tell them apart, so that the slot each position reads is well defined.
        for block in net.dmwla_blocks():
            block.memory.bank.add_(1e-3 * torch.randn_like(block.memory.bank))
    return net.eval()


def _block_inputs(model: SimMPNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every DMW-LA block in an eval forward of ``x``."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())) for b in model.dmwla_blocks()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _decided(scores: torch.Tensor) -> torch.Tensor:
    """Rows whose best score beats the second by more than :data:`TIE`."""
    top2 = scores.topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) > TIE


def test_maps_are_the_argmax_of_the_cosine_scores_of_the_read(model):
    x = torch.randn(3, 1, 64, 64, dtype=torch.float64)
    inputs = _block_inputs(model, x)
    with MemoryProbe(model) as probe:
        with torch.no_grad():
            model(x)
    maps = probe.concatenated()
    names = block_names(model)
    assert list(maps) == names and len(names) == len(inputs)
    compared = 0
    for name, block, block_input in zip(names, model.dmwla_blocks(), inputs):
        # Independently: theta queries of the block input, cosine with each prototype.
        queries = F.conv2d(block_input, block.theta.weight)  # (B, d, h, w)
        b, d, h, w = queries.shape
        protos = block.memory.prototypes  # (d, num_k)
        cosine = torch.einsum("bdhw,dk->bhwk", F.normalize(queries, dim=1), F.normalize(protos, dim=0))
        expected = cosine.argmax(-1).numpy()
        decided = _decided(cosine).numpy()
        assert maps[name].shape == (b, h, w)
        assert np.array_equal(maps[name][decided], expected[decided]), name
        compared += int(decided.sum())
        # Slot counts: per category, the slot with the highest query . slot in its block.
        rows = queries.permute(0, 2, 3, 1).reshape(-1, d)
        category = torch.from_numpy(expected.reshape(-1))
        pool, num_k = block.memory.pool_size, block.memory.num_k
        bank = block.memory.bank.view(d, num_k, pool)
        expected_counts = np.zeros((num_k, pool), dtype=np.int64)
        for r, c in zip(rows, category.tolist()):
            slot_scores = r @ bank[:, c]
            assert _decided(slot_scores), "a near-tie of two slots: the test set-up should rule it out"
            expected_counts[c, int(slot_scores.argmax())] += 1
        assert probe.slot_counts[name].sum() == b * h * w
        assert np.array_equal(probe.slot_counts[name], expected_counts), name
    assert compared > 0.99 * sum(int(np.prod(m.shape)) for m in maps.values())
    # More than one category is read somewhere: the maps are not trivially constant.
    assert any(len(np.unique(m)) > 1 for m in maps.values())


def test_probe_changes_nothing_and_removes_its_hooks(model):
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
    with MemoryProbe(model, blocks=[0, len(model.dmwla_blocks()) - 1]) as probe, torch.no_grad():
        probed = model(x)
        model(x)
    assert torch.equal(plain, probed)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not b.theta._forward_hooks for b in model.dmwla_blocks())
    assert list(probe.maps) == ["encoder 1", block_names(model)[-1]]
    assert [m.shape[0] for m in probe.maps["encoder 1"]] == [2, 2]  # one array per forward
    probe.reset()
    assert probe.concatenated() == {}


def test_blocks_in_warm_up_and_models_without_memory():
    net = SimMPNet.from_variant("tiny", n_classes=3, img_size_a=64, img_size_b=56).eval()
    assert net.in_warmup
    assert MemoryProbe(net).blocks == {}  # no memory read yet: nothing to map
    with pytest.raises(InputError, match="out of range"):
        MemoryProbe(net, blocks=[99])
    with pytest.raises(InputError, match="no prototype memory"):
        MemoryProbe(torch.nn.Conv2d(1, 1, 1))
