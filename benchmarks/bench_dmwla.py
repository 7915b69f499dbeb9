"""DMW-LA forward+backward after warm-up (memory read + update) versus the same block during
warm-up (plain non-local attention), at the four encoder-B stage sizes of `paper`.

Usage: python benchmarks/bench_dmwla.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch

from harness import child_peak_rss, machine, median_ms, report_rss, time_interleaved
from simmpnet.models import DMWLA

STAGES = {"stage1": (96, 56), "stage2": (192, 28), "stage3": (384, 14), "stage4": (768, 7)}
BATCH, FEATURE_DIM, NUM_K, POOL = 2, 256, 9, 100


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rss-case")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.rss_case:
        rss_case(args.rss_case)
        return
    print(f"machine: {machine()}")
    print(f"B={BATCH}, d={FEATURE_DIM}, n_k={NUM_K}, P={POOL}; forward+backward, median of {args.repeats}")
    print("| stage (C x H x W) | warm-up ms | after warm-up ms | ratio | peak RSS MB, warm-up / after (+ over idle) |")
    print("|---|---:|---:|---:|---:|")
    for stage, (channels, side) in STAGES.items():
        warm, after = make_pair(channels)
        x = torch.randn(BATCH, channels, side, side)
        times = time_interleaved({"warm": lambda: step(warm, x), "after": lambda: step(after, x)}, args.repeats)
        w, a = median_ms(times["warm"]), median_ms(times["after"])
        rss = [child_peak_rss(sys.argv[0], f"{stage}:{mode}") for mode in ("warmup", "after")]
        print(f"| {channels} x {side} x {side} | {w:.1f} | {a:.1f} | {a / w:.3f} | {rss[0][0]:.0f} (+{rss[0][1]:.0f}) / {rss[1][0]:.0f} (+{rss[1][1]:.0f}) |")


if __name__ == "__main__":
    main()
