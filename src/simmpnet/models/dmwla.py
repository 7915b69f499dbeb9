"""DMW-LA: Dynamic Memory Weights-Loss Attention (SPEC section 3).

During warm-up the block is plain non-local attention ``x + o(softmax(t q^T) v)``.  After it,
every position also reads the memory block of its nearest prototype:
``x + o(r_mem + r_ctx)``.  The bank (see :mod:`simmpnet.models.memory`) is updated from the
momentum keys in training mode only; evaluation never changes the block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .memory import PrototypeMemory

__all__ = ["DMWLA"]


class DMWLA(nn.Module):
    """Dynamic Memory Weights-Loss Attention block.

    Args:
        channels: input/output channels ``ch``.
        feature_dim: memory width ``d`` (width of the theta/phi/g projections).
        num_k: categories ``n_k`` of the memory bank.
        pool_size: slots per category ``P``.
        warmup_iters: training forwards of warm-up ``T_w``.
        memory_momentum: ``m`` of the slot update.
        key_momentum: ``mu`` of the momentum key projection ``phi_k``.
        update_count: initial ``K`` (W-LD changes it through :attr:`update_count`).
        scale: factor of the global-read logits (the authors use none, i.e. 1).

    Shapes:
        input and output ``(B, ch, H, W)``.
    """

    key_weight: torch.Tensor

    def __init__(
        self,
        channels: int,
        feature_dim: int = 256,
        num_k: int = 9,
        pool_size: int = 100,
        warmup_iters: int = 2000,
        memory_momentum: float = 0.3,
        key_momentum: float = 0.95,
        update_count: int = 50,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.feature_dim = feature_dim
        self.key_momentum = key_momentum
        self.scale = scale
        self.theta = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.phi = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.g = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.o = nn.Conv2d(feature_dim, channels, 1, bias=False)
        # The momentum copy of phi is state, not a trainable parameter: a buffer keeps it in
        # state_dict and on the module's device without exposing it to optimisers.
        self.register_buffer("key_weight", self.phi.weight.detach().clone())
        self.memory = PrototypeMemory(
            feature_dim,
            num_k,
            pool_size=pool_size,
            warmup_iters=warmup_iters,
            memory_momentum=memory_momentum,
            update_count=update_count,
        )

    @property
    def in_warmup(self) -> bool:
        """True while the block is still plain non-local attention."""
        return self.memory.in_warmup

    def end_warmup(self) -> None:
        """Run the k-means start of the memory bank now and leave warm-up."""
        self.memory.initialise_from_kmeans()

    @property
    def update_count(self) -> int:
        """``K``: slots rewritten per category and training forward."""
        return int(self.memory.update_count)

    @update_count.setter
    def update_count(self, value: int) -> None:
        if not 1 <= int(value) <= self.memory.pool_size:
            raise ValueError(f"update_count must lie in [1, {self.memory.pool_size}], got {value}")
        self.memory.update_count.fill_(int(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise InputError(f"DMWLA expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        t = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, d)
        q = self.phi(x).flatten(2)  # (B, d, N)
        v = self.g(x).flatten(2).transpose(1, 2)
        context = F.scaled_dot_product_attention(
            t.unsqueeze(1), q.transpose(1, 2).unsqueeze(1), v.unsqueeze(1), scale=self.scale
        ).squeeze(1)
        if self.memory.in_warmup:
            if self.training:
                self.memory.warmup_write(q.detach())
            read = context
        else:
            read = context + self.memory.read(t.reshape(b * h * w, -1)).view(b, h * w, -1)
            if self.training:
                self._update_memory(x)
        return x + self.o(read.transpose(1, 2).reshape(b, -1, h, w))

    @torch.no_grad()
    def _update_memory(self, x: torch.Tensor) -> None:
        keys = F.conv2d(x.detach(), self.key_weight.to(x.dtype)).flatten(2).transpose(1, 2)
        self.memory.update(keys.reshape(-1, self.feature_dim).float())
        self.key_weight.mul_(self.key_momentum).add_(self.phi.weight.detach(), alpha=1.0 - self.key_momentum)
