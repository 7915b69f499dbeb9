"""bf16 against fp32: the `paper` eval forward (B=4, 256 px) and training step (B=2, 256 px)
against the timm yardstick under the same precision, per counted FLOP, and the prediction of a
whole 181 x 217 x 181 volume by `tiny` and `paper` (slices per second).

- Precisions: ``fp32``; ``bf16`` (autocast with the default islands: the DMW-LA global reads
  in bf16, `simmpnet.precision`); ``bf16 fp32-islands`` (autocast with every island in fp32).  The yardstick runs under the same autocast (it has no islands).
- Eval forward: the network in eval mode after the memory warm-up, under ``torch.no_grad``
  (as prediction runs it; the FLOP counter sees nothing under inference mode); the yardstick's
  feature maps.  Training step: as the `throughput` benchmark takes it (forward,
  deep-supervision loss, backward, fused AdamW, memory commit).
- FLOPs: counted once per network and mode on an fp32 run with every attention as explicit
  matrix products (`throughput.count_flops`; torch's counter scores CPU SDPA as 0).  "per
  FLOP" is our time per counted FLOP over the yardstick's, same precision, in each round (the
  two run back to back), and its median over the rounds: slow drifts of a shared machine, which
  move both alike, cancel; the lowest and highest round show what is left of the noise.
- Volume: a random volume on the MNI grid of the demo's MRI (181 slices of 217 x 181) through
  `predict_slices` in fp32 and in bf16 (as ``simmpnet predict --precision``; every slice
  resized to the input size, the labels back), batch 16.

All timed cases run interleaved, round by round, after warm-up runs; the volume cases once each,
interleaved, after a warm-up on a few slices.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from .harness import cpu_autocast, median_ms, per_flop_rounds, time_interleaved
from .results import Row, fmt
from .throughput import SETTINGS, YARDSTICK, Case, count_flops
from .throughput import ours as ours_step
from .throughput import yardstick as yardstick_step

N_CLASSES = 9
SIDE = 256
EVAL_BATCH, TRAIN_BATCH = 4, 2
VOLUME = (181, 217, 181)
#: --quick: sizes that run in seconds, for testing the code only.
QUICK = {"side": 64, "eval_batch": 1, "train_batch": 1, "volume": (4, 40, 36)}
REPEATS, WARMUP = 7, 2
#: (autocast dtype, island precision) of each precision measured.
PRECISIONS = {"fp32": (None, "fp32"), "bf16": (torch.bfloat16, "bf16"), "bf16 fp32-islands": (torch.bfloat16, "fp32")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                        help="precisions to measure (default: all)")
    parser.add_argument("--no-volume", action="store_true", help="skip the whole-volume prediction")


def _paper(side: int):
    from simmpnet import SimMPNet

    torch.manual_seed(0)
    model = SimMPNet.from_variant("paper", n_classes=N_CLASSES, img_size_a=side, img_size_b=side * 7 // 8)
    model.end_warmup()
    return model


def ours_eval(batch: int, side: int, dtype: torch.dtype | None, islands: str) -> Case:
    from simmpnet.precision import set_island_precision

    model = _paper(side).eval()
    set_island_precision(model, islands)
    x = torch.rand(batch, 1, side, side)

    def step() -> None:
        with torch.no_grad(), cpu_autocast(dtype):
            model(x)

    return Case(step, model, None)  # type: ignore[arg-type]


def yardstick_eval(batch: int, side: int, dtype: torch.dtype | None) -> Case:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(YARDSTICK, pretrained=False, features_only=True, img_size=side).eval()
    x = torch.rand(batch, 3, side, side)

    def step() -> None:
        with torch.no_grad(), cpu_autocast(dtype):
            model(x)

    return Case(step, model, None)  # type: ignore[arg-type]


def ours_train(batch: int, side: int, dtype: torch.dtype | None, islands: str) -> Case:
    from simmpnet.precision import set_island_precision

    case = ours_step(batch, side, SETTINGS["bf16" if dtype is not None else "fp32"], "cpu")
    set_island_precision(case.model, islands)
    return case


def volume_case(variant: str, volume: tuple[int, int, int], side: int | None,
                precision: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(a warm-up on a few slices, the whole volume) of ``variant`` predicted in ``precision``
    (``"fp32"`` or ``"bf16"``, as ``simmpnet predict --precision``: bf16 with its islands)."""
    from simmpnet import SimMPNet
    from simmpnet.evaluation.inference import predict_slices

    torch.manual_seed(0)
    sizes = {} if side is None else {"img_size_a": side, "img_size_b": side * 7 // 8}
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES, **sizes)
    model.end_warmup()
    size = model.config.img_size_a
    slices = torch.rand(*volume, generator=torch.Generator().manual_seed(0)).numpy()

    def run(part) -> Callable[[], None]:
        def predict() -> None:
            predict_slices(model, part, size, torch.device("cpu"), batch_size=16, precision=precision)

        return predict

    return run(slices[:4]), run(slices)


