"""The whole network: training step and eval forward of the `paper` and `tiny` variants against
a timm MaxxViT yardstick, their peak memory, and the floor under them with the same mathematics.

- Ours: the variant with 9 classes after the memory warm-up; a training step is the forward,
  ``DeepSupervisionLoss`` (the trainer's loss, 15 head subsets), backward, fused AdamW step
  (as the trainer) and the memory commit; the eval forward runs at B=1 under
  ``torch.inference_mode``.
- Yardstick: ``timm.create_model("maxxvit_rmlp_small_rw_256", features_only=True)`` with
  random weights, the backbone of our encoder A alone, at the first variant's batch and side;
  its loss is the sum of the means of its feature maps, with the same fused AdamW.
- Peak RSS: each case's training step and eval forward run three times in a fresh child
  process; the peak (VmHWM) is reset to the resident memory before the workload, and the
  growth over that resident memory is given too.
- Floor: the global reads ``softmax(t q^T) v`` of the first variant's DMW-LA blocks
  (docs/method.md: over all N positions of each map) replayed alone at the shapes one training
  step / eval forward gives them, and a square fp32 matrix product for the rate the CPU
  reaches.  Encoder A is the yardstick itself, so "yardstick + global reads" is a lower bound
  on Sim-MPNet's time.

- Precision (``--precision``): ``fp32``, or ``bf16``, where every step of ours and of the
  yardstick runs under CPU bf16 autocast (ours with its default islands, `simmpnet.precision`),
  the global reads are replayed on bf16 tensors and the matrix product is a bf16 one.
- Per FLOP: our time per counted FLOP over the yardstick's, for the first variant, as the
  median over the rounds of the ratio within a round.  FLOPs are counted on the steps
  themselves with every attention as explicit matrix products (``throughput.count_flops``;
  torch's counter scores CPU SDPA as 0), the eval forward under ``torch.no_grad`` because the
  counter sees nothing under inference mode.

All timed cases run interleaved, round by round, after warm-up runs.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from .harness import child_peak_rss, cpu_autocast, median_ms, per_flop_rounds, report_rss, time_interleaved
from .results import Row, fmt
from .throughput import Case, count_flops

N_CLASSES = 9
YARDSTICK = "maxxvit_rmlp_small_rw_256"
#: Training batch and side of each variant; the eval forward runs at B=1 on the same side.
SIZES = {"paper": (2, 256), "tiny": (8, 128)}
#: --quick: sizes that run in seconds, for testing the code only.
QUICK_SIZES = {"paper": (1, 64), "tiny": (2, 64)}
#: Targets of issue 5 for `paper` against the yardstick (training step, eval forward).
TARGETS = {"train": 1.5, "eval": 1.75}
REPEATS, WARMUP = 7, 2
#: The autocast dtype of each ``--precision``.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", choices=list(SIZES),
                        help="default: paper tiny (--quick: tiny); the yardstick and the floor follow the first")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="fp32, or bf16: every step of ours and of the yardstick under CPU bf16 autocast")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--profile", action="store_true",
                        help="only print the top operators of one training step (writes no CSV)")
    parser.add_argument("--profile-variant", default="paper", choices=list(SIZES))
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--profile-shapes", action="store_true", help="group the profile by input shapes")


# ----------------------------------------------------------------------------- cases
def _eval_forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                  grad_mode: Callable[[], object]) -> Callable[[], None]:
    def eval_forward() -> None:
        model.eval()
        with grad_mode(), cpu_autocast(dtype):
            model(x)

    return eval_forward


def ours(variant: str, batch: int, side: int, dtype: torch.dtype | None = None,
         grad_mode: Callable[[], object] = torch.inference_mode,
         ) -> tuple[torch.nn.Module, Callable[[], None], Callable[[], None]]:
    """``variant`` after warm-up: (model, training step at (batch, side), eval forward at B=1),
    under autocast to ``dtype`` (None: fp32), the eval forward under ``grad_mode``."""
    from simmpnet import SimMPNet
    from simmpnet.training.losses import DeepSupervisionLoss

    torch.manual_seed(0)
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES, img_size_a=side, img_size_b=side * 7 // 8)
    model.end_warmup()
    criterion = DeepSupervisionLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    x = torch.rand(batch, 1, side, side)
    y = torch.randint(0, N_CLASSES, (batch, side, side))
    x1 = torch.rand(1, 1, side, side)

    def train_step() -> None:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        with cpu_autocast(dtype):
            loss = criterion(model(x), y)
        loss.backward()
        optimiser.step()
        model.commit_memory()  # the memory change this step recorded

    return model, train_step, _eval_forward(model, x1, dtype, grad_mode)


def yardstick(batch: int, side: int, dtype: torch.dtype | None = None,
              grad_mode: Callable[[], object] = torch.inference_mode,
              ) -> tuple[Callable[[], None], Callable[[], None]]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(YARDSTICK, pretrained=False, features_only=True, img_size=side)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    x = torch.rand(batch, 3, side, side)
    x1 = torch.rand(1, 3, side, side)

    def train_step() -> None:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        with cpu_autocast(dtype):
            loss = sum(f.float().mean() for f in model(x))
        loss.backward()
        optimiser.step()

    return train_step, _eval_forward(model, x1, dtype, grad_mode)


def global_reads(model: torch.nn.Module, batch: int, side: int, dtype: torch.dtype | None = None,
                 ) -> tuple[Callable[[], None], Callable[[], None], float]:
    """The scaled-dot-product attentions one training forward of ``model`` at (batch, side) and
    one eval forward at B=1 call, replayed on random tensors of ``dtype`` (None: fp32):
    (forward + backward of the training ones, eval forwards, multiply-adds x 2 of the eval
    forwards)."""
    import torch.nn.functional as F

    shapes: dict[str, list[tuple[torch.Size, torch.Size, torch.Size, float | None]]] = {"train": [], "eval": []}
    original = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        shapes["train" if model.training else "eval"].append((q.shape, k.shape, v.shape, kwargs.get("scale")))
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        model.train()
        model(torch.rand(batch, 1, side, side))
        model.discard_memory()
        model.eval()
        with torch.inference_mode():
            model(torch.rand(1, 1, side, side))
    finally:
        F.scaled_dot_product_attention = original

    def tensors(mode: str, grad: bool) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(torch.randn(s, dtype=dtype or torch.float32, requires_grad=grad) for s in call[:3])
                for call in shapes[mode]]

    train_inputs, eval_inputs = tensors("train", True), tensors("eval", False)
    scales = {mode: [call[3] for call in shapes[mode]] for mode in shapes}

    def train_reads() -> None:
        total = sum(original(q, k, v, scale=s).float().sum() for (q, k, v), s in zip(train_inputs, scales["train"]))
        total.backward()

    def eval_reads() -> None:
        with torch.inference_mode():
            for (q, k, v), s in zip(eval_inputs, scales["eval"]):
                original(q, k, v, scale=s)

    flops = sum(2.0 * q.numel() * k.shape[-2] + 2.0 * q.shape[:-1].numel() * k.shape[-2] * v.shape[-1] for q, k, v in eval_inputs)
    return train_reads, eval_reads, flops


def matmul_case(n: int, dtype: torch.dtype | None = None) -> Callable[[], None]:
    a, b = torch.randn(n, n, dtype=dtype or torch.float32), torch.randn(n, n, dtype=dtype or torch.float32)
    return lambda: torch.mm(a, b)


def rss_case(case: str) -> None:
    """Child side of the peak-RSS figures: ``name:mode:batch:side:precision``, name a variant or
    ``yardstick``."""
    name, mode, batch, side, precision = case.split(":")
    dtype = PRECISIONS[precision]
    if name == "yardstick":
        train_step, eval_forward = yardstick(int(batch), int(side), dtype)
    else:
        _, train_step, eval_forward = ours(name, int(batch), int(side), dtype)
    report_rss(train_step if mode == "train" else eval_forward)


# ----------------------------------------------------------------------------- run
def profile(variant: str, rows: int, shapes: bool) -> None:
    """Print the operators of one training step of ``variant`` by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, side = SIZES[variant]
    _, step, _ = ours(variant, batch, side)
    step()  # warm-up
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        step()
    averages = prof.key_averages(group_by_input_shape=shapes)
    total = sum(event.self_cpu_time_total for event in averages) / 1000.0
    print(f"{variant} training step (B={batch}, {side} px), {torch.get_num_threads()} threads: {total:.0f} ms self CPU in all")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def counted_flops(variant: str, batch: int, side: int) -> dict[str, float]:
    """Counted FLOPs of one training step and one B=1 eval forward of ``variant`` and of the
    yardstick at (batch, side), fp32, attention as explicit products."""
    _, ours_train, ours_eval = ours(variant, batch, side, grad_mode=torch.no_grad)
    yard_train, yard_eval = yardstick(batch, side, grad_mode=torch.no_grad)
    steps = {"ours:train": ours_train, "ours:eval": ours_eval, "yardstick:train": yard_train, "yardstick:eval": yard_eval}
    return {name: count_flops(Case(step, None, None)) for name, step in steps.items()}  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> list[Row]:
    if args.profile:
        profile(args.profile_variant, args.profile_rows, args.profile_shapes)
        return []
    sizes = QUICK_SIZES if args.quick else SIZES
    variants = args.variants or (["tiny"] if args.quick else list(SIZES))
    first = variants[0]
    batch, side = sizes[first]
    precision, dtype = args.precision, PRECISIONS[args.precision]

    # The children first, while this process is still small.
    rss: dict[str, tuple[float, float]] = {}
    if not args.no_rss:
        for name in [*variants, "yardstick"]:
            b, s = sizes[first] if name == "yardstick" else sizes[name]
            for mode in ("train", "eval"):
                rss[f"{name}:{mode}"] = child_peak_rss("model", f"{name}:{mode}:{b}:{s}:{precision}", args.threads)
    print("  counting FLOPs ...", flush=True)
    flops = counted_flops(first, batch, side)

    cases: dict[str, Callable[[], None]] = {}
    models = {}
    for name in variants:
        models[name], cases[f"{name}:train"], cases[f"{name}:eval"] = ours(name, *sizes[name], dtype)
    cases["yardstick:train"], cases["yardstick:eval"] = yardstick(batch, side, dtype)
    reads_train, reads_eval, reads_flops = global_reads(models[first], batch, side, dtype)
    matmul = 256 if args.quick else 2048
    cases.update({"reads:train": reads_train, "reads:eval": reads_eval, "matmul": matmul_case(matmul, dtype)})
    print(f"  timing {len(cases)} cases, {args.repeats} rounds ...", flush=True)
    samples = time_interleaved(cases, args.repeats, args.warmup)
    ms = {name: median_ms(values) for name, values in samples.items()}

    rows: list[Row] = []
    labels = {name: f"`{name}`, B={sizes[name][0]}, {sizes[name][1]} px, {precision}" for name in variants}
    labels["yardstick"] = f"yardstick, B={batch}, {side} px, {precision}"
    for name, label in labels.items():
        rows += [
            Row("steps", label, "training step", fmt(ms[f"{name}:train"]), "ms"),
            Row("steps", label, "eval forward, B=1", fmt(ms[f"{name}:eval"]), "ms"),
        ]
        for mode, words in (("train", "training step"), ("eval", "eval forward")):
            if f"{name}:{mode}" in rss:
                peak, growth = rss[f"{name}:{mode}"]
                rows += [
                    Row("steps", label, f"peak RSS, {words}", fmt(peak), "MB"),
                    Row("steps", label, f"+ over idle, {words}", fmt(growth), "MB"),
                ]

    ratio_case = f"`{first}` / yardstick, {precision}"
    rows += [
        Row("yardstick", ratio_case, "training step", fmt(ms[f"{first}:train"] / ms["yardstick:train"]), "ratio"),
        Row("yardstick", ratio_case, "eval forward, B=1", fmt(ms[f"{first}:eval"] / ms["yardstick:eval"]), "ratio"),
    ]
    if rss:
        rows.append(Row("yardstick", ratio_case, "peak RSS, training step",
                        fmt(rss[f"{first}:train"][0] / rss["yardstick:train"][0]), "ratio"))
    for mode, words in (("train", "training step"), ("eval", "eval forward, B=1")):
        flop_ratio = flops[f"yardstick:{mode}"] / flops[f"ours:{mode}"]
        median, lowest, highest = per_flop_rounds(samples[f"{first}:{mode}"], samples[f"yardstick:{mode}"], flop_ratio)
        rows += [
            Row("per FLOP", ratio_case, f"{words}, time per FLOP", fmt(median), "ratio"),
            Row("per FLOP", ratio_case, f"{words}, lowest round", fmt(lowest), "ratio"),
            Row("per FLOP", ratio_case, f"{words}, highest round", fmt(highest), "ratio"),
        ]
    for network, words in (("ours", f"`{first}`"), ("yardstick", "yardstick")):
        for mode, mode_words in (("train", f"training step, B={batch}"), ("eval", "eval forward, B=1")):
            rows.append(Row("flops", f"{words}, {mode_words}", "counted", fmt(flops[f"{network}:{mode}"] / 1e9), "GFLOP"))

    for mode, label in (("train", f"training step, B={batch} (forward + backward)"), ("eval", "eval forward, B=1")):
        reads, yard = ms[f"reads:{mode}"], ms[f"yardstick:{mode}"]
        rows += [
            Row("floor", label, "global reads alone", fmt(reads), "ms"),
            Row("floor", label, "yardstick + global reads", fmt(yard + reads), "ms"),
            Row("floor", label, "floor ratio", fmt((yard + reads) / yard), "ratio"),
        ]
        if first == "paper" and precision == "fp32" and not args.quick:
            rows.append(Row("floor", label, "target", fmt(TARGETS[mode]), "ratio"))
    rows += [
        Row("rate", "global reads, eval forward", "rate", fmt(reads_flops / ms["reads:eval"] / 1e6), "GFLOP/s"),
        Row("rate", f"matmul {matmul} x {matmul} {precision}", "rate", fmt(2.0 * matmul**3 / ms["matmul"] / 1e6), "GFLOP/s"),
    ]
    return rows
