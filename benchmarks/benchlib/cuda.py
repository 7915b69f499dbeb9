"""Checks and timings on a CUDA GPU (skipped where torch sees none; ``--device cpu`` runs the
same code on the CPU as a dry run of its code paths, whose figures are not GPU figures).

Checks, each recorded as passed yes / no with its figures (a failed check does not stop the
others; the command exits 1 after writing the rows):
- parity: `tiny` after warm-up gives the same eval logits on the CPU and the GPU (TF32 off);
- purity: an eval forward on the GPU leaves every parameter and buffer unchanged, and the
  same input gives the same output twice, in fp32, bf16 and fp16 autocast;
- training: 30 steps of `tiny` on one fixed batch (the paper's deep-supervision loss, AdamW,
  the memory commit after each step, warm-up ending at step 10) lower the loss under fp32,
  bf16 and fp16 (with gradient scaling), and the memory banks stay finite; the host
  synchronisations of one training step after warm-up are counted, by source line, with
  ``torch.cuda.set_sync_debug_mode``;
- trained network (with ``--checkpoint``, e.g. the ``last.pt`` of ``make demo``, and its data
  ``--data``): the held-out slices predicted under bf16 and fp16 autocast are finite and carry
  the fp32 labels on at least 99 % of the pixels.  A trained network's activations are far
  larger than a fresh one's, so this catches fp16 overflows that the fresh networks above
  never reach;
- timings (medians of interleaved rounds after warm-up runs, each run followed by a wait for
  the GPU; TF32 on): training step and batch-1 eval forward of `tiny` and `paper`, fp32 against
  bf16.
"""
from __future__ import annotations

import argparse
import collections
import copy
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simmpnet import SimMPNet
from simmpnet.training.losses import DeepSupervisionLoss
from simmpnet.loading import load_trained_model

from .harness import Skip, held_out_volumes, median_ms, synced, time_interleaved
from .results import Row, fmt

