"""The numeric precision of a forward: of inference (``fp32``, ``bf16`` or ``auto``), and of
Sim-MPNet's fp32 islands under bf16 autocast (docs/method.md, "Mixed precision: the fp32
islands").

Under autocast some parts of Sim-MPNet run in fp32 whatever the surrounding precision, the
*fp32 islands*: the DMW-LA reads (global and memory), DS-GIM's window scores, and in training
the loss and the memory update.  The one island that makes no choice, DMW-LA's global read,
can also run in bf16: its modules derive from `PrecisionIslands`, and their
``island_precision`` says how it computes under bf16 (``"bf16"``, the default: bf16 inputs into
an attention kernel that keeps the logits and their softmax in fp32; ``"fp32"``: all islands
as in a full-precision network, docs/method.md).  Nothing changes for fp32, fp64 or fp16
inputs.  The other islands stay in fp32 always.

torch is imported by the functions that use it: the command line lists `PRECISIONS` without
importing it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ISLAND_PRECISIONS",
    "PRECISIONS",
    "PrecisionIslands",
    "attention_kernel_races",
    "bf16_native",
    "check_precision",
    "inference_precision",
    "race_free_attention",
    "resolve_precision",
    "set_island_precision",
]

#: What ``--precision`` and ``precision=`` accept: fp32, bf16 autocast, or bf16 where the device
#: has bf16 units.
PRECISIONS = ("fp32", "bf16", "auto")

#: How the fp32 islands compute under bf16 autocast (`PrecisionIslands`).
ISLAND_PRECISIONS = ("fp32", "bf16")


class PrecisionIslands:
    """Base of the modules whose fp32 island can also run in bf16.

    ``island_precision`` (``"bf16"``, the default, or ``"fp32"``) only matters for bf16 inputs:
    with ``"bf16"`` the island runs in bf16 where it makes no choice (the DMW-LA global read),
    with ``"fp32"`` every island computes as in a full-precision network.  It is not state (not
    saved): `set_island_precision` sets it on every such module of a model.
    """

    island_precision: str = "bf16"


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InputError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def check_precision(precision: str) -> str:
    """``precision`` when it is one of `PRECISIONS`; an `InputError` naming them otherwise."""
    return _check(precision, PRECISIONS, "precision")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that torch says supports it, or a
    CPU with bf16 instructions (AVX512-BF16 or AMX).  Elsewhere bf16 is emulated, and slower than
    fp32."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


#: Whether this CPU has AMX tiles (torch's probe, read once; `_cpu_has_amx_tiles`).
_AMX_TILES: bool | None = None


def _cpu_has_amx_tiles() -> bool:
    global _AMX_TILES
    if _AMX_TILES is None:
        import torch

        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
        # A torch without the probe: assume tiles, the side that cannot crash.
        _AMX_TILES = True if probe is None else bool(probe())
    return _AMX_TILES


def attention_kernel_races(x: torch.Tensor) -> bool:
    """Whether a forward on ``x`` would run torch's fused bf16/fp16 attention kernel on a CPU
    with AMX tiles.  There that kernel packs its operands for oneDNN's brgemm micro-kernel and
    every thread sets up the same shared micro-kernel object at once: the race can fault or
    corrupt memory and end the process (pytorch/pytorch#187912, uxlfoundation/oneDNN#5393).
    Sim-MPNet's DMW-LA global reads (bf16 island) and MaxViT's attention at 256 px are long
    enough to take that path."""
    import torch

    if x.device.type != "cpu":
        return False
    reduced = (torch.bfloat16, torch.float16)
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in reduced
    return (x.dtype in reduced or autocast) and _cpu_has_amx_tiles()


@contextmanager
def race_free_attention(x: torch.Tensor) -> Iterator[None]:
    """Run the ``scaled_dot_product_attention`` calls inside (and so their backward) on torch's
    math kernel where the fused one races (`attention_kernel_races`); change nothing elsewhere.
    The math kernel computes a bf16 attention in fp32 from the bf16 inputs, as the fp32 island
    does."""
    if not attention_kernel_races(x):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` itself, or for ``"auto"`` bf16 where ``device``
    has bf16 units (`bf16_native`) and fp32 elsewhere."""
    import torch

    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_native(torch.device(device)) else "fp32"


def set_island_precision(model: nn.Module, precision: str) -> None:
    """Set ``island_precision`` (one of `ISLAND_PRECISIONS`) on every `PrecisionIslands`
    module of ``model``; models without islands are left as they are."""
    _check(precision, ISLAND_PRECISIONS, "island precision")
    for module in model.modules():
        if isinstance(module, PrecisionIslands):
            module.island_precision = precision


@contextmanager
def inference_precision(
    model: nn.Module, device: torch.device | str, precision: str, islands: str = "bf16"
) -> Iterator[None]:
    """Run the forwards inside in ``precision`` (``"fp32"`` or ``"bf16"``, resolved).

    ``"fp32"`` changes nothing.  ``"bf16"``: bf16 autocast on ``device``, the model's islands
    in ``islands`` (`set_island_precision`; restored on exit): ``"bf16"`` (default) the global
    reads in bf16, ``"fp32"`` all islands in fp32 (docs/method.md, "Mixed precision").  The
    logits then come out in bf16: callers take the softmax and argmax of their fp32 copy.
    """
    import torch

    _check(precision, ISLAND_PRECISIONS, "inference precision (resolved)")
    if precision == "fp32":
        yield
        return
    saved = [(m, m.island_precision) for m in model.modules() if isinstance(m, PrecisionIslands)]
    set_island_precision(model, islands)
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            yield
    finally:
        for module, previous in saved:
            module.island_precision = previous
