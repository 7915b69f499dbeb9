"""Peak memory of `simmpnet predict` over a folder of N PNG slices: it must not grow with N.

Prediction reads, predicts and writes one file at a time, so the peak resident memory of a run
over 2,000 slices should be that of a run over 200 (target: within 10 %).  Each run is a fresh
`python -m simmpnet predict` process started by a fresh wrapper process that reports the peak
RSS of its child (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), so every figure is one run's own
peak.  The checkpoint is a small U-Net trained for one step on generated slices.  The runs use
one torch thread by default (``OMP_NUM_THREADS``): the figure is memory, and on a shared
machine several OpenMP threads per tiny forward mostly wait for each other.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .harness import BENCHMARKS
from .results import Row, fmt

SRC = BENCHMARKS.parent / "src"
#: One measurement per count: memory does not need medians.
REPEATS, WARMUP = 1, 0
#: Torch threads of the predict runs (``--threads``), see the module docstring.
THREADS = 1

#: The wrapper process: runs its arguments as its only child and prints that child's peak RSS (kB).
WRAPPER = """\
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if done.returncode != 0:
    sys.exit(f"{' '.join(sys.argv[1:])} failed: {done.stderr.strip()}")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", type=int, nargs="+", help="slices per run (default 200 2000; --quick: 10 20)")
    parser.add_argument("--side", type=int, help="slice side (default 64; --quick: 32)")


def make_checkpoint(root: Path, side: int) -> Path:
    """Train a tiny U-Net for one step on four generated slices; returns its ``last.pt``."""
    from simmpnet.training import TrainConfig, Trainer

    data = root / "data"
    for folder in ("train_npz", "lists"):
        (data / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"slice{i}" for i in range(4)]
    for name in names:
        label = (rng.random((side, side)) > 0.7).astype(np.uint8)
        np.savez(data / "train_npz" / f"{name}.npz", image=(0.5 * label + 0.5 * rng.random((side, side))).astype(np.float32), label=label)
    (data / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    config = {
        "data_root": str(data), "n_classes": 2, "model": "unet", "input_size": side, "val_list": None,
        "model_overrides": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "epochs": 1, "batch_size": 4, "max_steps": 1, "device": "cpu", "progress": False,
        "output_dir": str(root / "run"),
    }
    Trainer(TrainConfig.from_dict(config)).fit()
    return root / "run" / "last.pt"


def make_inputs(folder: Path, count: int, side: int, pool: Path) -> Path:
    """``count`` PNG slices in ``folder`` (hard links to ``pool``'s files when possible)."""
    from PIL import Image

    pool.mkdir(exist_ok=True)
    folder.mkdir()
    for i in range(count):
        source = pool / f"slice{i:05d}.png"
        if not source.exists():
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(source)
        try:
            os.link(source, folder / source.name)
        except OSError:
            (folder / source.name).write_bytes(source.read_bytes())
    return folder


def peak_of_predict(checkpoint: Path, inputs: Path, output: Path, threads: int) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one ``simmpnet predict`` run, in a fresh wrapper process."""
    predict = [sys.executable, "-m", "simmpnet", "--quiet", "predict", "--device", "cpu",
               "--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(output)]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *predict], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return int(done.stdout.strip()) / 1024.0, time.perf_counter() - start


def run(args: argparse.Namespace) -> list[Row]:
    counts = args.counts or ([10, 20] if args.quick else [200, 2000])
    side = args.side or (32 if args.quick else 64)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_predict_memory_") as tmp:
        root = Path(tmp)
        checkpoint = make_checkpoint(root, side)
        first = None
        for count in counts:
            inputs = make_inputs(root / f"in{count}", count, side, root / "pool")
            peak, seconds = peak_of_predict(checkpoint, inputs, root / f"out{count}", args.threads)
            written = len(list((root / f"out{count}").glob("*.png")))
            if written != count:
                raise RuntimeError(f"{count} inputs but {written} label maps written")
            first = first or peak
            case = f"{count} slices of {side} x {side}"
            rows += [
                Row("peak", case, "peak RSS", fmt(peak), "MB"),
                Row("peak", case, f"peak RSS / peak at {counts[0]}", fmt(peak / first), "ratio"),
                Row("peak", case, "seconds, with start-up", fmt(seconds), "s"),
            ]
            print(f"  {case}: peak RSS {peak:.0f} MB, {seconds:.1f} s", flush=True)
    return rows
