"""What the two ways back to the slice size cost: ``predict_slices`` with ``resample="labels"``
(the paper's nearest resize of the label map) against ``resample="logits"`` (bilinear
interpolation of the logits, then the argmax).

Both modes run the same forward; they differ only in what follows it.  Timed with the trained
`make demo` network (skipped without it) on the demo's three held-out slabs (181 x 217 slices)
and on a generated volume of 512 x 512 slices (the Synapse CT size); the modes are
interleaved.  Median milliseconds per slice, forward included, and the share of pixels that get
the same label in both modes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .harness import median_ms, time_interleaved, trained_checkpoint
from .results import Row, fmt

REPEATS, WARMUP = 7, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"), help="the trained network")
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"), help="its data (Synapse layout)")


def run(args: argparse.Namespace) -> list[Row]:
    from simmpnet.data.layouts import open_layout
    from simmpnet.evaluation.inference import predict_slices
    from simmpnet.evaluation.resample import RESAMPLE_MODES
    from simmpnet.training import load_trained_model

    trained_checkpoint(args.checkpoint, args.data)
    model, size, _ = load_trained_model(args.checkpoint)
    model.eval()
    demo = [c["image"] for c in open_layout("synapse", args.data).cases("test_vol")]
    depth, side = (2, 128) if args.quick else (10, 512)
    if args.quick:
        demo = [v[:2] for v in demo]
    shape = demo[0].shape
    volumes = {
        f"demo slabs, {len(demo)} x {len(demo[0])} slices of {shape[1]} x {shape[2]}": demo,
        f"generated volume, {depth} slices of {side} x {side}": [np.random.default_rng(0).random((depth, side, side), dtype=np.float32)],
    }
    rows = []
    for name, vols in volumes.items():
        slices = sum(len(v) for v in vols)
        predicted: dict[str, list[np.ndarray]] = {}  # each mode's last timed run, compared below

        def predict(mode: str, vols: list[np.ndarray] = vols) -> None:
            predicted[mode] = [predict_slices(model, v, size, resample=mode) for v in vols]

        times = time_interleaved({mode: (lambda mode=mode: predict(mode)) for mode in RESAMPLE_MODES}, args.repeats, args.warmup)
        per_slice = {mode: median_ms(times[mode]) / slices for mode in RESAMPLE_MODES}
        same = np.mean([np.mean(a == b) for a, b in zip(*(predicted[m] for m in RESAMPLE_MODES))])
        rows += [
            Row("resample", name, "`labels`", fmt(per_slice["labels"]), "ms/slice"),
            Row("resample", name, "`logits`", fmt(per_slice["logits"]), "ms/slice"),
            Row("resample", name, "logits / labels", fmt(per_slice["logits"] / per_slice["labels"]), "ratio"),
            Row("resample", name, "same label", f"{100 * same:.2f}", "%"),
        ]
        print(f"  {name}: labels {per_slice['labels']:.1f}, logits {per_slice['logits']:.1f} ms/slice", flush=True)
    print(f"  network: `{args.checkpoint}`, input {size} px", flush=True)
    return rows