N_CLASSES = 9
REPEATS, WARMUP = 15, 3
DEVICE = "cuda"
AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Sizes:
    """Batch, side and step counts of the checks; ``--quick`` shrinks them to test the code."""

    def __init__(self, quick: bool) -> None:
        self.side = 64 if quick else 128
        self.parity_batch, self.purity_batch, self.train_batch = (1, 1, 2) if quick else (2, 4, 8)
        self.steps, self.warmup_end = (6, 2) if quick else (30, 10)
        self.timing_cases = ["tiny:2:64"] if quick else ["tiny:8:128", "tiny:32:128", "paper:20:256"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the code paths")
    parser.add_argument("--amps", nargs="+", choices=list(AMP), default=list(AMP),
                        help="precisions of the purity and training checks (default all three)")
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument("--timing-cases", nargs="+", metavar="VARIANT:BATCH:SIDE",
                        help="networks and batches to time (default tiny:8:128 tiny:32:128 paper:20:256)")
    parser.add_argument("--checkpoint", type=Path, help="a trained network (e.g. runs/demo/last.pt) to check under autocast")
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"), help="its data (Synapse layout)")


def built(variant: str, side: int, seed: int = 0, warm: bool = True) -> SimMPNet:
    torch.manual_seed(seed)
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES, img_size_a=side, img_size_b=side * 7 // 8)
    if warm:
        model.end_warmup()
    return model


def batch(size: int, side: int, device: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images and a label map that depends on them, so that a network can learn it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(size, 1, side, side, generator=g), 9, 1, 4)
    y = torch.bucketize(x[:, 0], torch.linspace(-0.25, 0.25, N_CLASSES - 1))
    return x.to(device), y.to(device)


def autocast(dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on the checked device; ``None``: plain fp32."""
    return torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None)


def training_step(
    model: SimMPNet, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None = None,
) -> Callable[[], torch.Tensor]:
    """One step as the trainer takes it: forward under ``dtype``, the 15-subset loss in fp32,
    backward (through ``scaler`` for fp16), AdamW, the memory commit.  Returns the loss."""
    criterion = DeepSupervisionLoss()
    scaler = scaler or torch.amp.GradScaler(DEVICE, enabled=False)

    def step() -> torch.Tensor:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        with autocast(dtype):
            heads = model(x)
        loss = criterion([h.float() for h in heads], y)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        model.commit_memory()
        return loss.detach()

    return step


# ----------------------------------------------------------------------------- checks
def parity(sizes: Sizes) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu = built("tiny", sizes.side).eval()
    gpu = copy.deepcopy(cpu).to(DEVICE).eval()
    x, _ = batch(sizes.parity_batch, sizes.side, "cpu")
    with torch.no_grad():
        ref, out = cpu(x), gpu(x.to(DEVICE)).cpu()
    diff = (ref - out).abs().max().item()
    scale = ref.abs().max().item()
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    return {"ok": diff <= 1e-3 * scale, "max abs diff": diff, "max abs logit": scale, "argmax agreement": agree}


def purity(sizes: Sizes, amps: list[str]) -> dict[str, Any]:
    model = built("tiny", sizes.side).to(DEVICE).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = batch(sizes.purity_batch, sizes.side, DEVICE)
    figures: dict[str, Any] = {"ok": True}
    for amp in amps:
        with torch.no_grad(), autocast(AMP[amp]):
            first, second = model(x), model(x)
        same = torch.equal(first, second)
        finite = bool(torch.isfinite(first).all())
        figures[f"{amp} same output twice"] = same
        figures[f"{amp} finite"] = finite
        figures["ok"] &= same and finite
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    figures["changed state tensors"] = len(changed)
    figures["ok"] &= not changed
    return figures


def trained_network(checkpoint: Path, data: Path) -> dict[str, Any]:
    model, size, _ = load_trained_model(checkpoint, DEVICE)
    x = torch.from_numpy(np.concatenate(held_out_volumes(data, size))).to(DEVICE)
    figures: dict[str, Any] = {"ok": True, "slices": len(x)}
    with torch.no_grad():
        reference = model(x).argmax(1)
        for amp in ("bf16", "fp16"):
            with autocast(AMP[amp]):
                logits = model(x)
            finite = bool(torch.isfinite(logits).all())
            agreement = (logits.argmax(1) == reference).float().mean().item()
            figures[f"{amp} finite"] = finite
            figures[f"{amp} label agreement with fp32"] = round(agreement, 5)
            figures["ok"] &= finite and agreement >= 0.99
    return figures


def count_syncs(step: Callable[[], object]) -> dict[str, int]:
    """Host synchronisations of one call of ``step``, by the source line that caused them."""
    if DEVICE != "cuda":
        step()
        return {}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )
    return dict(where.most_common())


def train_steps(amp: str, sizes: Sizes) -> dict[str, Any]:
    dtype = AMP[amp]
    model = built("tiny", sizes.side, warm=False).to(DEVICE).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(DEVICE, enabled=amp == "fp16")
    x, y = batch(sizes.train_batch, sizes.side, DEVICE)
    step = training_step(model, optimiser, x, y, dtype, scaler)
    losses: list[torch.Tensor] = []
    for i in range(sizes.steps):
        if i == sizes.warmup_end:
            model.end_warmup()
        losses.append(step())
    syncs = count_syncs(lambda: losses.append(step()))
    values = [v.item() for v in losses]
    banks_finite = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    return {
        "ok": values[-1] < 0.8 * values[0] and banks_finite,
        "loss first": values[0], "loss last": values[-1], "state finite": banks_finite,
        "syncs in one step": sum(syncs.values()), **{f"syncs at {where}": n for where, n in syncs.items()},
    }


# ----------------------------------------------------------------------------- timings
def time_network(variant: str, size: int, side: int, repeats: int, warmup: int) -> list[tuple[str, float, str]]:
    """(metric, value, unit): median milliseconds of the training step and the batch-1 eval
    forward, fp32 and bf16, interleaved; peak GPU memory."""
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = built(variant, side).to(DEVICE)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=DEVICE == "cuda")
    x, y = batch(size, side, DEVICE)
    x1 = x[:1].contiguous()

    def eval_forward(dtype: torch.dtype | None) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            model.eval()
            with autocast(dtype):
                model(x1)

        return run

    runs = {
        "train step fp32": training_step(model, optimiser, x, y, AMP["fp32"]),
        "train step bf16": training_step(model, optimiser, x, y, AMP["bf16"]),
        "eval forward B=1 fp32": eval_forward(AMP["fp32"]),
        "eval forward B=1 bf16": eval_forward(AMP["bf16"]),
    }
    times = time_interleaved({name: synced(fn, DEVICE) for name, fn in runs.items()}, repeats, warmup)
    figures = [(name, median_ms(samples), "ms") for name, samples in times.items()]
    if DEVICE == "cuda":
        figures.append(("peak GPU memory", torch.cuda.max_memory_allocated() / 2**30, "GiB"))
    return figures


# ----------------------------------------------------------------------------- run
def check(rows: list[Row], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one check and add its rows; a failure is recorded, the other checks still run."""
    started = time.perf_counter()
    try:
        figures = fn()
        ok = bool(figures.pop("ok", True))
    except Exception:  # noqa: BLE001 - the rows say that it failed, the traceback is printed
        traceback.print_exc()
        figures, ok = {}, False
    seconds = time.perf_counter() - started
    rows.append(Row("checks", name, "passed", fmt(ok)))
    rows += [Row("checks", name, metric, fmt(value)) for metric, value in figures.items()]
    rows.append(Row("checks", name, "seconds", fmt(seconds), "s"))
    print(f"  [{'ok' if ok else 'FAILED'}] {name}: {figures}", flush=True)


def run(args: argparse.Namespace) -> list[Row]:
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise Skip("needs a CUDA GPU and torch sees none (--device cpu runs the code on the CPU as a dry run)")
    sizes = Sizes(args.quick)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        return _checks_and_timings(args, sizes)
    finally:  # the checks set TF32 for themselves; the calling process keeps its own setting
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _checks_and_timings(args: argparse.Namespace, sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    check(rows, "parity_cpu_cuda", lambda: parity(sizes))
    check(rows, "inference_leaves_model_unchanged", lambda: purity(sizes, args.amps))
    for amp in args.amps:
        check(rows, f"train_{amp}", lambda amp=amp: train_steps(amp, sizes))
    if args.checkpoint is not None:
        check(rows, "trained_network_under_autocast", lambda: trained_network(args.checkpoint, args.data))
    if not args.skip_timings:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        for case in args.timing_cases or sizes.timing_cases:
            variant, size, side = case.split(":")
            label = f"{variant}, B={size}, {side} px"
            try:
                figures = time_network(variant, int(size), int(side), args.repeats, args.warmup)
            except Exception:  # noqa: BLE001 - as a check: recorded, the other cases still run
                traceback.print_exc()
                rows.append(Row("timings", label, "passed", "no"))
                continue
            rows += [Row("timings", label, metric, fmt(value), unit) for metric, value, unit in figures]
            print(f"  timings {label}: {figures}", flush=True)
    return rows
