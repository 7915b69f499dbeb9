"""Helpers shared by the benchmark scripts: medians after warm-up runs, peak RSS measured in
a fresh child process per case, a one-line machine description, and the held-out demo slices."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from simmpnet.data.io import atomic_write
from simmpnet.data.layouts import open_layout
from simmpnet.data.transforms import resize_image


def cores() -> int:
    """CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


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


def child_peak_rss(script: str, case: str) -> tuple[float, float]:
    """``(peak RSS, peak minus RSS before the workload)`` in MB of ``python script --rss-case
    case``, run in a fresh process."""
    out = subprocess.run(
        [sys.executable, script, "--rss-case", case], check=True, capture_output=True, text=True
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


def write_readme(path: Path, block: str, begin: str, end: str) -> None:
    """Replace the text between the markers ``begin`` and ``end`` of ``path`` by ``block``
    (which carries the markers), or append the block if the markers are not there."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def held_out_volumes(data: Path, size: int) -> list[np.ndarray]:
    """The test volumes (the demo's Synapse layout, split ``test_vol``), each resized slice by
    slice as prediction does: (D, 1, S, S) float32."""
    cases = open_layout("synapse", data).cases("test_vol")
    return [
        np.stack([resize_image(s, (size, size)) for s in case["image"]])[:, None].astype(np.float32)
        for case in cases
    ]
