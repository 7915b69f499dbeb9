"""The paper's losses: soft Dice, ``0.3 CE + 0.7 Dice``, and the "MUTATION" deep supervision
over every non-empty subset of the head outputs (SPEC section 5)."""
from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftDiceLoss", "CEDiceLoss", "DeepSupervisionLoss"]


def one_hot(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, H, W)`` class ids -> ``(B, C, H, W)`` float one-hot."""
    return F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()


class SoftDiceLoss(nn.Module):
    """``1 - mean_c (2 |p_c t_c| + eps) / (|p_c| + |t_c| + eps)`` over all classes, background
    included, with ``p = softmax(logits)`` and the sums taken over the whole batch.

    Shapes: logits ``(B, C, H, W)``, target ``(B, H, W)`` int64.
    """

    def __init__(self, smooth: float = 1e-5) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``onehot`` (B, C, H, W) may be passed in when the same target is scored many times."""
        probs = torch.softmax(logits.float(), dim=1)
        if onehot is None:
            onehot = one_hot(target, logits.shape[1])
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        denominator = probs.sum(dims) + onehot.sum(dims)
        return 1.0 - ((2.0 * intersection + self.smooth) / (denominator + self.smooth)).mean()


class CEDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` (paper: 0.3 / 0.7)."""

    def __init__(self, ce_weight: float = 0.3, dice_weight: float = 0.7) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice = SoftDiceLoss()

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target)
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target, onehot)


class DeepSupervisionLoss(nn.Module):
    """Sum of ``CEDiceLoss`` over the summed logits of every non-empty subset of the heads
    (15 subsets for 4 heads).  A single tensor (a network with one head) is scored as is.

    Args:
        criterion: the loss applied to each subset (default ``CEDiceLoss()``).
    """

    def __init__(self, criterion: nn.Module | None = None) -> None:
        super().__init__()
        self.criterion = criterion or CEDiceLoss()

    def forward(self, heads: Sequence[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(heads, torch.Tensor):
            return self.criterion(heads, target)
        heads = list(heads)
        extra = {"onehot": one_hot(target, heads[0].shape[1])} if isinstance(self.criterion, CEDiceLoss) else {}
        total = heads[0].new_zeros((), dtype=torch.float32)
        for size in range(1, len(heads) + 1):
            for subset in itertools.combinations(heads, size):
                # a running sum, not torch.stack: no copy of all the heads per subset
                total = total + self.criterion(functools.reduce(torch.add, subset), target, **extra)
        return total
