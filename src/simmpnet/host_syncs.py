"""Count the operations that make the host wait for an accelerator.

On a GPU, PyTorch queues kernels and returns at once; the host runs ahead and keeps the launch
queue full.  An operation whose result the host must see (a tensor read as a Python number, an
output whose size depends on the data) waits until every queued kernel has run, and the GPU then
idles while the host queues the next ones.  `count_host_syncs` counts those operations on
any device, the CPU included, so that a sync added to the training step or the forward is caught
by a CPU test before it costs time on a GPU.

What is counted, by ATen operator (what the dispatcher sees at the top level):

* ``_local_scalar_dense``: ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``;
* outputs sized by the data: ``nonzero``, ``masked_select``, ``unique``, ``bincount`` (its length
  is ``max + 1``), ``repeat_interleave`` with tensor repeats and no ``output_size``, indexing or
  ``index_put_`` with a boolean mask, ``equal``, ``allclose``;
* copies from an accelerator to the host (``.cpu()``, ``.to("cpu")``); on a CPU-only run there are
  none to see, and ``.tolist()`` / ``.numpy()`` of a CPU tensor do not reach the dispatcher.

On CUDA, `torch.cuda.set_sync_debug_mode` reports the syncs the driver sees; the benchmark
command uses both.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "count_host_syncs"]

_ALWAYS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",
    "aten::equal",
    "aten::allclose",
    "aten::is_nonzero",
}


def _has_bool_index(indices: Any) -> bool:
    return any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
        for index in (indices or ())
    )


def _leaves_accelerator(args: tuple, kwargs: dict) -> bool:
    """A copy whose source is on an accelerator and whose destination is the host."""
    source = args[0] if args else None
    if not isinstance(source, torch.Tensor) or source.device.type in ("cpu", "meta"):
        return False
    device = kwargs.get("device")
    return device is not None and torch.device(device).type == "cpu"


def _syncs(name: str, overload: str, args: tuple, kwargs: dict) -> bool:
    if name in _ALWAYS:
        return True
    if name == "aten::repeat_interleave":
        # Tensor repeats: the output length is their sum, unless output_size gives it.
        overload_takes_tensor_repeats = overload in ("Tensor", "self_Tensor")
        return overload_takes_tensor_repeats and kwargs.get("output_size") is None
    if name == "aten::index":
        return _has_bool_index(args[1] if len(args) > 1 else None)
    if name in ("aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        return _has_bool_index(args[1] if len(args) > 1 else None)
    if name == "aten::_to_copy":
        return _leaves_accelerator(args, kwargs)
    if name == "aten::copy_":
        destination, source = args[0], args[1]
        return (
            isinstance(source, torch.Tensor)
            and source.device.type not in ("cpu", "meta")
            and destination.device.type == "cpu"
        )
    return False


class HostSyncCounter(TorchDispatchMode):
    """A dispatch mode that counts host-syncing operators by name (see the module docstring).

    ``counts`` maps ``"aten::name"`` to how often it ran; ``total`` is their sum.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        kwargs = kwargs or {}
        name = func._schema.name
        if _syncs(name, func._schema.overload_name, args, kwargs):
            self.counts[name] += 1
        return func(*args, **kwargs)


@contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Count the host-syncing operators run inside the ``with`` block.

    Example::

        with count_host_syncs() as syncs:
            model(x)
        assert syncs.total == 0, dict(syncs.counts)  # e.g. {"nonzero": 2}
    """
    counter = HostSyncCounter()
    with counter:
        yield counter
