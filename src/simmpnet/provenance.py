"""Where a figure was made: the machine (CPU model and the SIMD extensions that decide torch's
kernels, cores) and the software (simmpnet, its source commit, torch, Python).

Results differ between machines (the same demo run scores differently on CPUs with and without
AVX-512 BF16), so every recorded result carries these.  Torch-free at import: torch is read
only when a record asks for its version.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"

#: The instruction-set extensions that decide which kernels torch and ONNX Runtime run (x86
#: and Arm names).  /proc/cpuinfo lists a hundred or more flags; these are the ones that change
#: a time or a rounding.
SIMD_FLAGS = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx512\w*|avx_vnni\w*|amx\w*|asimd\w*|sve\w*|bf16|i8mm)$")


def _cpuinfo_line(*prefixes: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return next((line.split(":", 1)[1] for line in handle if line.startswith(prefixes)), None)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    line = _cpuinfo_line("model name")
    return line.strip() if line else (platform.processor() or platform.machine() or UNKNOWN)


def cpu_flags() -> str:
    """The :data:`SIMD_FLAGS` of the CPU, space-separated, as /proc/cpuinfo (and ``lscpu``)
    lists them; ``unknown`` where /proc/cpuinfo is not readable."""
    line = _cpuinfo_line("flags", "Features")
    if line is None:
        return UNKNOWN
    return " ".join(flag for flag in line.split() if SIMD_FLAGS.match(flag)) or "none"


def cores() -> int:
    """CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def source_commit() -> str:
    """The git commit of the simmpnet source (12 hex digits), when it runs from a git checkout."""
    folder = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def software() -> dict[str, str]:
    """simmpnet, its source commit, torch, numpy and Python versions, and the platform."""
    import numpy as np
    import torch

    from . import __version__

    return {
        "simmpnet": __version__,
        "commit": source_commit(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def run_record(device: str) -> dict[str, Any]:
    """:func:`software` and the machine a run on ``device`` ran on: CPU model and SIMD flags,
    cores, torch's threads, and the GPU's name where ``device`` is a CUDA device."""
    import torch

    record: dict[str, Any] = {
        **software(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": cores(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return record
