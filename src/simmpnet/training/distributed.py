"""Distributed data-parallel training (PyTorch DDP), started by ``torchrun`` or by
``simmpnet train --nproc N``.

Conventions (see the trainer):

* ``batch_size`` is the *global* batch.  The trainer draws the same global batch order as a
  single process, and rank ``r`` of ``W`` takes ``batch[r*b:(r+1)*b]`` with ``b = batch_size /
  W``: the concatenation over the ranks is the single-process batch.
* The DMW-LA memory changes of a step are computed from the candidate features of all ranks
  (`gather_cat`, rank order), with the same torch RNG state on every rank, so every rank
  keeps a bit-identical memory bank.
* The Dice statistics of the loss are summed over the ranks with an autograd-aware
  all-reduce (`all_reduce_sum`); with SyncBatchNorm a run takes the same steps as one
  process with the same global batch, up to floating-point rounding.
* Rank 0 alone writes checkpoints, logs and pictures and runs the validation; the others wait.
  Checkpoints hold the unwrapped model and do not depend on the number of processes.

The process group is initialised from the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on the CPU, NCCL on CUDA with the
device ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_object",
    "cleanup",
    "convert_sync_batchnorm",
    "environment_world_size",
    "gather_cat",
    "launch",
    "max_over_ranks",
    "mean_over_ranks",
    "setup",
    "shard_batches",
]

#: Rank 0 validates while the others wait at a collective: allow long validations.
TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup() initialised the process group (cleanup() ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment_world_size() -> int:
    """``WORLD_SIZE`` of the torchrun environment (1 outside torchrun)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError as err:
        raise InputError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from err


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group of the torchrun environment (if ``WORLD_SIZE`` > 1).

    Returns the context and the device this rank trains on: ``cuda:LOCAL_RANK`` when
    ``device`` is CUDA (NCCL backend), the CPU otherwise (gloo backend).  An already
    initialised default group is used as it is.
    """
    world = environment_world_size()
    if world == 1:
        return DistContext(), device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s): start at most one "
                "process per GPU (or train on the CPU with --device cpu)"
            )
        if device.index is not None and device.index != local_rank:
            logger.warning("distributed training: device %s replaced by cuda:%d (LOCAL_RANK)", device, local_rank)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise InputError(f"distributed training runs on CPU (gloo) or CUDA (NCCL), not {device.type}")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        options: dict[str, Any] = {"timeout": TIMEOUT}
        if device.type == "cuda":
            options["device_id"] = device
        dist.init_process_group(backend, **options)
        owns = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise InputError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
            f"RANK={rank}, WORLD_SIZE={world}"
        )
    return DistContext(rank, world, local_rank, owns), device


def cleanup(context: DistContext) -> None:
    """End the process group if `setup` started it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ collectives
def shard_batches(batches: Sequence[Sequence[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s contiguous share of every global batch: ``batch[r*b:(r+1)*b]``."""
    shards = []
    for batch in batches:
        if len(batch) % world_size:
            raise InputError(f"a batch of {len(batch)} slices cannot be shared by {world_size} processes")
        size = len(batch) // world_size
        shards.append(list(batch[rank * size : (rank + 1) * size]))
    return shards


@torch.no_grad()
def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The tensors of all ranks concatenated along dim 0, in rank order (no gradient).  Every
    rank must pass a tensor of the same shape, dtype and device type."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, differentiable: the backward sums the gradients of all ranks.

    With DDP (which averages the gradients over the ranks) a loss term computed on every rank
    from all-reduced sums therefore contributes exactly the gradient it has in one process
    holding the whole batch: each rank gets ``W`` times its share, and DDP divides by ``W``.
    """
    return _AllReduceSum.apply(tensor)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of a Python float over the ranks (NaN anywhere gives NaN everywhere)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest of a Python float over the ranks (the same value on every rank)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return float(total)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    return max_over_ranks(float(flag), device) > 0


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable Python value)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


# --------------------------------------------------------------- SyncBatchNorm
class _SyncBatchNormMixin:
    """Batch normalisation over the batches of all ranks, on any device (PyTorch's
    ``nn.SyncBatchNorm`` runs on GPUs only).  Mean and variance come from two differentiable
    all-reduces (sums, then centred squares); outside distributed training, and in eval mode,
    the layer is the plain one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)  # type: ignore[misc]
        out = _sync_batch_norm(self, x)  # type: ignore[arg-type]
        if hasattr(self, "act"):  # timm's BatchNormAct2d: norm, dropout, activation
            out = self.act(self.drop(out))  # type: ignore[attr-defined]
        return out


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    xf = x.float()
    local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() // x.shape[1]])])
    total = all_reduce_sum(local)
    count = total[-1]
    mean = total[:-1] / count
    centred = xf - mean.view(shape)
    var = all_reduce_sum(centred.square().sum(dims)) / count
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * (count / (count - 1).clamp(min=1))
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return out.to(x.dtype)


_SYNC_CLASSES: dict[type, type] = {}


def _sync_class(cls: type) -> type:
    if cls not in _SYNC_CLASSES:
        _SYNC_CLASSES[cls] = type(f"Sync{cls.__name__}", (_SyncBatchNormMixin, cls), {"__module__": __name__})
    return _SYNC_CLASSES[cls]


def _supported_batchnorm_classes() -> tuple[type, ...]:
    classes: list[type] = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]
    try:
        from timm.layers import BatchNormAct2d

        classes.append(BatchNormAct2d)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(classes)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm layer of ``model`` synchronise its batch statistics over the ranks.

    CUDA: PyTorch's ``nn.SyncBatchNorm`` through timm's converter (which keeps the activation
    of timm's ``BatchNormAct2d``); the model returned replaces ``model``.  CPU: the layers are
    switched in place to a gloo-capable implementation.  Parameters, buffers and ``state_dict``
    keys stay the same, so checkpoints are those of the plain model.
    """
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    supported = _supported_batchnorm_classes()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, _SyncBatchNormMixin):
            if type(module) not in supported:
                raise InputError(
                    f"sync_batchnorm: cannot synchronise {name} ({type(module).__name__}); "
                    "set sync_batchnorm: false"
                )
            module.__class__ = _sync_class(type(module))
    return model


# ------------------------------------------------------------------- launching
def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m simmpnet ARGV`` in ``nproc`` processes on this machine through
    ``torch.distributed.run`` (what ``torchrun --standalone --nproc-per-node N -m simmpnet``
    does); returns the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {nproc}")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "simmpnet"])
    # Set after parsing: torchrun's parser would take options like --nproc for abbreviations of its own.
    args.training_script_args = list(argv)
    try:
        run(args)
    except ChildFailedError as err:
        failures = err.failures
        codes = sorted({f.exitcode for f in failures.values()})
        logger.error("simmpnet: %d of %d training processes failed (exit codes %s)", len(failures), nproc, codes)
        return next((c for c in codes if c > 0), 1)
    return 0
