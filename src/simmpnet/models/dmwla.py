"""DMW-LA: Dynamic Memory Weights-Loss Attention (docs/method.md).

During warm-up the block is plain non-local attention ``x + o(softmax(t q^T) v)``
(`NonLocalAttention`, which is also the block of the ``"plain"`` ablation).  After it,
every position also reads the memory block of its nearest prototype:
``x + o(r_mem + r_ctx)``.  The bank (see `simmpnet.models.memory`) is updated from the
momentum keys in training mode only; evaluation never changes the block.

The memory changes in two phases.  A training forward only *records* the change it asks for
(the warm-up write of the ``phi`` features, or the update from the momentum keys together with
the next momentum key weight); `DMWLA.commit_memory` applies it.  Training code calls
``commit_memory()`` once the loss of the step is known to be finite (the trainer does, after
the optimiser step), so that a NaN or Inf step never reaches the bank.  A forward whose change
is not committed (a skipped step) is simply replaced by the next training forward, and
`DMWLA.discard_memory` drops it at once; nothing is ever applied twice.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..precision import PrecisionIslands
from .memory import PrototypeMemory

logger = logging.getLogger(__name__)

__all__ = ["DMWLA", "Gather", "NonLocalAttention"]

#: Concatenates a tensor of every process along dim 0, in rank order (distributed training);
#: ``None`` means one process.
Gather = Callable[[torch.Tensor], torch.Tensor]


class NonLocalAttention(PrecisionIslands, nn.Module):
    """Non-local attention block ``x + o(softmax(scale t q^T) v)``: DMW-LA without its memory.

    ``t``, ``q``, ``v`` are the ``theta``, ``phi``, ``g`` projections of ``x`` to
    ``feature_dim`` channels; ``o`` projects the read back to ``channels``.  In half precision
    the read is an fp32 island; ``island_precision`` (`simmpnet.precision`) says how it runs
    under bf16.

    Args:
        channels: input/output channels ``ch``.
        feature_dim: width ``d`` of the theta/phi/g projections.
        scale: factor of the read logits (the authors use none, i.e. 1).

    Shapes:
        input and output ``(B, ch, H, W)``.
    """

    def __init__(self, channels: int, feature_dim: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.channels = channels
        self.feature_dim = feature_dim
        self.scale = scale
        self.theta = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.phi = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.g = nn.Conv2d(channels, feature_dim, 1, bias=False)
        self.o = nn.Conv2d(feature_dim, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x, *self._project(x))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``t`` ``(B, N, d)``, ``q`` ``(B, d, N)`` and ``v`` ``(B, N, d)`` of ``x`` ``(B, ch, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise InputError(f"{type(self).__name__} expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        t = self.theta(x).flatten(2).transpose(1, 2)
        q = self.phi(x).flatten(2)
        v = self.g(x).flatten(2).transpose(1, 2)
        return t, q, v

    def _attend(self, x: torch.Tensor, t: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x + o(read)``, the read's logits and softmax computed by `_read` in at least fp32."""
        b, _, h, w = x.shape
        if t.dtype in (torch.float16, torch.bfloat16):
            # The read logits t.q (and t.M) of trained blocks reach 1e5-1e6: the input of the
            # decoder's deepest block is not normalised and the authors' read has no 1/sqrt(d)
            # scale.  fp16 overflows there (it ends at 65504), and bf16 keeps 8 bits of
            # mantissa, so logits that differ by less than ~2000 become equal, the softmax is
            # noise and training can collapse (docs/training.md, "Mixed precision").  The reads
            # therefore run as an fp32 island, under autocast and in a block cast to half
            # precision alike; the result goes back to the block's dtype for `o`.  The bf16
            # island keeps the global read's inputs in bf16: scaled_dot_product_attention
            # accumulates the logits and takes their softmax in fp32 (its fused kernels do, and
            # its math fallback upcasts), and t, q are bf16 values already, so only the weights
            # and the weighted sum are rounded to bf16.  The memory read, which chooses a
            # category and weighs alike slots, stays fp32 in both (`DMWLA._read`).  Autocast is
            # off inside either island, so that its operator lists cannot change the dtypes
            # chosen here.
            with torch.autocast(x.device.type, enabled=False):
                if t.dtype == torch.bfloat16 and self.island_precision == "bf16":
                    read = self._read(t, q, v)
                else:
                    read = self._read(t.float(), q.float(), v.float()).to(t.dtype)
        else:
            read = self._read(t, q, v)
        return x + self.o(read.transpose(1, 2).reshape(b, -1, h, w))

    def _read(self, t: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``r_ctx``: ``(B, N, d)`` from ``t, v`` ``(B, N, d)`` and ``q`` ``(B, d, N)``."""
        return F.scaled_dot_product_attention(
            t.unsqueeze(1), q.transpose(1, 2).unsqueeze(1), v.unsqueeze(1), scale=self.scale
        ).squeeze(1)


class DMWLA(NonLocalAttention):
    """Dynamic Memory Weights-Loss Attention block: `NonLocalAttention` plus the read of
    a prototype memory bank after the warm-up.

    Args:
        channels: input/output channels ``ch``.
        feature_dim: memory width ``d`` (width of the theta/phi/g projections).
        num_k: categories ``n_k`` of the memory bank.
        pool_size: slots per category ``P``.
        warmup_iters: training forwards of warm-up ``T_w``.
        memory_momentum: ``m`` of the slot update.
        key_momentum: ``mu`` of the momentum key projection ``phi_k``.
        update_count: initial ``K`` (W-LD changes it through `update_count`).
        scale: factor of the global-read logits (the authors use none, i.e. 1).

    Shapes:
        input and output ``(B, ch, H, W)``.

    A training forward leaves the memory untouched and records the change it asks for;
    training code must call `commit_memory` after each optimisation step (the trainer
    does), or the bank is never written.  Evaluation forwards record nothing.
    """

    key_weight: torch.Tensor
    dropped_changes: torch.Tensor

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
        super().__init__(channels, feature_dim, scale)
        self.key_momentum = key_momentum
        # The momentum copy of phi is state, not a trainable parameter: a buffer keeps it in
        # state_dict and on the module's device without exposing it to optimisers.
        self.register_buffer("key_weight", self.phi.weight.detach().clone())
        # Memory changes dropped after the warm-up for non-finite candidates, counted on the
        # device (the drop decision never waits for the host); not state: not saved.
        self.register_buffer("dropped_changes", torch.zeros((), dtype=torch.long), persistent=False)
        self.memory = PrototypeMemory(
            feature_dim,
            num_k,
            pool_size=pool_size,
            warmup_iters=warmup_iters,
            memory_momentum=memory_momentum,
            update_count=update_count,
        )
        # The change recorded by the last training forward and not yet committed (not state:
        # never saved, never moved by .to()).
        self._pending: dict | None = None

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
        return self.memory._k

    @update_count.setter
    def update_count(self, value: int) -> None:
        if not 1 <= int(value) <= self.memory.pool_size:
            raise ValueError(f"update_count must lie in [1, {self.memory.pool_size}], got {value}")
        self.memory.set_update_count(int(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, q, v = self._project(x)
        if self.memory.in_warmup:
            if self.training:
                self._record({"kind": "warmup", "features": q.detach()})
        elif self.training:
            self._record_update(x)
        return self._attend(x, t, q, v)

    def _read(self, t: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``r_ctx`` (+ ``r_mem`` after warm-up): ``(B, N, d)`` from ``t, v`` ``(B, N, d)`` and
        ``q`` ``(B, d, N)``."""
        read = super()._read(t, q, v)
        if not self.memory.in_warmup:
            # In at least fp32 (the bf16 island's queries included), and summed before the one
            # rounding back to the queries' dtype.
            memory = self.memory.read(t.flatten(0, 1).to(torch.promote_types(t.dtype, torch.float32)))
            read = (read + memory.view_as(read)).to(t.dtype)
        return read

    # ------------------------------------------------------------ memory commit
    @property
    def has_pending_memory(self) -> bool:
        """True when a training forward recorded a memory change that is not committed yet."""
        return self._pending is not None

    def _record(self, pending: dict) -> None:
        if self._pending is not None:
            warnings.warn(
                "DMW-LA: a training forward replaced a memory change that was never committed; "
                "call model.commit_memory() after each optimisation step (model.discard_memory() "
                "drops a change on purpose)",
                RuntimeWarning,
                stacklevel=3,
            )
        self._pending = pending

    @torch.no_grad()
    def _record_update(self, x: torch.Tensor) -> None:
        # The keys are computed at commit time from the block input (which autograd keeps
        # alive anyway) under the autocast state of this forward; the next momentum key
        # weight is computed now, from the phi weight of this forward.
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        next_key = self.key_weight.mul(self.key_momentum).add_(self.phi.weight.detach(), alpha=1.0 - self.key_momentum)
        self._record(
            {
                "kind": "update",
                "input": x.detach(),
                # (under torch.compile the tensor's version counter is not the eager one)
                "version": None if torch.compiler.is_compiling() else x._version,
                "autocast": (device_type, torch.get_autocast_dtype(device_type) if autocast else None),
                "next_key": next_key,
            }
        )

    @staticmethod
    def _finite(candidates: torch.Tensor) -> bool:
        # After the gather: every process sees the same candidates and decides alike.
        if bool(torch.isfinite(candidates).all()):
            return True
        logger.warning("DMW-LA: non-finite candidate features; this memory change is dropped")
        return False

    def take_dropped_changes(self) -> int:
        """How many memory changes after the warm-up were dropped for non-finite candidate
        features since the last call (and reset the count).  Reads one number from the device:
        call it at logging intervals, not every step.  Logs a warning when it is not zero."""
        dropped = int(self.dropped_changes)
        if dropped:
            self.dropped_changes.zero_()
            logger.warning("DMW-LA: %d memory change(s) with non-finite candidate features were dropped", dropped)
        return dropped

    def discard_memory(self) -> None:
        """Drop the memory change recorded by the last training forward without applying it."""
        self._pending = None

    @torch.no_grad()
    def commit_memory(self, gather: Gather | None = None) -> bool:
        """Apply the memory change recorded by the last training forward; returns whether
        there was one.

        Warm-up: random ``phi`` columns of the batch are written into random slots (and the
        k-means start runs after the last warm-up step).  After warm-up: the bank is updated
        from the momentum keys ``phi_k(x)`` of the batch, then ``phi_k`` takes its momentum step
        towards the ``phi`` weight *of that forward* (the optimiser may have moved ``phi``
        since).  ``gather`` (distributed training) concatenates the candidate features of all
        processes in rank order, so every process applies the same change to the same bank.
        A change whose candidate features are not all finite (e.g. an fp16 overflow of the
        momentum keys while the loss stayed finite) is dropped: the bank never holds NaN or Inf.
        During the warm-up the drop is decided on the host (and logged at once) and the return
        value says whether the change was applied.  After it the decision stays on the device,
        so that a GPU step never waits for it: the return value only says that a recorded change
        was processed, and `take_dropped_changes` counts (and logs) the dropped ones.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        if pending["kind"] == "warmup":
            if not self.memory.in_warmup:  # end_warmup() ran since the forward
                return False
            features = pending["features"]
            if gather is not None:
                features = gather(features.contiguous())
            if not self._finite(features):
                return False
            self.memory.warmup_write(features)
            return True
        x = pending["input"]
        if pending["version"] is not None and x._version != pending["version"]:
            raise RuntimeError("DMW-LA: the block input was modified in place before commit_memory()")
        device_type, dtype = pending["autocast"]
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            keys = F.conv2d(x, self.key_weight.to(x.dtype)).flatten(2).transpose(1, 2)
        keys = keys.reshape(-1, self.feature_dim)
        keys = keys.to(torch.promote_types(keys.dtype, torch.float32))
        if gather is not None:
            keys = gather(keys.contiguous())
        finite = torch.isfinite(keys).all()
        self.memory.update(keys, accept=finite)
        self.key_weight.copy_(torch.where(finite, pending["next_key"], self.key_weight))
        self.dropped_changes += (~finite).long()
        return True
