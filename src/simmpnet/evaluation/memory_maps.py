"""What the memory of a trained Sim-MPNet is read for: prototype-assignment maps and slot usage.

After warm-up, every position of a DMW-LA block reads the memory block of one category: the
category whose prototype has the highest cosine similarity with the position's ``theta``
query (`simmpnet.models.memory.PrototypeMemory.assign`).  Within that block, the read
weighs the ``P`` slots by the softmax of ``query . slot``; the slot with the highest weight
is the one the position reads most.

`MemoryProbe` records both during ordinary evaluation forwards, from outside the
model: a forward hook on each chosen block's ``theta`` projection takes the queries the read
sees and asks the block's own memory for their categories.  The model is never changed: the
hooks only read, and they are removed when the probe closes.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["MemoryProbe", "block_names"]


def block_names(model: nn.Module) -> list[str]:
    """Names of the DMW-LA blocks of a Sim-MPNet, in `dmwla_blocks`
    order: ``"encoder 1"`` (encoder B, shallow to deep), ..., ``"decoder 1"`` (deep to shallow), ...

    Raises:
        InputError: ``model`` has no DMW-LA blocks (e.g. the U-Net baseline).
    """
    if not hasattr(model, "dmwla_blocks"):
        raise InputError(f"{type(model).__name__} has no prototype memory (only Sim-MPNet has DMW-LA blocks)")
    encoder = len(model.dmwla_blocks("encoder"))
    decoder = len(model.dmwla_blocks("decoder"))
    return [f"encoder {i + 1}" for i in range(encoder)] + [f"decoder {i + 1}" for i in range(decoder)]


class MemoryProbe:
    """Records, for chosen DMW-LA blocks, the category each position reads and how often each
    slot is the one it reads most.

    Args:
        model: a Sim-MPNet (any mode; evaluation forwards are what a report probes).
        blocks: indices into ``model.dmwla_blocks()`` (see `block_names`); default all.

    Use as a context manager around forwards::

        with MemoryProbe(model) as probe:
            model(x)                      # x: (B, C, H, W)
        probe.maps["encoder 1"]           # list of (B, h, w) int64 arrays, one per forward
        probe.slot_counts["encoder 1"]    # (num_k, P) int64: positions whose top slot it is

    A block still in warm-up reads no memory: it is skipped with a log message and has no
    entry.  ``maps`` holds one array per forward of the probed model, in order, so that the
    maps of consecutive batches concatenate to the maps of every slice.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[int] | None = None) -> None:
        names = block_names(model)
        all_blocks = model.dmwla_blocks()
        chosen = list(range(len(all_blocks))) if blocks is None else [int(b) for b in blocks]
        bad = [b for b in chosen if not 0 <= b < len(all_blocks)]
        if bad:
            raise InputError(f"DMW-LA block index {bad} out of range: the model has {len(all_blocks)} blocks")
        self.blocks: dict[str, Any] = {}
        for index in chosen:
            block = all_blocks[index]
            if block.in_warmup:
                logger.info("%s is still in warm-up: it reads no memory, no map", names[index])
                continue
            self.blocks[names[index]] = block
        self.maps: dict[str, list[np.ndarray]] = {name: [] for name in self.blocks}
        self.slot_counts: dict[str, np.ndarray] = {
            name: np.zeros((b.memory.num_k, b.memory.pool_size), dtype=np.int64) for name, b in self.blocks.items()
        }
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> MemoryProbe:
        for name, block in self.blocks.items():
            self._handles.append(block.theta.register_forward_hook(self._hook(name, block)))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks (the model is as it was before the probe)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str, block: nn.Module):
        memory = block.memory

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            b, d, h, w = output.shape
            queries = output.detach().flatten(2).transpose(1, 2).reshape(-1, d)  # (B*h*w, d), as the read
            category = memory.assign(queries)
            self.maps[name].append(category.view(b, h, w).cpu().numpy())
            self.slot_counts[name] += _top_slot_counts(memory, queries, category)

        return record

    def concatenated(self) -> dict[str, np.ndarray]:
        """The maps of every forward so far, ``(N, h, w)`` per block (N: all samples)."""
        return {name: np.concatenate(maps) for name, maps in self.maps.items() if maps}

    def reset(self) -> None:
        """Forget the maps (for the next case); the slot counts keep adding up."""
        for maps in self.maps.values():
            maps.clear()


@torch.no_grad()
def _top_slot_counts(memory: Any, queries: torch.Tensor, category: torch.Tensor) -> np.ndarray:
    """``(num_k, P)``: for each category, how many of its queries weigh each slot highest in
    the read (the argmax of ``query . slot`` over the category's ``P`` slots)."""
    num_k, pool = memory.num_k, memory.pool_size
    dtype = torch.promote_types(queries.dtype, torch.float32)
    blocks = memory.bank.to(dtype).view(-1, num_k, pool)  # (d, num_k, P)
    queries = queries.to(dtype)
    counts = np.zeros((num_k, pool), dtype=np.int64)
    for c in range(num_k):  # a few categories; scoring every row against every block costs num_k times more
        rows = queries[category == c]
        if rows.shape[0]:
            top = (rows @ blocks[:, c]).argmax(1)
            counts[c] = torch.bincount(top, minlength=pool).cpu().numpy()
    return counts
