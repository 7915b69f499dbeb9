"""Checks and timings on a CUDA GPU (CI has none: run this where one is).

    python benchmarks/check_cuda.py [--out DIR] [--skip-timings] [--checkpoint runs/demo/last.pt [--data DIR]]

Checks, each reported as ok / FAILED with its figures (the script carries on after a failure):
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
  larger than a fresh one's (DMW-LA read logits of about 5e5 in the demo network), so this
  catches fp16 overflows that the fresh networks above never reach;
- timings (medians of 15 interleaved rounds after 3 warm-up runs, each run followed by a wait
  for the GPU): training step and batch-1 eval forward of `tiny` and `paper`, fp32 against
  bf16, and the training step with DMW-LA's finiteness check of the memory update (one host
  sync per block) against the same step without it.
Results are printed and written to ``OUT/check_cuda.json``.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import held_out_volumes, median_ms, time_interleaved
from simmpnet import SimMPNet
from simmpnet.data.io import atomic_write
from simmpnet.models.dmwla import DMWLA
from simmpnet.training.losses import DeepSupervisionLoss
from simmpnet.training.trainer import load_trained_model

N_CLASSES = 9
DEVICE = "cuda"  # --device cpu: a dry run of this script's code paths where no GPU is
RESULTS: dict[str, Any] = {}
AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one check; record its figures and whether it passed, never stop the script."""
    started = time.perf_counter()
    try:
        figures = fn()
        ok = bool(figures.pop("ok", True))
    except Exception:  # noqa: BLE001 - the report names the failure, the other checks still run
        figures, ok = {"error": traceback.format_exc(limit=6)}, False
    figures["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS[name] = {"ok": ok, **figures}
    print(f"[{'ok' if ok else 'FAILED'}] {name}: {json.dumps(figures)}", flush=True)


def built(variant: str, seed: int = 0, warm: bool = True) -> SimMPNet:
    torch.manual_seed(seed)
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES)
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


def parity() -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu = built("tiny").eval()
    gpu = copy.deepcopy(cpu).to(DEVICE).eval()
    x, _ = batch(2, 128, "cpu")
    with torch.no_grad():
        ref, out = cpu(x), gpu(x.to(DEVICE)).cpu()
    diff = (ref - out).abs().max().item()
    scale = ref.abs().max().item()
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    return {"ok": diff <= 1e-3 * scale, "max_abs_diff": diff, "max_abs_logit": scale, "argmax_agreement": agree}


def purity() -> dict[str, Any]:
    model = built("tiny").to(DEVICE).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, _ = batch(4, 128, DEVICE)
    figures: dict[str, Any] = {"ok": True}
    for amp, dtype in AMP.items():
        with torch.no_grad(), autocast(dtype):
            first, second = model(x), model(x)
        same = torch.equal(first, second)
        finite = bool(torch.isfinite(first).all())
        figures[f"{amp}_same_output_twice"] = same
        figures[f"{amp}_finite"] = finite
        figures["ok"] &= same and finite
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    figures["changed_state"] = changed[:5]
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
            figures[f"{amp}_finite"] = finite
            figures[f"{amp}_label_agreement_with_fp32"] = round(agreement, 5)
            figures["ok"] &= finite and agreement >= 0.99
    return figures


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


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


def train_steps(amp: str) -> dict[str, Any]:
    dtype = AMP[amp]
    model = built("tiny", warm=False).to(DEVICE).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(DEVICE, enabled=amp == "fp16")
    x, y = batch(8, 128, DEVICE)
    step = training_step(model, optimiser, x, y, dtype, scaler)
    losses: list[torch.Tensor] = []
    for i in range(30):
        if i == 10:
            model.end_warmup()
        losses.append(step())
    syncs = count_syncs(lambda: losses.append(step()))
    values = [v.item() for v in losses]
    banks_finite = all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    return {
        "ok": values[-1] < 0.8 * values[0] and banks_finite,
        "loss_first": round(values[0], 4), "loss_last": round(values[-1], 4),
        "state_finite": banks_finite, "syncs_in_one_step": sum(syncs.values()), "sync_sources": syncs,
    }


def synced(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` followed by a wait for the GPU, so that a wall-clock time covers its kernels."""

    def run() -> None:
        fn()
        synchronize()

    return run


def without_finiteness_check(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` with DMW-LA's finiteness check of the memory update (one host sync per block) off."""
    original = DMWLA.__dict__["_finite"]  # the staticmethod itself, not its function

    def run() -> None:
        DMWLA._finite = staticmethod(lambda candidates: True)
        try:
            fn()
        finally:
            DMWLA._finite = original

    return run


def time_network(variant: str, size: int, side: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of the training step and the batch-1 eval forward, fp32 and bf16,
    and of the fp32 step without the finiteness check, interleaved; peak GPU memory."""
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = built(variant).to(DEVICE)
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
        "train_step_fp32": training_step(model, optimiser, x, y, AMP["fp32"]),
        "train_step_bf16": training_step(model, optimiser, x, y, AMP["bf16"]),
        "train_step_fp32_without_finiteness_check": without_finiteness_check(
            training_step(model, optimiser, x, y, AMP["fp32"])
        ),
        "eval_forward_B1_fp32": eval_forward(AMP["fp32"]),
        "eval_forward_B1_bf16": eval_forward(AMP["bf16"]),
    }
    times = time_interleaved({name: synced(fn) for name, fn in runs.items()}, repeats, warmup=3)
    figures = {f"{name}_ms": round(median_ms(samples), 2) for name, samples in times.items()}
    if DEVICE == "cuda":
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def timings(cases: list[tuple[str, int, int]], repeats: int = 15) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {
        f"{variant}_B{size}_{side}px": time_network(variant, size, side, repeats) for variant, size, side in cases
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".", help="folder for check_cuda.json")
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument(
        "--timing-cases", nargs="+", default=["tiny:8:128", "tiny:32:128", "paper:20:256"],
        metavar="VARIANT:BATCH:SIDE", help="networks and batches to time",
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the code paths")
    parser.add_argument("--checkpoint", type=Path, help="a trained network (e.g. runs/demo/last.pt) to check under autocast")
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"), help="its data (Synapse layout)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check_cuda.py needs a CUDA GPU; torch sees none")
    RESULTS["machine"] = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "none (dry run on the CPU)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(json.dumps(RESULTS["machine"]), flush=True)
    check("parity_cpu_cuda", parity)
    check("inference_leaves_model_unchanged", purity)
    for amp in AMP:
        check(f"train_{amp}", lambda amp=amp: train_steps(amp))
    if args.checkpoint is not None:
        check("trained_network_under_autocast", lambda: trained_network(args.checkpoint, args.data))
    if not args.skip_timings:
        cases = [(v, int(b), int(p)) for v, b, p in (c.split(":") for c in args.timing_cases)]
        check("timings", lambda: timings(cases))
    text = json.dumps(RESULTS, indent=1)
    atomic_write(Path(args.out) / "check_cuda.json", lambda tmp: tmp.write_text(text))  # creates the folder
    failed = [k for k, v in RESULTS.items() if isinstance(v, dict) and v.get("ok") is False]
    print("all checks passed" if not failed else f"FAILED: {failed}", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
