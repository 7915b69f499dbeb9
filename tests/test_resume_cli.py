"""Resuming a run from its folder alone, and a Ctrl-C that saves the run and says how to resume."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, small_train_config

from simmpnet.checkpoint import load_checkpoint
from simmpnet.cli import main

pytestmark = pytest.mark.slow


def _records(run: Path, event: str) -> list[dict]:
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            continue
    return [r for r in records if r.get("event") == event]


def test_train_resume_from_the_run_folder_alone(brain_data, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, run, epochs=2, val_list=None, wld_start_epoch=0)))
    # the run's own flags change its model: a resume must keep them without being told again
    assert main(["--quiet", "train", "--config", str(config), "--set", "warmup_iters=3"]) == 0
    steps_one_epoch = load_checkpoint(run / "last.pt")["state"]["global_step"] // 2
    assert steps_one_epoch > 0

    capsys.readouterr()
    assert main(["--quiet", "train", "--config", str(config), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warmup_iters 3 in the checkpoint, 5 now" in err[0], err
    assert "resolved_config.yaml" in err[0] and f"--output {run} --resume" in err[0]

    assert main(["--quiet", "train", "--output", str(run), "--resume", "--epochs", "3"]) == 0
    state = load_checkpoint(run / "last.pt")["state"]
    assert state["epoch"] == 3 and state["global_step"] == 3 * steps_one_epoch
    resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert resolved["warmup_iters"] == 3 and resolved["epochs"] == 3


def test_resume_of_a_folder_without_a_run_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--output", str(tmp_path / "empty"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no resolved_config.yaml to resume from" in err[0] and str(tmp_path / "empty") in err[0]


def test_ctrl_c_saves_the_run_at_a_step_boundary_and_prints_the_resume_command(brain_data, tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, run, epochs=50, log_every=1, val_list=None)))
    command = [sys.executable, "-m", "simmpnet", "--quiet", "train", "--config", str(config)]
    child = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        errors="replace",
    )
    try:
        # wait for training to be under way (by what it wrote, not by a clock), then Ctrl-C
        deadline = time.monotonic() + 600
        while len(_records(run, "step")) < 2:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no training step logged in 10 minutes"
            time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, (out, err)
    assert f"simmpnet train --output {run} --resume" in out
    saved = load_checkpoint(run / "last.pt")["state"]["global_step"]
    assert saved >= 2
    assert _records(run, "end")[-1]["stop"] == "interrupted"

    done = subprocess.run(
        [sys.executable, "-m", "simmpnet", "--quiet", "train", "--output", str(run), "--resume",
         "--max-steps", str(saved + 2)],
        env=cli_env(), capture_output=True, text=True, encoding="utf-8", errors="replace",
    )
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "last.pt")["state"]["global_step"] == saved + 2
    ends = _records(run, "end")
    assert len(ends) == 1 and ends[0]["stop"] == "max_steps"
