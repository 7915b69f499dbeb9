"""Peak memory of `simmpnet predict` over a folder of N PNG slices: it must not grow with N.

Prediction reads, predicts and writes one file at a time, so the peak resident memory of a run
over 2,000 slices should be that of a run over 200 (target: within 10 %).  Each run is a fresh
`python -m simmpnet predict` process started by a fresh wrapper process that reports the peak
RSS of its child (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), so every figure is one run's own
peak.  The checkpoint is a small U-Net trained for one step on generated slices.  The runs use
one torch thread (``OMP_NUM_THREADS=1``): the figure is memory, and on a shared machine
several OpenMP threads per tiny forward mostly wait for each other.

Usage: python benchmarks/bench_predict_memory.py [--counts 200 2000] [--side 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


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


def measure(argv: list[str]) -> None:
    """Wrapper mode: run ``argv`` as the only child and print its peak RSS in kB."""
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def peak_of_predict(checkpoint: Path, inputs: Path, output: Path, threads: int) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one ``simmpnet predict`` run, in a fresh wrapper process."""
    predict = [sys.executable, "-m", "simmpnet", "--quiet", "predict", "--device", "cpu",
               "--checkpoint", str(checkpoint), "--input", str(inputs), "--output", str(output)]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--measure", "--", *predict], capture_output=True, text=True, env=env, check=True
    )
    return int(done.stdout.strip()) / 1024.0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the predict runs")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("argv", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.argv)
        return
    import torch
    from harness import machine

    torch.set_num_threads(args.threads)  # so that machine() states the thread count of the runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = make_checkpoint(root, args.side)
        rows = []
        for count in args.counts:
            inputs = make_inputs(root / f"in{count}", count, args.side, root / "pool")
            peak, seconds = peak_of_predict(checkpoint, inputs, root / f"out{count}", args.threads)
            written = len(list((root / f"out{count}").glob("*.png")))
            if written != count:
                sys.exit(f"{count} inputs but {written} label maps written")
            rows.append((count, peak, seconds))
    print(f"# simmpnet predict over N {args.side} x {args.side} PNG slices ({machine()})")
    print("| slices | peak RSS MB | seconds (incl. start-up) |")
    print("|---:|---:|---:|")
    for count, peak, seconds in rows:
        print(f"| {count} | {peak:.0f} | {seconds:.1f} |")
    first, last = rows[0], rows[-1]
    ratio = last[1] / first[1]
    print(f"peak({last[0]}) / peak({first[0]}) = {ratio:.3f} (target: at most 1.10)")


if __name__ == "__main__":
    main()
