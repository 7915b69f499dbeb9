"""DMW-LA forward + backward after warm-up (memory read and update) against the same block
during warm-up (plain non-local attention), at the four encoder-B stage sizes of `paper`."""
from __future__ import annotations

import argparse
import copy

import torch

from simmpnet.models import DMWLA

from .harness import child_peak_rss, median_ms, report_rss, time_interleaved
from .results import Row, fmt

STAGES = {"stage1": (96, 56), "stage2": (192, 28), "stage3": (384, 14), "stage4": (768, 7)}
BATCH, FEATURE_DIM, NUM_K, POOL = 2, 256, 9, 100
REPEATS, WARMUP = 7, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), help="default: all four (--quick: stage4)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")


def make_pair(channels: int) -> tuple[DMWLA, DMWLA]:
    torch.manual_seed(0)
    warm = DMWLA(channels, feature_dim=FEATURE_DIM, num_k=NUM_K, pool_size=POOL, warmup_iters=10**9).train()
    after = copy.deepcopy(warm)
    after.memory.warmup_iters = 0
    after.end_warmup()
    return warm, after


def step(block: DMWLA, x: torch.Tensor) -> None:
    block.zero_grad(set_to_none=True)
    block(x).sum().backward()
    block.commit_memory()  # the warm-up write / memory update of this step


def rss_case(case: str) -> None:
    stage, mode = case.split(":")
    channels, side = STAGES[stage]
    warm, after = make_pair(channels)
    block = warm if mode == "warmup" else after
    x = torch.randn(BATCH, channels, side, side)
    report_rss(lambda: step(block, x))


def run(args: argparse.Namespace) -> list[Row]:
    stages = args.stages or (["stage4"] if args.quick else list(STAGES))
    rows: list[Row] = []
    for stage in stages:
        channels, side = STAGES[stage]
        warm, after = make_pair(channels)
        x = torch.randn(BATCH, channels, side, side)
        times = time_interleaved({"warm": lambda: step(warm, x), "after": lambda: step(after, x)}, args.repeats, args.warmup)
        w, a = median_ms(times["warm"]), median_ms(times["after"])
        case = f"{channels} x {side} x {side}"
        rows += [
            Row("forward+backward", case, "warm-up", fmt(w), "ms"),
            Row("forward+backward", case, "after warm-up", fmt(a), "ms"),
            Row("forward+backward", case, "after / warm-up", fmt(a / w), "ratio"),
        ]
        if not args.no_rss:
            for mode, label in (("warmup", "warm-up"), ("after", "after")):
                peak, growth = child_peak_rss("dmwla", f"{stage}:{mode}", args.threads)
                rows += [
                    Row("forward+backward", case, f"peak RSS, {label}", fmt(peak), "MB"),
                    Row("forward+backward", case, f"+ over idle, {label}", fmt(growth), "MB"),
                ]
        print(f"  {case}: warm-up {w:.1f} ms, after {a:.1f} ms", flush=True)
    return rows
