import itertools

import pytest
import torch
import torch.nn.functional as F

from simmpnet.training import CEDiceLoss, DeepSupervisionLoss, SoftDiceLoss


def test_soft_dice_is_zero_for_a_confident_correct_prediction_and_one_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert SoftDiceLoss()(perfect, target) < 1e-4
    wrong = F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 100
    assert SoftDiceLoss()(wrong, target) > 0.99


def test_ce_dice_weights():
    logits, target = torch.randn(2, 4, 6, 6), torch.randint(0, 4, (2, 6, 6))
    expected = 0.3 * F.cross_entropy(logits, target) + 0.7 * SoftDiceLoss()(logits, target)
    torch.testing.assert_close(CEDiceLoss()(logits, target), expected)


def test_deep_supervision_sums_all_fifteen_subsets():
    heads = [torch.randn(2, 3, 5, 5, requires_grad=True) for _ in range(4)]
    target = torch.randint(0, 3, (2, 5, 5))
    criterion = CEDiceLoss()
    subsets = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]
    assert len(subsets) == 15
    expected = sum(criterion(sum(heads[i] for i in s), target) for s in subsets)
    loss = DeepSupervisionLoss()(heads, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
    single = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(DeepSupervisionLoss()(single, target), criterion(single, target))


def test_soft_dice_has_squared_terms_in_its_denominator():
    # Two classes, one image of three pixels, target (0, 0, 1); the logits give
    # p_0 = (1/2, 3/4, 1/4) and p_1 = (1/2, 1/4, 3/4).  By hand, with eps = 1e-5:
    # class 0: 2 sum(p g) = 2.5, sum(p^2) = 0.875, sum(g^2) = 2 (linear: sum(p) = 1.5)
    # class 1: 2 sum(p g) = 1.5, sum(p^2) = 0.875, sum(g^2) = 1 (linear: sum(p) = 1.5)
    ln3 = 1.0986122886681098
    logits = torch.tensor([[[[0.0, ln3, 0.0]], [[0.0, 0.0, ln3]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 0, 1]]])
    eps = 1e-5
    squared = 1 - ((2.5 + eps) / (2.875 + eps) + (1.5 + eps) / (1.875 + eps)) / 2
    linear = 1 - ((2.5 + eps) / (3.5 + eps) + (1.5 + eps) / (2.5 + eps)) / 2
    assert float(SoftDiceLoss()(logits, target)) == pytest.approx(squared, rel=1e-6)
    assert float(SoftDiceLoss(denominator="linear")(logits, target)) == pytest.approx(linear, rel=1e-6)


def test_dice_denominator_is_checked_and_reaches_the_training_loss():
    with pytest.raises(ValueError, match="denominator must be one of"):
        SoftDiceLoss(denominator="cubic")
    assert DeepSupervisionLoss().criterion.dice.denominator == "squared"
    assert DeepSupervisionLoss(dice_denominator="linear").criterion.dice.denominator == "linear"
    from simmpnet.errors import InputError
    from simmpnet.training import TrainConfig

    with pytest.raises(InputError, match="dice_denominator must be one of"):
        TrainConfig.from_dict({"dice_denominator": "cubic"})


def test_deep_supervision_sums_half_precision_heads_in_fp32():
    """bf16 heads (a bf16 autocast forward) are scored as their fp32 values: the subset sums are
    not rounded to bf16 on the way (three bf16 additions would move the logits by up to 2^-8)."""
    generator = torch.Generator().manual_seed(0)
    heads = [(8 * torch.randn(2, 4, 16, 16, generator=generator)).bfloat16() for _ in range(4)]
    target = torch.randint(0, 4, (2, 16, 16), generator=generator)
    loss = DeepSupervisionLoss()
    assert loss(heads, target).dtype == torch.float32
    assert torch.equal(loss(heads, target), loss([h.float() for h in heads], target))
