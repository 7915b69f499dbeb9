"""W-LD: the Weight-Loss Dynamic schedule of the memory update count ``K`` (docs/method.md).

``D = L_prev - L_cur``; ``K = int(100 * (0.5 - 0.5 D))``, replaced by 50 when it falls outside
``[25, 75]``.  A falling loss rewrites fewer slots (a stable memory), a rising loss more.

The schedule follows the authors' training loop step for step: the losses of the start epoch
(paper: 100, 0-based) are only recorded, ``K`` follows the rule from the next epoch on, and
``int`` truncates the product as computed in binary floating point (``100 * 0.33`` gives 32.99...,
hence 32).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .dmwla import DMWLA

__all__ = ["WLDSchedule"]


class WLDSchedule:
    """Maps loss changes to ``K`` and applies it to the DMW-LA blocks it drives.

    Args:
        blocks: the blocks whose ``update_count`` the schedule sets.  The authors' code drives
            encoder B only (``model.dmwla_blocks("encoder")``); pass ``"all"`` blocks to
            drive the decoder's too.
        start_epoch: the epoch whose step losses are recorded first (paper: 100); ``K`` stays
            ``default`` up to and including it and follows the rule from the next epoch on.
        default: ``K`` outside the range and before the start (50).
        low: the smallest accepted ``K`` (25).
        high: the largest accepted ``K`` (75).
        gain: the factor 100 of the rule.
    """

    def __init__(
        self,
        blocks: Iterable[DMWLA],
        start_epoch: int = 100,
        default: int = 50,
        low: int = 25,
        high: int = 75,
        gain: float = 100.0,
    ) -> None:
        self.blocks = list(blocks)
        if not low <= default <= high:
            raise ValueError(f"default K={default} must lie in [{low}, {high}]")
        self.start_epoch = start_epoch
        self.default = default
        self.low = low
        self.high = high
        self.gain = gain
        self.previous_loss: float | None = None
        self.current_k = default

    def k_for_change(self, loss_change: float) -> int:
        """``K`` for ``D = previous loss - current loss``."""
        raw = (0.5 - 0.5 * loss_change) * self.gain
        k = int(raw) if math.isfinite(raw) else self.default
        return k if self.low <= k <= self.high else self.default

    def step(self, loss: float, epoch: int) -> int:
        """Record the loss of one optimisation step and set ``K`` on the blocks.

        Returns the ``K`` now in force.  Up to and including ``start_epoch`` (and on the first
        step, which has no previous loss) ``K`` is ``default``.  A non-finite loss changes
        nothing.
        """
        loss = float(loss)
        if not math.isfinite(loss):
            return self.current_k
        if epoch <= self.start_epoch or self.previous_loss is None:
            k = self.default
        else:
            k = self.k_for_change(self.previous_loss - loss)
        self.previous_loss = loss
        self.apply(k)
        return k

    def apply(self, k: int) -> None:
        """Set ``K`` on every driven block."""
        self.current_k = int(k)
        for block in self.blocks:
            block.update_count = self.current_k

    def state_dict(self) -> dict[str, Any]:
        return {"previous_loss": self.previous_loss, "current_k": self.current_k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous_loss = state["previous_loss"]
        self.apply(state["current_k"])
