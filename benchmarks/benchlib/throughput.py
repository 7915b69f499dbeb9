"""Training throughput at paper scale: images/s, step time, peak memory and achieved TFLOP/s of
`paper` (256 px, 9 classes, after the memory warm-up) and of the timm yardstick at the same
batches, for each setting of the step, in one run, interleaved; optionally the authors' network.

- Settings (each one measured on and off against ``bf16``): ``fp32``; ``bf16`` (autocast with the
  default islands, `simmpnet.precision`: the DMW-LA global reads in bf16, the memory reads,
  DS-GIM's scores and the loss in fp32; fused AdamW, as the trainer); ``bf16 foreach-adamw`` (the unfused
  optimiser); ``bf16 channels-last``; ``bf16 compile`` (``torch.compile``, inductor);
  ``bf16 compile cuda-graphs`` (``mode="reduce-overhead"``, CUDA only).  The compiled settings
  run at ``--compile-batches`` only (each batch is a compilation).
- A step of ours is the trainer's: forward, the 15-subset deep-supervision loss, backward, one
  read of the loss, the optimiser step and the memory commit.  The yardstick
  (``maxxvit_rmlp_small_rw_256``, features only, random weights) sums the means of its maps.
- FLOPs are counted once per network and batch with ``torch.utils.flop_counter`` on an fp32
  step in which every scaled-dot-product attention runs as explicit matrix products, so that
  the attention counts on every device (the counter scores CPU SDPA as 0).  "time per FLOP /
  yardstick's" divides our milliseconds per counted FLOP by the yardstick's.
- Peak memory (CUDA): the most allocated during one step above what was allocated before it,
  plus the case's parameters and optimiser state.
- Host syncs: those of one eager fp32 step of ours, counted by :mod:`simmpnet.host_syncs` on
  any device, and on CUDA also by ``torch.cuda.set_sync_debug_mode``.
- ``--authors-repo DIR`` (a clone of vpsg-research/Sim-MPNet outside this repository) adds
  their network's training step at the same batches, as their trainer takes it: fp32,
  ``optim.AdamW``, their powerset loss, ``loss.item()``; their memory after warm-up as
  ``tools/compare_with_authors.py`` sets it.  On CUDA their code runs as published; on the CPU
  with that tool's CPU shims (a dry run).

On the CPU (default batch 2) this is a dry run of the code paths and a CPU figure; the GPU
figures come from ``--device cuda`` (``benchmarks/gpu_session.sh``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .harness import BENCHMARKS, Skip, median_ms, sync, synced, time_interleaved
from .results import Row, fmt

N_CLASSES = 9
SIDE = 256
YARDSTICK = "maxxvit_rmlp_small_rw_256"
REPEATS, WARMUP = 10, 3
GPU_BATCHES, CPU_BATCHES, QUICK_BATCHES = (8, 16, 24), (2,), (1,)


@dataclass(frozen=True)
class Setting:
    amp: torch.dtype | None
    fused: bool = True
    channels_last: bool = False
    compile_mode: str | None = None  # None: eager
    cuda_only: bool = False


SETTINGS = {
    "fp32": Setting(None),
    "bf16": Setting(torch.bfloat16),
    "bf16 foreach-adamw": Setting(torch.bfloat16, fused=False),
    "bf16 channels-last": Setting(torch.bfloat16, channels_last=True),
    "bf16 compile": Setting(torch.bfloat16, compile_mode="default"),
    "bf16 compile cuda-graphs": Setting(torch.bfloat16, compile_mode="reduce-overhead", cuda_only=True),
}
NETWORKS = ("ours", "yardstick")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", nargs="+", type=int,
                        help=f"default {' '.join(map(str, GPU_BATCHES))} on CUDA, {CPU_BATCHES[0]} on the CPU")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        help="default: all that apply to the device, compiled ones only with --compile-batches")
    parser.add_argument("--compile-batches", nargs="*", type=int,
                        help="batches of the compiled settings (default: the largest batch on CUDA, none on the CPU)")
    parser.add_argument("--side", type=int, default=SIDE, help="image side in pixels (multiple of 32)")
    parser.add_argument("--authors-repo", type=Path, help="a clone of the authors' repository: time their step too")


# ----------------------------------------------------------------------------- cases
@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Every ``F.scaled_dot_product_attention`` as matrix products, so that FLOP counters see it."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-2, -1)) * scale
        if attn_mask is not None:
            scores = scores + attn_mask if attn_mask.dtype != torch.bool else scores.masked_fill(~attn_mask, -math.inf)
        return scores.softmax(-1) @ v

    F.scaled_dot_product_attention = math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class Case:
    step: Callable[[], None]
    model: torch.nn.Module
    optimiser: torch.optim.Optimizer


def _prepared(
    model: torch.nn.Module, setting: Setting, device: str, input_shape: tuple[int, ...]
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """``model`` on ``device`` in training mode and the setting's memory format; what the step
    runs (compiled or not), its AdamW and a random input of ``input_shape``."""
    layout = torch.channels_last if setting.channels_last else torch.contiguous_format
    model.to(device).train()
    model.to(memory_format=layout)
    net = torch.compile(model, mode=setting.compile_mode, dynamic=False) if setting.compile_mode else model
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4,
                                  fused=setting.fused, foreach=None if setting.fused else True)
    x = torch.rand(*input_shape, device=device).contiguous(memory_format=layout)
    return net, optimiser, x


def _autocast(setting: Setting, device: str) -> torch.autocast:
    return torch.autocast(device, dtype=setting.amp or torch.float32, enabled=setting.amp is not None)


def ours(batch: int, side: int, setting: Setting, device: str) -> Case:
    from simmpnet import SimMPNet
    from simmpnet.training.losses import DeepSupervisionLoss

    torch.manual_seed(0)
    model = SimMPNet.from_variant("paper", n_classes=N_CLASSES, img_size_a=side, img_size_b=side * 7 // 8)
    model.end_warmup()
    net, optimiser, x = _prepared(model, setting, device, (batch, 1, side, side))
    criterion = DeepSupervisionLoss()
    y = torch.randint(0, N_CLASSES, (batch, side, side), device=device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with _autocast(setting, device):
            loss = criterion(net(x), y)
        loss.backward()
        float(loss.detach())  # the trainer's one read of the loss
        optimiser.step()
        model.commit_memory()

    return Case(step, model, optimiser)


def yardstick(batch: int, side: int, setting: Setting, device: str) -> Case:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(YARDSTICK, pretrained=False, features_only=True, img_size=side)
    net, optimiser, x = _prepared(model, setting, device, (batch, 3, side, side))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with _autocast(setting, device):
            loss = sum(f.float().mean() for f in net(x))
        loss.backward()
        float(loss.detach())
        optimiser.step()

    return Case(step, model, optimiser)


def authors(repo: Path, batch: int, side: int, amp: torch.dtype | None, device: str) -> Case:
    """Their network after warm-up and their trainer's step (fp32 as published; ``amp`` tries autocast)."""
    sys.path.insert(0, str(BENCHMARKS.parent / "tools"))
    import compare_with_authors as tool

    if "lib.networks" not in sys.modules:
        tool.import_authors(repo, device=device)
    theirs_module = sys.modules["lib.networks"]
    if side != SIDE:
        raise ValueError(f"the authors' network is built for {SIDE} px only (asked: {side})")
    with contextlib.redirect_stdout(None):
        theirs = theirs_module.SimMPNet(n_class=N_CLASSES, img_size_s1=(side, side),
                                        img_size_s2=(side * 7 // 8, side * 7 // 8), model_scale="small")
    ours_model = ours(1, side, SETTINGS["fp32"], "cpu").model  # their memory state is drawn from ours
    pairs = tool.dmwla_pairs(ours_model, theirs)
    tool.draw_memory(pairs, seed=0, dtype=torch.float32)
    tool.set_memory(pairs, theirs, "after")
    theirs.to(device)
    for block in (m for m in theirs.modules() if hasattr(m, "phi_k")):
        block.phi_k[0].to(device)  # a conv in a plain list: not moved by .to()
        block.concept_pool = block.concept_pool.to(device)
        block.concept_proto = block.concept_proto.to(device)
    theirs.train()
    optimiser = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-4)
    utils = sys.modules["utils.utils"]
    x = torch.rand(batch, 1, side, side, device=device)
    y = torch.randint(0, N_CLASSES, (batch, side, side), device=device)
    ce, dice = torch.nn.CrossEntropyLoss(), utils.DiceLoss(N_CLASSES)
    subsets = [s for s in utils.powerset([0, 1, 2, 3]) if s]

    def step() -> None:
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            heads = theirs(x)
        loss = 0.0
        for subset in subsets:
            summed = sum(heads[i].float() for i in subset)
            loss = loss + 0.3 * ce(summed, y.long()) + 0.7 * dice(summed, y, softmax=True)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        loss.item()  # their loop reads it for W-LD

    return Case(step, theirs, optimiser)


def count_flops(case: Case) -> float:
    """FLOPs of one step of ``case`` (attention as explicit products), by the formulas of
    ``torch.utils.flop_counter`` (its ``FlopCounterMode`` also tracks modules, which fails on
    the authors' network: it builds modules inside ``forward``)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    with explicit_attention(), Counter():
        case.step()
    return float(Counter.total)


def state_bytes(case: Case) -> int:
    tensors = list(case.model.parameters()) + [
        t for state in case.optimiser.state.values() for t in state.values() if isinstance(t, torch.Tensor)
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_memory_gib(case: Case, device: str) -> float | None:
    if device != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    case.step()
    sync(device)
    return (torch.cuda.max_memory_allocated() - before + state_bytes(case)) / 2**30


def host_syncs(case: Case, device: str) -> dict[str, int]:
    from simmpnet.host_syncs import count_host_syncs

    with count_host_syncs() as counted:
        case.step()
    figures = {"host syncs (dispatch count)": counted.total}
    if device == "cuda":
        from .cuda import count_syncs

        figures["host syncs (CUDA sync debug)"] = sum(count_syncs(case.step).values())
    return figures


# ----------------------------------------------------------------------------- run
def plan(args: argparse.Namespace) -> tuple[list[int], list[str], list[int]]:
    cuda = args.device == "cuda"
    batches = args.batches or list(QUICK_BATCHES if args.quick else GPU_BATCHES if cuda else CPU_BATCHES)
    compile_batches = args.compile_batches if args.compile_batches is not None else ([max(batches)] if cuda else [])
    settings = args.settings or [
        name for name, s in SETTINGS.items()
        if (cuda or not s.cuda_only) and (s.compile_mode is None or compile_batches)
    ]
    return batches, settings, compile_batches


def run(args: argparse.Namespace) -> list[Row]:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("--device cuda needs a CUDA GPU and torch sees none")
    # --quick shrinks the side, except for the authors' network, which is built for 256 px only
    side = 64 if args.quick and args.authors_repo is None else args.side
    batches, settings, compile_batches = plan(args)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    builders: dict[str, Callable[[int, Setting], Case]] = {
        "ours": lambda b, s: ours(b, side, s, device),
        "yardstick": lambda b, s: yardstick(b, side, s, device),
    }
    rows: list[Row] = []
    failed: set[str] = set()

    def attempt(name: str, fn: Callable[[], object]) -> object | None:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - recorded as a failed case; the others still run
            traceback.print_exc()
            failed.add(name)
            rows.append(Row("failures", name, "passed", "no"))
            return None

    for batch in batches:
        cases: dict[str, Case] = {}
        flops: dict[str, float] = {}
        for network, build in builders.items():
            for setting in settings:
                spec = SETTINGS[setting]
                if spec.cuda_only and device != "cuda":
                    continue
                if spec.compile_mode and batch not in compile_batches:
                    continue
                name = f"{network} {setting}"
                case = attempt(name, lambda: build(batch, spec))
                if case is not None:
                    cases[name] = case
            eager = cases.get(f"{network} fp32")
            counted = attempt(f"{network} FLOP count", lambda: count_flops(eager or build(batch, SETTINGS["fp32"])))
            if counted is not None:
                flops[network] = counted
        if args.authors_repo is not None:
            for label, amp in (("authors fp32", None), ("authors bf16", torch.bfloat16)):
                case = attempt(label, lambda amp=amp: authors(args.authors_repo, batch, side, amp, device))
                if case is not None:
                    cases[label] = case
            reference = cases.get("authors fp32")
            counted = attempt("authors FLOP count", lambda: count_flops(reference)) if reference else None
            if counted is not None:
                flops["authors"] = counted

        timed = {name: synced(case.step, device) for name, case in cases.items()}
        print(f"  B={batch}: timing {len(timed)} cases, {args.repeats} rounds ...", flush=True)
        try:
            times = time_interleaved(timed, args.repeats, args.warmup)
        except Exception:  # noqa: BLE001 - one case failing mid-run: time the rest one by one
            traceback.print_exc()
            times = {}
            for name, fn in timed.items():
                result = attempt(name, lambda fn=fn: time_interleaved({name: fn}, args.repeats, args.warmup)[name])
                if result is not None:
                    times[name] = result
        label = f"B={batch}, {side} px"
        for name, samples in times.items():
            network, setting = name.split(" ", 1)
            ms = median_ms(samples)
            case_label = f"{network} {setting}, {label}"
            rows += [
                Row("throughput", case_label, "step", fmt(ms), "ms"),
                Row("throughput", case_label, "images/s", fmt(batch / ms * 1e3), "img/s"),
            ]
            if network in flops:
                rows.append(Row("throughput", case_label, "achieved", fmt(flops[network] / ms / 1e9), "TFLOP/s"))
            peak = attempt(f"{name} peak memory", lambda case=cases[name]: peak_memory_gib(case, device))
            if peak is not None:
                rows.append(Row("throughput", case_label, "peak memory", fmt(peak), "GiB"))
            yard = times.get(f"yardstick {setting}")
            if network == "ours" and yard and {"ours", "yardstick"} <= flops.keys():
                per_flop = (ms / flops["ours"]) / (median_ms(yard) / flops["yardstick"])
                rows.append(Row("per FLOP", f"{setting}, {label}", "ours / yardstick, time per FLOP", fmt(per_flop), "ratio"))
            theirs = times.get("authors fp32")
            if network == "ours" and theirs:
                rows.append(Row("authors", f"{setting}, {label}", "our images/s / authors' fp32",
                                fmt(median_ms(theirs) / ms), "ratio"))
        for network, count in flops.items():
            rows.append(Row("flops", f"{network}, {label}", "training step", fmt(count / 1e9), "GFLOP"))
        if "ours fp32" in cases:
            syncs = attempt("ours host syncs", lambda: host_syncs(cases["ours fp32"], device)) or {}
            rows += [Row("flops", f"ours, {label}", metric, fmt(n)) for metric, n in syncs.items()]
        cases.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows
