"""What the two ways back to the slice size cost: ``predict_slices`` with ``resample="labels"``
(the paper's nearest resize of the label map) against ``resample="logits"`` (bilinear
interpolation of the logits, then the argmax).

Both modes run the same forward; they differ only in what follows it.  Timed on the demo's
three held-out slabs (181 x 217 slices) and on a generated volume of 512 x 512 slices (the
Synapse CT size), with the network of ``--checkpoint`` (default ``runs/demo/last.pt``; without
one, an untrained ``tiny`` network at 96 px).  The modes are interleaved (``--repeats`` rounds
after two warm-up rounds) and the medians are written into benchmarks/README.md.

Usage (from the repository root):
    python benchmarks/bench_resample.py [--checkpoint runs/demo/last.pt] [--data runs/brain_demo_data]
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness import machine, median_ms, time_interleaved, write_readme  # noqa: E402
from simmpnet import SimMPNet  # noqa: E402
from simmpnet.data.layouts import open_layout  # noqa: E402
from simmpnet.evaluation.inference import predict_slices  # noqa: E402
from simmpnet.evaluation.resample import RESAMPLE_MODES  # noqa: E402
from simmpnet.training import load_trained_model  # noqa: E402

BEGIN, END = "<!-- bench_resample:begin -->", "<!-- bench_resample:end -->"


def network(checkpoint: Path) -> tuple[torch.nn.Module, int, str]:
    if checkpoint.is_file():
        model, size, _ = load_trained_model(checkpoint)
        return model, size, f"`{checkpoint}`"
    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", 9, img_size_a=96, img_size_b=84).eval()
    return model, 96, "an untrained `tiny` network at 96 px (no checkpoint found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    model, size, source = network(args.checkpoint)
    volumes = {"demo slabs, 3 x 10 slices of 181 x 217": [c["image"] for c in open_layout("synapse", args.data).cases("test_vol")]}
    volumes["generated volume, 10 slices of 512 x 512"] = [np.random.default_rng(0).random((10, 512, 512), dtype=np.float32)]
    rows = []
    for name, vols in volumes.items():
        slices = sum(len(v) for v in vols)
        predicted: dict[str, list[np.ndarray]] = {}  # each mode's last timed run, compared below

        def run(mode: str, vols: list[np.ndarray] = vols) -> None:
            predicted[mode] = [predict_slices(model, v, size, resample=mode) for v in vols]

        times = time_interleaved({mode: (lambda mode=mode: run(mode)) for mode in RESAMPLE_MODES}, args.repeats)
        per_slice = {mode: median_ms(times[mode]) / slices for mode in RESAMPLE_MODES}
        same = np.mean([np.mean(a == b) for a, b in zip(*(predicted[m] for m in RESAMPLE_MODES))])
        rows.append(
            f"| {name} | {per_slice['labels']:.1f} | {per_slice['logits']:.1f} | "
            f"{per_slice['logits'] / per_slice['labels']:.2f} | {100 * same:.2f} |"
        )
        print(rows[-1], flush=True)

    block = "\n".join([
        BEGIN,
        f"## Back to the slice size: `labels` against `logits` (`bench_resample.py`, {datetime.date.today()})",
        "",
        f"{machine()}; network: {source}, input {size} px. Median milliseconds per slice of "
        f"`predict_slices` (forward included), {args.repeats} interleaved rounds after 2 warm-up "
        "rounds, and the share of pixels that get the same label in both modes.",
        "",
        "| volumes | `labels` ms/slice | `logits` ms/slice | ratio | same label (%) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        END,
    ])
    if not args.no_readme:
        write_readme(HERE / "README.md", block, BEGIN, END)
    print(block)


if __name__ == "__main__":
    main()
