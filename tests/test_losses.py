import itertools

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
