import math

import pytest
import torch

import oracle
from simmpnet.models import DSGIM, decay_coefficient
from simmpnet.models.dsgim import coherent_window_mask, euclidean_split_weights


def test_decay_coefficient_of_the_authors_runs():
    assert decay_coefficient(1, 12) == pytest.approx(math.exp(-(0.25 - 2 ** (-2.5 - 5 / 12))))
    assert decay_coefficient(1, 12) == pytest.approx(0.889, abs=1e-3)  # docs/method.md, DS-GIM


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


@pytest.mark.parametrize("scale", [0.01, 30.0])
def test_authors_masks_equal_their_row_by_row_rule(scale):
    # scale 0.01 keeps every split point below 1 (near = the complement of far); at 30 it is
    # above 1, where their near set is the whole row
    torch.manual_seed(3)
    scores = torch.randn(2, 20, 20, dtype=torch.float64) * scale
    ours = euclidean_split_weights(scores, "authors")
    torch.testing.assert_close(ours, oracle.authors_split_weights(scores), atol=1e-12, rtol=1e-12)


def test_authors_masks_differ_from_the_method_only_where_their_bug_acts():
    torch.manual_seed(4)
    small = torch.randn(2, 20, 20, dtype=torch.float64) * 0.01
    # split points below 1 and no ties: the -100 fill only adds exp(-100)-sized weights
    torch.testing.assert_close(
        euclidean_split_weights(small, "authors"), euclidean_split_weights(small, "method"), atol=1e-30, rtol=1e-12
    )
    large = small * 3000
    method, authors = euclidean_split_weights(large, "method"), euclidean_split_weights(large, "authors")
    assert (authors - method).abs().max() > 0.1  # their near softmax runs over the whole row
    near_all = torch.softmax(large, dim=-1)
    far = method - _near_part(large)
    torch.testing.assert_close(authors, far + near_all, atol=1e-12, rtol=1e-9)


def _near_part(scores):
    from simmpnet.models.dsgim import _masked_softmax

    n = scores.shape[-1]
    mean = scores.mean(-1)
    distance = (mean[:, :, None] - mean[:, None, :]).abs()
    threshold = distance.kthvalue(n - n // 2 + 1, dim=-1, keepdim=True).values
    far = (distance >= threshold) | torch.eye(n, dtype=torch.bool)
    return _masked_softmax(scores, ~far)


def test_empty_near_set_adds_nothing_in_the_method_and_a_uniform_softmax_in_theirs():
    # equal row means: every distance is 0, the far set is the whole row, the near set empty
    scores = torch.randn(1, 1, 12, dtype=torch.float64).expand(1, 12, 12).contiguous()
    method, authors = euclidean_split_weights(scores, "method"), euclidean_split_weights(scores, "authors")
    torch.testing.assert_close(method.sum(-1), torch.ones(1, 12, dtype=torch.float64))
    torch.testing.assert_close(authors, method + 1.0 / 12)


def test_masks_switch_is_checked_and_reaches_the_network():
    with pytest.raises(ValueError, match="masks must be one of"):
        DSGIM(8, masks="paper")
    from simmpnet import SimMPNet

    model = SimMPNet.from_variant("tiny", n_classes=3, dsgim_masks="authors")
    assert {m.masks for m in model.encoder_b.dsgims} == {"authors"}
    assert {m.masks for m in SimMPNet.from_variant("tiny", n_classes=3).encoder_b.dsgims} == {"method"}
