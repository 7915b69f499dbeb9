"""Measuring helpers shared by the benchmarks: medians of interleaved runs after warm-up runs,
peak RSS measured in a fresh child process per case, and the held-out demo slices."""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BENCHMARKS = Path(__file__).resolve().parents[1]


class Skip(Exception):
    """A benchmark that cannot run here (no GPU, no trained checkpoint): the command says why,
    writes no row for it and exits 0."""


def time_interleaved(cases: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds in which each case runs once,
    so that slow drifts of the machine hit all cases alike.  Returns seconds per run."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def per_flop_rounds(ours: list[float], yardstick: list[float], flop_ratio: float) -> tuple[float, float, float]:
    """Our time per counted FLOP over the yardstick's in each round (the two ran back to back;
    ``flop_ratio`` = yardstick FLOPs / ours): (median over the rounds, lowest, highest)."""
    rounds = [o / y * flop_ratio for o, y in zip(ours, yardstick, strict=True)]
    return statistics.median(rounds), min(rounds), max(rounds)


def cpu_autocast(dtype: torch.dtype | None) -> torch.autocast:
    """CPU autocast to ``dtype``; None: fp32, autocast off."""
    import torch

    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


def sync(device: str) -> None:
    """Wait for the GPU's queued kernels (nothing to wait for on the CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def synced(fn: Callable[[], object], device: str) -> Callable[[], None]:
    """``fn`` followed by a wait for ``device``, so that a wall-clock time covers its kernels."""

    def run() -> None:
        fn()
        sync(device)

    return run


# ----------------------------------------------------------------------------- peak RSS
def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), MB."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident memory of this process (VmRSS), MB."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> None:
    """Reset the peak to the current RSS (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def child_peak_rss(module: str, case: str, threads: int) -> tuple[float, float]:
    """``(peak RSS, peak minus RSS before the workload)`` in MB of ``benchlib.<module>.rss_case(case)``
    run in a fresh process, so that no case inherits the allocations of another.  VmHWM
    starts afresh at ``exec``, unlike ``ru_maxrss``, which Linux carries over from the forked
    copy of a large parent."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib, torch; "
        "torch.set_num_threads(int(sys.argv[4])); "
        "importlib.import_module('benchlib.' + sys.argv[2]).rss_case(sys.argv[3])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BENCHMARKS), module, case, str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return record["peak_rss_mb"], record["peak_rss_mb"] - record["idle_rss_mb"]


def report_rss(workload: Callable[[], None], runs: int = 3) -> None:
    """Child-process side of :func:`child_peak_rss`: run ``workload`` and print the figures."""
    idle = rss_mb()
    reset_peak_rss()
    for _ in range(runs):
        workload()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "idle_rss_mb": idle}))


# ----------------------------------------------------------------------------- data
def held_out_volumes(data: Path, size: int) -> list:
    """The test volumes (the demo's Synapse layout, split ``test_vol``), each resized slice by
    slice as prediction does: (D, 1, S, S) float32."""
    import numpy as np

    from simmpnet.data.layouts import open_layout
    from simmpnet.data.transforms import resize_image

    cases = open_layout("synapse", data).cases("test_vol")
    return [
        np.stack([resize_image(s, (size, size)) for s in case["image"]])[:, None].astype(np.float32)
        for case in cases
    ]


def trained_checkpoint(checkpoint: Path, data: Path) -> None:
    """Raise :class:`Skip` unless the trained network and its data are there."""
    if not Path(checkpoint).exists():
        raise Skip(f"needs a trained checkpoint, {checkpoint} not found (run `make demo`, or pass --checkpoint)")
    if not (Path(data) / "test_vol_h5").is_dir():
        raise Skip(f"needs the demo data, {data}/test_vol_h5 not found (run `make demo`, or pass --data)")
