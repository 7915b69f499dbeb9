import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


#: torch's intra-op thread count at the start of the session.  Code under test changes it for
#: the whole process (the `threads` option of a training run), and kernels split their sums by
#: thread, so every test starts from this count: no result depends on the tests run before.
SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.set_num_threads(SESSION_THREADS)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(SESSION_THREADS)


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """`simmpnet.cli.main` sets up logging for its process (``logging.basicConfig(force=True)``
    on the stderr of the moment): in a test, a handler on the test's captured stderr, closed
    once the test ends. A later test's log record would hit that closed stream and print a
    logging error into that test's stderr, so the handler goes with the test."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def brain_data(tmp_path_factory):
    """The real demo data (Colin27 MRI + AAL lobes) in the Synapse layout, plus a list
    `lists/small.txt` of 16 training slices for quick training runs."""
    from simmpnet.data import prepare_brain_demo

    root = prepare_brain_demo(tmp_path_factory.mktemp("brain"))
    names = (root / "lists" / "train.txt").read_text().split()
    (root / "lists" / "small.txt").write_text("\n".join(names[::7][:16]) + "\n")
    return root


def small_train_config(data_root, output_dir, **changes):
    """A Sim-MPNet `tiny` run shrunk to 64 px slices for tests (seconds per epoch)."""
    config = {
        "data_root": str(data_root),
        "train_list": "small",
        "val_list": "test_vol",
        "n_classes": 9,
        "model": "simmpnet",
        "variant": "tiny",
        "model_overrides": {"img_size_a": 64, "img_size_b": 56},
        "input_size": 64,
        "warmup_iters": 5,
        "batch_size": 4,
        "epochs": 3,
        "lr": 1e-3,
        "wld_start_epoch": 1,
        "eval_start_epoch": 2,
        "eval_every": 1,
        "device": "cpu",
        "threads": 1,
        "progress": False,
        "output_dir": str(output_dir),
    }
    config.update(changes)
    return config


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m simmpnet` child process: this one, with the package's
    source folder importable."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), **extra)


# ------------------------------------------------------------------ DICOM conformance
def dciodvfy_findings(path) -> tuple[list[str], list[str]] | None:
    """The error and warning lines dciodvfy (Debian package dicom3tools) prints for a DICOM
    file, or None where dciodvfy is not installed (the slow test of
    tests/test_dicom_seg_edges.py installs it)."""
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        return None
    report = subprocess.run([tool, str(path)], capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=120, check=False)
    lines = (report.stdout + report.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def check_dicom_seg(path) -> None:
    """Every test that writes a DICOM-SEG passes it here: any error dciodvfy finds fails the
    test (where dciodvfy is installed)."""
    findings = dciodvfy_findings(path)
    if findings is not None:
        assert findings[0] == [], f"dciodvfy on {path}: " + "; ".join(findings[0])


# ------------------------------------------------------------------ the paths-agree table
#: Rows recorded by the "paths agree" checks (tests/test_paths_agree.py, tests/test_nnunet.py):
#: (model, path, reference, pixels equal, max |logit difference| or None, rule).
PATHS_AGREE: list[tuple[str, str, str, float, float | None, str]] = []


@pytest.fixture(scope="session")
def paths_agree():
    """Record one row of the paths-agree table: ``record(model, path, reference, labels, expected,
    logits=None, expected_logits=None, rule="bitwise")``; returns the share of equal pixels."""
    import numpy as np

    def record(model, path, reference, labels, expected, logits=None, expected_logits=None, rule="bitwise"):
        labels, expected = np.asarray(labels), np.asarray(expected)
        assert labels.shape == expected.shape, (path, labels.shape, expected.shape)
        equal = float((labels == expected).mean())
        diff = None
        if logits is not None:
            diff = float(np.abs(np.asarray(logits, dtype=np.float64) - np.asarray(expected_logits, dtype=np.float64)).max())
        PATHS_AGREE.append((model, path, reference, equal, diff, rule))
        return equal, diff

    return record


def pytest_sessionfinish(session, exitstatus):
    """With SIMMPNET_PATHS_TABLE=FILE, write the rows recorded in this session as a markdown
    table, with the date, commit, machine and versions (docs/paths-agree.md is made so)."""
    target = os.environ.get("SIMMPNET_PATHS_TABLE")
    if not target or not PATHS_AGREE:
        return
    import datetime
    import platform
    import subprocess

    def run(*args):
        try:
            return subprocess.run(args, capture_output=True, text=True, encoding="utf-8", errors="replace", check=False).stdout.strip()
        except OSError:
            return ""

    lscpu = run("lscpu")
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), [])
    shown_flags = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))
    lines = [
        f"Date {datetime.date.today().isoformat()}, commit `{run('git', 'rev-parse', '--short', 'HEAD') or '?'}`"
        f"{' (with uncommitted changes)' if run('git', 'status', '--porcelain', '--untracked-files=no') else ''}, "
        f"{model_name} ({os.cpu_count()} cores; flags {shown_flags}), Python {platform.python_version()}, "
        f"torch {torch.__version__}; pytest exit status {int(exitstatus)}.",
        "",
        "| model | path | compared with | pixels equal | max abs logit diff | rule |",
        "|---|---|---|---:|---:|---|",
    ]
    for model, path, reference, equal, diff, rule in PATHS_AGREE:
        shown_diff = "" if diff is None else f"{diff:.1e}"
        lines.append(f"| {model} | {path} | {reference} | {100 * equal:.4f} % | {shown_diff} | {rule} |")
    Path(target).write_text("\n".join(lines) + "\n")


Found = TypeVar("Found")


def debian_tool(packages: list[str], find: Callable[[], Found | None], required: bool = False) -> Found:
    """What ``find`` returns once Debian's ``packages`` are installed, with apt-get when missing
    (CI runs as root; an update and a second try when the first install fails).  Without
    apt-get the test is skipped; when the install fails it is skipped too, or failed when the
    tool is ``required`` (a check that must really run)."""
    found = find()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"cannot be installed here: no apt-get (install {' '.join(packages)})")
    log = []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ([apt, "install", "-y", *packages], [apt, "update"], [apt, "install", "-y", *packages]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  timeout=900, check=False, env=env)
        except (OSError, subprocess.SubprocessError) as exc:
            log.append(f"{' '.join(command[1:])}: {exc}")
            break
        log.append(f"{' '.join(command[1:])}: exit {done.returncode} {done.stderr.strip()[-300:]}")
        found = find()
        if found:
            return found
    message = f"apt-get install {' '.join(packages)} failed (not root, or no package source): " + " | ".join(log)
    if required:
        pytest.fail(message)
    pytest.skip(message)

