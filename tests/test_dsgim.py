import math

import pytest
import torch

import oracle
from simmpnet.models import DSGIM, decay_coefficient
from simmpnet.models.dsgim import coherent_window_mask


def test_decay_coefficient_of_the_authors_runs():
    assert decay_coefficient(1, 12) == pytest.approx(math.exp(-(0.25 - 2 ** (-2.5 - 5 / 12))))
    assert decay_coefficient(1, 12) == pytest.approx(0.889, abs=1e-3)  # SPEC section 4


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (9, 13), (5, 3), (1, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_any_size(size, batch):
    module = DSGIM(16).eval()
    assert module(torch.randn(batch, 16, *size)).shape == (batch, 16, *size)


@pytest.mark.parametrize("gamma", [0.0, decay_coefficient()])
@pytest.mark.parametrize("size", [(9, 11), (14, 7)])
def test_equals_loop_oracle(gamma, size):
    torch.manual_seed(1)
    module = DSGIM(8, gamma=gamma).eval()
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(module(x), oracle.dsgim_attention(module, x, gamma), atol=1e-5, rtol=1e-4)


def test_gamma_zero_reproduces_hard_masks():
    torch.manual_seed(2)
    module = DSGIM(8, gamma=0.0).eval()
    x = torch.randn(1, 8, 14, 14)
    coherent = coherent_window_mask(x, 7, 2)[:, None]
    assert coherent.sum() == 2 * 49
    hard = module.query(x * (~coherent)), module.key(x * coherent)
    soft = module.query(x * torch.where(coherent, 0.0, 1.0)), module.key(x * torch.where(coherent, 1.0, 0.0))
    assert torch.equal(hard[0], soft[0]) and torch.equal(hard[1], soft[1])
    torch.testing.assert_close(module(x), oracle.dsgim_attention(module, x, 0.0), atol=1e-5, rtol=1e-4)


def test_coherent_windows_are_the_uniform_ones():
    x = torch.randn(2, 4, 21, 14)
    x[0, :, 7:14, 0:7] = 1.0  # a window of identical tokens is maximally coherent
    x[1, :, 14:21, 7:14] = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None]
    mask = coherent_window_mask(x, 7, 1)
    assert mask[0, 7:14, 0:7].all() and mask[0].sum() == 49
    assert mask[1, 14:21, 7:14].all() and mask[1].sum() == 49


def test_batch_position_does_not_matter():
    module = DSGIM(8).eval()
    a, b = torch.randn(1, 8, 14, 14), torch.randn(1, 8, 14, 14)
    alone = module(a)
    first = module(torch.cat([a, b]))[:1]
    second = module(torch.cat([b, a]))[1:]
    torch.testing.assert_close(first, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, alone, atol=1e-5, rtol=1e-5)
    assert alone.std() > 0  # not a spatially constant output


def test_gradients_flow():
    module = DSGIM(8).train()
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    module(x).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None, name
