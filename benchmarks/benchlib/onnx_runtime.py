"""ONNX Runtime (CPU) against PyTorch eager.

- latency: the exported eval network of the untrained `paper` and `tiny` variants (after the
  memory warm-up), B=1, ONNX Runtime through ``simmpnet.export.onnxruntime_session`` against
  PyTorch eager under ``torch.inference_mode``, interleaved.  The export computes the memory
  read densely (scores against all n_k x P slots, masked to the query's category), n_k times
  the multiply-adds of the chunked eager read.
- demo (needs the trained `make demo` network and its data; skipped without them): on the
  held-out slices of the three test slabs, at the size the network was trained at, two
  sessions, ``simmpnet.export.onnxruntime_session`` (ONNX Runtime's default optimisations
  without the NCHWc layout rewrite) and ONNX Runtime's plain defaults: the share of pixels with
  the PyTorch label and the largest logit difference, slice by slice (batch 1) and per test
  slab (batch 10), and the median latency of a batch-1 forward, the two sessions interleaved.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .harness import Skip, held_out_volumes, median_ms, time_interleaved, trained_checkpoint
from .model import QUICK_SIZES, SIZES, ours
from .results import Row, fmt

#: Batch-1 forwards of tens of milliseconds: many short runs.
REPEATS, WARMUP = 20, 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", choices=list(SIZES), help="latency: default paper tiny (--quick: tiny)")
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"), help="demo: the trained network")
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"), help="demo: its data (Synapse layout)")
    parser.add_argument("--no-latency", action="store_true", help="only the demo check")


def onnx_case(model: torch.nn.Module, folder: Path, name: str, threads: int) -> Callable[[], None]:
    """Export the eval network of ``model`` and return a B=1 ONNX Runtime (CPU) run."""
    from simmpnet.export import export_model, onnxruntime_session

    path = export_model(model, folder / f"{name}.onnx", "onnx")
    session = onnxruntime_session(path, threads=threads)
    side = model.config.img_size_a
    feed = {session.get_inputs()[0].name: torch.rand(1, 1, side, side).numpy()}
    return lambda: session.run(None, feed)


def latency(args: argparse.Namespace) -> list[Row]:
    sizes = QUICK_SIZES if args.quick else SIZES
    variants = args.variants or (["tiny"] if args.quick else list(SIZES))
    cases: dict[str, Callable[[], None]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:
        for name in variants:
            model, _, cases[f"{name}:eager"] = ours(name, *sizes[name])
            cases[f"{name}:ort"] = onnx_case(model, Path(folder), name, args.threads)
        ms = {name: median_ms(samples) for name, samples in time_interleaved(cases, args.repeats, args.warmup).items()}
    rows = []
    for name in variants:
        label = f"`{name}` ({sizes[name][1]} px)"
        eager, ort = ms[f"{name}:eager"], ms[f"{name}:ort"]
        rows += [
            Row("latency", label, "PyTorch eager", fmt(eager), "ms"),
            Row("latency", label, "ONNX Runtime CPU", fmt(ort), "ms"),
            Row("latency", label, "ONNX / eager", fmt(ort / eager), "ratio"),
        ]
    return rows


def _compare(session, batches: list[np.ndarray], references: list[np.ndarray]) -> tuple[float, float]:
    """(share of pixels with the PyTorch label, largest |logit difference|) over ``batches``."""
    same = total = 0
    worst = 0.0
    name = session.get_inputs()[0].name
    for x, reference in zip(batches, references):
        got = session.run(None, {name: x})[0]
        same += int((reference.argmax(1) == got.argmax(1)).sum())
        total += reference.shape[0] * reference.shape[2] * reference.shape[3]
        worst = max(worst, float(np.abs(reference - got).max()))
    return same / total, worst


def demo(args: argparse.Namespace) -> list[Row]:
    from simmpnet.export import export_model, onnxruntime_session
    from simmpnet.loading import load_trained_model

    trained_checkpoint(args.checkpoint, args.data)
    model, size, _ = load_trained_model(args.checkpoint, "cpu")
    model.eval()
    volumes = held_out_volumes(args.data, size)
    if args.quick:
        volumes = [v[:2] for v in volumes[:2]]
    slices = [v[i : i + 1] for v in volumes for i in range(len(v))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_demo_") as folder:
        path = export_model(model, Path(folder) / "demo.onnx", "onnx", input_size=size)
        sessions = {
            "`simmpnet.export.onnxruntime_session`": onnxruntime_session(path, threads=args.threads),
            "ONNX Runtime defaults (`ORT_ENABLE_ALL`, = `layout_rewrite=True`)": onnxruntime_session(
                path, threads=args.threads, layout_rewrite=True
            ),
        }
        one = slices[len(slices) // 2]
        runs = {label: (lambda s=s: s.run(None, {s.get_inputs()[0].name: one})) for label, s in sessions.items()}
        times = time_interleaved(runs, args.repeats, args.warmup)
        with torch.no_grad():
            single_reference = [model(torch.from_numpy(x)).numpy() for x in slices]
            batched_reference = [model(torch.from_numpy(x)).numpy() for x in volumes]
        for label, session in sessions.items():
            single, single_diff = _compare(session, slices, single_reference)
            batched, batched_diff = _compare(session, volumes, batched_reference)
            rows += [
                Row("demo", label, "same label, batch 1", f"{100 * single:.3f}", "%"),
                Row("demo", label, "max logit diff, batch 1", f"{single_diff:.2g}"),
                Row("demo", label, f"same label, batch {len(volumes[0])}", f"{100 * batched:.3f}", "%"),
                Row("demo", label, f"max logit diff, batch {len(volumes[0])}", f"{batched_diff:.2g}"),
                Row("demo", label, "latency, batch 1", fmt(median_ms(times[label])), "ms"),
            ]
    print(f"  demo: `{args.checkpoint}` ({size} px), {len(slices)} test slices of {len(volumes)} slabs", flush=True)
    return rows


def run(args: argparse.Namespace) -> list[Row]:
    rows = [] if args.no_latency else latency(args)
    try:
        rows += demo(args)
    except Skip as why:
        if not rows:
            raise
        print(f"skipped onnx demo check: {why}", file=sys.stderr, flush=True)
    return rows
