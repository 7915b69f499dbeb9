"""The paper's losses: soft Dice, ``0.3 CE + 0.7 Dice``, and the "MUTATION" deep supervision
over every non-empty subset of the head outputs (docs/training.md, "The loss").

The Dice is the soft Dice of the TransUNet lineage that the paper trains with: squared terms in
the denominator, ``sum(p^2) + sum(t^2)``.  The linear form ``sum(p) + sum(t)`` (V-Net's
"generalised" habit, MONAI's default) is a different objective with different gradients; it is
kept as ``denominator="linear"``.

The Dice is taken over the whole batch: its sufficient statistics (per class, the sums of
``p t`` and of the denominator terms) are summed over the batch before the ratio is formed.  In
distributed training a ``reduce`` function (an autograd-aware all-reduce, see
`simmpnet.training.distributed`) sums them over the processes too, so every process
computes the Dice of the global batch, as one process would.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DICE_DENOMINATORS", "SoftDiceLoss", "CEDiceLoss", "DeepSupervisionLoss", "Reduce"]


def one_hot(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, H, W)`` class ids -> ``(B, C, H, W)`` float one-hot.

    A scatter rather than ``F.one_hot``, which reads the label range back to the host (a GPU
    sync) off CUDA; the data layouts check the labels against ``n_classes`` when they load them.
    """
    shape = (target.shape[0], n_classes, *target.shape[1:])
    return torch.zeros(shape, device=target.device).scatter_(1, target.unsqueeze(1), 1.0)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in fp32 for the loss; fp32 and fp64 as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


#: Sums a tensor over the processes of a distributed run (autograd-aware); None: one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]


#: Denominators of the soft Dice: the paper's squared terms, or the linear ones.
DICE_DENOMINATORS = ("squared", "linear")


class SoftDiceLoss(nn.Module):
    """``1 - mean_c (2 sum(p_c t_c) + eps) / (sum(p_c^2) + sum(t_c^2) + eps)`` over all classes,
    background included, with ``p = softmax(logits)``, ``t`` the one-hot target and the sums
    taken over the whole batch (over the global batch of all processes when ``reduce`` is
    given).  ``denominator="linear"`` uses ``sum(p_c) + sum(t_c)`` instead.

    Shapes: logits ``(B, C, H, W)``, target ``(B, H, W)`` int64.
    """

    def __init__(self, smooth: float = 1e-5, reduce: Reduce | None = None, denominator: str = "squared") -> None:
        super().__init__()
        if denominator not in DICE_DENOMINATORS:
            raise ValueError(f"denominator must be one of {list(DICE_DENOMINATORS)}, got {denominator!r}")
        self.smooth = smooth
        self.reduce = reduce
        self.denominator = denominator

    def statistics(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(2, C)``: per class the batch sums of ``p t`` and of the denominator terms (not
        reduced)."""
        probs = torch.softmax(_at_least_fp32(logits), dim=1)
        if onehot is None:
            onehot = one_hot(target, logits.shape[1])
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        # t is 0/1, so sum(t^2) = sum(t)
        predicted = probs.square().sum(dims) if self.denominator == "squared" else probs.sum(dims)
        return torch.stack([intersection, predicted + onehot.sum(dims)])

    def from_statistics(self, stats: torch.Tensor) -> torch.Tensor:
        """The loss from (already reduced) `statistics`."""
        intersection, denominator = stats[0], stats[1]
        return 1.0 - ((2.0 * intersection + self.smooth) / (denominator + self.smooth)).mean()

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``onehot`` (B, C, H, W) may be passed in when the same target is scored many times."""
        stats = self.statistics(logits, target, onehot)
        if self.reduce is not None:
            stats = self.reduce(stats)
        return self.from_statistics(stats)


class CEDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` (paper: 0.3 / 0.7).  The CE is the mean over
    this process's pixels; the Dice is that of the global batch when ``reduce`` is given."""

    def __init__(
        self,
        ce_weight: float = 0.3,
        dice_weight: float = 0.7,
        reduce: Reduce | None = None,
        dice_denominator: str = "squared",
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice = SoftDiceLoss(reduce=reduce, denominator=dice_denominator)

    def terms(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE of this process, Dice `SoftDiceLoss.statistics` not yet reduced)."""
        return F.cross_entropy(_at_least_fp32(logits), target), self.dice.statistics(logits, target, onehot)

    def combine(self, ce: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """The loss from the CE and the (reduced) Dice statistics."""
        return self.ce_weight * ce + self.dice_weight * self.dice.from_statistics(stats)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None = None
    ) -> torch.Tensor:
        ce, stats = self.terms(logits, target, onehot)
        if self.dice.reduce is not None:
            stats = self.dice.reduce(stats)
        return self.combine(ce, stats)


class DeepSupervisionLoss(nn.Module):
    """Sum of ``CEDiceLoss`` over the summed logits of every non-empty subset of the heads
    (15 subsets for 4 heads).  A single tensor (a network with one head) is scored as is.

    Args:
        criterion: the loss applied to each subset (default ``CEDiceLoss(reduce=reduce,
            dice_denominator=dice_denominator)``).
        reduce: distributed training: sums the Dice statistics over the processes (one
            collective for all subsets).  Each process's loss is then ``0.3 * local CE +
            0.7 * global Dice``; their mean is the loss of the global batch, and because the
            backward of an all-reduce sums the gradients of all processes, DDP's averaging of
            the gradients yields exactly the gradient of the global-batch loss.
        dice_denominator: ``"squared"`` (the paper's) or ``"linear"``, see `SoftDiceLoss`.
    """

    def __init__(
        self, criterion: nn.Module | None = None, reduce: Reduce | None = None, dice_denominator: str = "squared"
    ) -> None:
        super().__init__()
        if criterion is not None and (reduce is not None or dice_denominator != "squared"):
            raise ValueError("give reduce and dice_denominator to the criterion, or no criterion")
        self.criterion = criterion or CEDiceLoss(reduce=reduce, dice_denominator=dice_denominator)

    def forward(self, heads: Sequence[torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(heads, torch.Tensor):
            return self.criterion(heads, target)
        # Half-precision heads are cast once, here, rather than each subset sum twice (its CE
        # and its Dice): the subsets are then summed in fp32 too, as the loss island computes.
        heads = [_at_least_fp32(head) for head in heads]
        subsets = (
            # a running sum, not torch.stack: no copy of all the heads per subset
            functools.reduce(torch.add, subset)
            for size in range(1, len(heads) + 1)
            for subset in itertools.combinations(heads, size)
        )
        if not isinstance(self.criterion, CEDiceLoss):
            total = heads[0].new_zeros((), dtype=torch.float32)
            for logits in subsets:
                total = total + self.criterion(logits, target)
            return total
        # CE and the Dice statistics of every subset first; the statistics of all subsets are
        # then reduced over the processes in one collective.
        criterion = self.criterion
        onehot = one_hot(target, heads[0].shape[1])
        ces, stats = zip(*(criterion.terms(logits, target, onehot) for logits in subsets))
        reduced = torch.stack(stats)
        if criterion.dice.reduce is not None:
            reduced = criterion.dice.reduce(reduced)
        total = heads[0].new_zeros((), dtype=torch.float32)
        for ce, subset_stats in zip(ces, reduced):
            total = total + criterion.combine(ce, subset_stats)
        return total
