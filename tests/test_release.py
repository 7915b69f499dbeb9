"""The release build: an sdist and a wheel built from the project's tracked files (the wheel from
the sdist, so that the sdist is known complete), the wheel installed into a new virtual
environment, and the installed package smoke-tested there: `simmpnet --version`, its package
data, and a prediction with a saved model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the source tree
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, **kwargs)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _tracked_copy(target: Path) -> Path:
    """The files git tracks (a release is built from those, not from what lies around)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the release is built from the tracked files")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_the_release_builds_installs_and_runs(tmp_path):
    pytest.importorskip("build", reason="the test extra installs build")
    source = _tracked_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    # no isolation: the build backend of this environment (no download); sdist first, then
    # the wheel built from the unpacked sdist
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)])
    (wheel,) = dist.glob("simmpnet-*.whl")
    (sdist,) = dist.glob("simmpnet-*.tar.gz")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)])
    # The dependencies (torch and the rest, gigabytes) come from this environment's
    # site-packages, added after the install so that pip never sees this project's own
    # development install there.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    version = _run([str(venv / "bin" / "simmpnet"), "--version"]).stdout.strip()
    from simmpnet import __version__

    assert version == f"simmpnet {__version__}" and wheel.name.startswith(f"simmpnet-{__version__}-")
    where = _run([str(python), "-c", "import simmpnet, pathlib; print(pathlib.Path(simmpnet.__file__).parent)"])
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv), installed  # the wheel's copy, not the source tree
    assert (installed / "configs" / "brain_demo.yaml").is_file()  # package data

    import torch

    from simmpnet import SimMPNet

    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", n_classes=3, img_size_a=64, img_size_b=56)
    model.save_pretrained(tmp_path / "model")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 72), dtype=np.uint8)).save(tmp_path / "slice.png")
    _run([str(venv / "bin" / "simmpnet"), "--quiet", "predict", "--checkpoint", str(tmp_path / "model"),
          "--input", str(tmp_path / "slice.png"), "--output", str(tmp_path / "out"), "--device", "cpu"])
    labels = np.asarray(Image.open(tmp_path / "out" / "slice.png"))
    assert labels.shape == (80, 72) and labels.max() < 3
    assert sdist.stat().st_size > 0