def run(args: argparse.Namespace) -> list[Row]:
    side = QUICK["side"] if args.quick else SIDE
    eval_batch = QUICK["eval_batch"] if args.quick else EVAL_BATCH
    train_batch = QUICK["train_batch"] if args.quick else TRAIN_BATCH
    volume = QUICK["volume"] if args.quick else VOLUME
    chosen = {name: PRECISIONS[name] for name in args.precisions}

    cases: dict[str, Callable[[], None]] = {}
    for name, (dtype, islands) in chosen.items():
        cases[f"ours eval {name}"] = ours_eval(eval_batch, side, dtype, islands).step
        cases[f"yardstick eval {name}"] = yardstick_eval(eval_batch, side, dtype).step
        cases[f"ours train {name}"] = ours_train(train_batch, side, dtype, islands).step
        cases[f"yardstick train {name}"] = yardstick_step(train_batch, side, SETTINGS["fp32" if dtype is None else "bf16"], "cpu").step
    print("  counting FLOPs ...", flush=True)
    flops = {
        "ours eval": count_flops(ours_eval(eval_batch, side, None, "fp32")),
        "yardstick eval": count_flops(yardstick_eval(eval_batch, side, None)),
        "ours train": count_flops(ours_train(train_batch, side, None, "fp32")),
        "yardstick train": count_flops(yardstick_step(train_batch, side, SETTINGS["fp32"], "cpu")),
    }
    print(f"  timing {len(cases)} cases, {args.repeats} rounds ...", flush=True)
    samples = time_interleaved(cases, args.repeats, args.warmup)
    ms = {name: median_ms(values) for name, values in samples.items()}

    rows: list[Row] = []
    for mode, words, batch in (("eval", "eval forward", eval_batch), ("train", "training step", train_batch)):
        for name in chosen:
            label = f"{name}, {words}, B={batch}, {side} px"
            ours, yard = ms[f"ours {mode} {name}"], ms[f"yardstick {mode} {name}"]
            flop_ratio = flops[f"yardstick {mode}"] / flops[f"ours {mode}"]
            median, lowest, highest = per_flop_rounds(samples[f"ours {mode} {name}"], samples[f"yardstick {mode} {name}"], flop_ratio)
            rows += [
                Row("per FLOP", label, "ours, ms", fmt(ours), "ms"),
                Row("per FLOP", label, "yardstick, ms", fmt(yard), "ms"),
                Row("per FLOP", label, "ours / yardstick, time per FLOP", fmt(median), "ratio"),
                Row("per FLOP", label, "lowest round", fmt(lowest), "ratio"),
                Row("per FLOP", label, "highest round", fmt(highest), "ratio"),
            ]
        if "fp32" in chosen:
            for name in chosen:
                if name != "fp32":
                    rows.append(Row("speed-up", f"{name}, {words}", "ours, fp32 / this", fmt(ms[f"ours {mode} fp32"] / ms[f"ours {mode} {name}"]), "ratio"))
                    rows.append(Row("speed-up", f"{name}, {words}", "yardstick, fp32 / this", fmt(ms[f"yardstick {mode} fp32"] / ms[f"yardstick {mode} {name}"]), "ratio"))
    for mode in ("eval", "train"):
        rows.append(Row("flops", f"{mode}, counted", "GFLOP", fmt(flops[f"ours {mode}"] / 1e9), "GFLOP"))
        rows.append(Row("flops", f"{mode}, yardstick", "GFLOP", fmt(flops[f"yardstick {mode}"] / 1e9), "GFLOP"))

    if not args.no_volume:
        warm: dict[str, Callable[[], None]] = {}
        whole: dict[str, Callable[[], None]] = {}
        for variant in ("tiny", "paper"):
            for name in [p for p in ("fp32", "bf16") if p in chosen]:
                warm[f"{variant} {name}"], whole[f"{variant} {name}"] = volume_case(
                    variant, volume, QUICK["side"] if args.quick else None, name
                )
        print(f"  predicting the {' x '.join(map(str, volume))} volume {len(whole)} times ...", flush=True)
        time_interleaved(warm, 1, 0)
        seconds = {name: samples[0] for name, samples in time_interleaved(whole, 1, 0).items()}
        for name, value in seconds.items():
            rows.append(Row("volume", f"{name}, {' x '.join(map(str, volume))}", "slices/s", fmt(volume[0] / value), "slices/s"))
    return rows
