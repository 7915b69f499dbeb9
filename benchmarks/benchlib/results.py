"""The CSV files of benchmarks/results/: one file per run of one benchmark, one row per measured
figure, and in every row the machine, the package versions and the commit it was measured on,
so that a row read alone still says where it comes from.

This module imports no torch at the top: the report reads the files without it.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from simmpnet.provenance import cores, cpu_flags, cpu_model

from .harness import BENCHMARKS

ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

#: What a benchmark measured: ``table`` groups the rows that the report shows as one table
#: (cases down, metrics across), ``value`` is already rounded to the digits worth reading.
MEASURE = ["benchmark", "table", "case", "metric", "value", "unit"]
#: How and where: the same in every row of a file.  ``quick`` runs shrink the sizes and the
#: repetitions for testing the code; they are not measurements.  ``loadavg`` is the 1-minute
#: load average when the run started: anything above a few tenths means other processes were
#: running, and the times are not to be trusted.
CONTEXT = [
    "date", "repeats", "warmup", "threads", "quick", "loadavg",
    "cpu_model", "cpu_flags", "torch_cpu_capability", "cores", "memory_gib", "gpu",
    "python", "torch", "timm", "numpy", "onnxruntime", "commit", "command", "note",
]
COLUMNS = MEASURE + CONTEXT
UNKNOWN = "unknown"

@dataclass(frozen=True)
class Row:
    table: str
    case: str
    metric: str
    value: str
    unit: str = ""


def fmt(value: float | int | str | bool) -> str:
    """A figure as the tables print it: whole numbers from 1000 on, else 4 significant digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- the machine
def memory_gib() -> str:
    try:
        with open("/proc/meminfo") as handle:
            kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
        return f"{kb / 2**20:.0f}"
    except (OSError, StopIteration):
        return UNKNOWN


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def git_commit() -> str:
    """HEAD, with ``+dirty`` when the measured code (src/, benchmarks/) differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--", "src", "benchmarks", ":!benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return commit + ("+dirty" if changed else "")


def loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return UNKNOWN


def context(*, repeats: int | str, warmup: int | str, threads: int, quick: bool, command: str, note: str = "") -> dict[str, str]:
    """The :data:`CONTEXT` columns of a run starting now on this machine."""
    import torch

    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "repeats": str(repeats),
        "warmup": str(warmup),
        "threads": str(threads),
        "quick": "yes" if quick else "no",
        "loadavg": loadavg(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": str(cores()),
        "memory_gib": memory_gib(),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": version("timm"),
        "numpy": version("numpy"),
        "onnxruntime": version("onnxruntime"),
        "commit": git_commit(),
        "command": command,
        "note": note,
    }


# ----------------------------------------------------------------------------- files
def file_name(benchmark: str, ctx: dict[str, str]) -> str:
    """``<benchmark>-<date>-<cpu or gpu>-pt<torch>.csv``, after timm's results/ files."""
    stamp = ctx["date"].replace(" ", "T").replace(":", "")
    device = ctx["gpu"] if ctx["gpu"] not in ("none", UNKNOWN, "") else f"{ctx['cpu_model']}-{ctx['cores']}c"
    torch_version = "".join(ch for ch in ctx["torch"].split("+")[0] if ch.isdigit())
    parts = [benchmark, stamp, _slug(device), f"pt{torch_version}"]
    if ctx["quick"] == "yes":
        parts.append("quick")
    return "-".join(parts) + ".csv"


def _slug(text: str) -> str:
    text = re.sub(r"\(R\)|\(TM\)|CPU|Processor|NVIDIA", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or UNKNOWN


def write_csv(folder: Path, benchmark: str, rows: list[Row], ctx: dict[str, str]) -> Path:
    """Write ``rows`` with the run's context into a new file of ``folder``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(benchmark, ctx)
    count = 1
    while path.exists():  # two runs in the same minute
        count += 1
        path = folder / file_name(benchmark, ctx).replace(".csv", f"-{count}.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({"benchmark": benchmark, "table": row.table, "case": row.case, "metric": row.metric,
                             "value": row.value, "unit": row.unit, **ctx})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}")
        return list(reader)
