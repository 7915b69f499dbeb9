"""Training step and eval forward of the `paper` and `tiny` variants.

paper: training step at B=2, 256 px (loss = cross-entropy summed over the four heads, AdamW
step), eval forward at B=1.  tiny: the same at B=8 / B=1, 128 px.  All after warm-up (memory
read and update active).  Usage: python benchmarks/bench_model.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from harness import child_peak_rss, machine, median_ms, report_rss, time_interleaved
from simmpnet import SimMPNet

CASES = {"paper": (2, 256), "tiny": (8, 128)}
N_CLASSES = 9


def build(variant: str):
    torch.manual_seed(0)
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES)
    model.end_warmup()
    batch, side = CASES[variant]
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(batch, 1, side, side)
    y = torch.randint(0, N_CLASSES, (batch, side, side))
    x1 = torch.randn(1, 1, side, side)

    def train_step() -> None:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(h, y) for h in model(x))
        loss.backward()
        optimiser.step()
        model.commit_memory()

    @torch.no_grad()
    def eval_forward() -> None:
        model.eval()
        model(x1)

    return train_step, eval_forward


def rss_case(case: str) -> None:
    variant, mode = case.split(":")
    train_step, eval_forward = build(variant)
    report_rss(train_step if mode == "train" else eval_forward)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(CASES))
    parser.add_argument("--rss-case")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.rss_case:
        rss_case(args.rss_case)
        return
    print(f"machine: {machine()}")
    print("| variant | train step (B, px) ms | eval forward (B=1) ms | peak RSS MB, train / eval (+ over idle) |")
    print("|---|---:|---:|---:|")
    for variant in args.variants:
        train_step, eval_forward = build(variant)
        times = time_interleaved({"train": train_step, "eval": eval_forward}, args.repeats)
        rss = [child_peak_rss(sys.argv[0], f"{variant}:{mode}") for mode in ("train", "eval")]
        batch, side = CASES[variant]
        print(
            f"| {variant} | {median_ms(times['train']):.0f} (B={batch}, {side}) | "
            f"{median_ms(times['eval']):.0f} | {rss[0][0]:.0f} (+{rss[0][1]:.0f}) / {rss[1][0]:.0f} (+{rss[1][1]:.0f}) |"
        )


if __name__ == "__main__":
    main()
