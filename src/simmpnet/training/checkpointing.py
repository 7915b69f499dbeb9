"""What a training run keeps on disk besides its weights: the files that mark a folder as
holding a run (`RUN_FILES`, `check_run_folder`), the RNG state of a training checkpoint, the
check that a checkpoint belongs to the config resuming it, and the rewind of ``log.jsonl`` to
the checkpoint a run resumes from."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import TRAIN_FORMAT, load_checkpoint
from ..errors import CheckpointError, InputError
from ..files import atomic_write

__all__ = ["RUN_FILES", "check_run_folder", "read_training_checkpoint", "restore_rng_state", "rewind_log", "rng_state"]

#: The files by which an output folder holds a training run.
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "resolved_config.yaml")


def check_run_folder(output_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """The run files already in ``output_dir``; an `InputError` if there are any and
    ``overwrite`` is false, so that a new run never mixes its checkpoints and log with another's."""
    found = [name for name in RUN_FILES if (Path(output_dir) / name).exists()]
    if found and not overwrite:
        raise InputError(
            f"{output_dir}: holds a training run ({', '.join(found)}); continue it with --resume, "
            f"replace it with --overwrite, or choose another --output"
        )
    return found


def rng_state(device: torch.device, distributed: bool) -> dict[str, Any]:
    """The torch RNG state for a checkpoint: the CPU's, ``device``'s, and every GPU's
    outside distributed training."""
    # The RNG state is the same on every rank (same seed, same draws).
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda_device"] = torch.cuda.get_rng_state(device)
    if torch.cuda.is_available() and not distributed:
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: dict[str, Any], device: torch.device, distributed: bool) -> None:
    """Set the torch RNG state that `rng_state` saved."""
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda_device" in rng:
        torch.cuda.set_rng_state(rng["cuda_device"], device)
    elif "cuda" in rng and torch.cuda.is_available() and not distributed:
        torch.cuda.set_rng_state_all(rng["cuda"])


def read_training_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The payload of the training checkpoint ``path``; a `CheckpointError` unless it is one,
    written for the model settings ``identity`` (`TrainConfig.model_identity`)."""
    payload = load_checkpoint(path, map_location="cpu")
    if payload.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a simmpnet training checkpoint")
    mine = _plain(identity)
    theirs = payload.get("identity")
    if theirs != mine:
        theirs = theirs if isinstance(theirs, dict) else {}
        differ = ", ".join(
            f"{key} {theirs.get(key)!r} in the checkpoint, {mine.get(key)!r} now"
            for key in sorted(set(mine) | set(theirs)) if theirs.get(key) != mine.get(key)
        )
        raise CheckpointError(
            f"{path}: written for another model configuration ({differ}); resume with the run's own config "
            f"(simmpnet train --output {path.parent} --resume, which reads {path.parent / 'resolved_config.yaml'})"
        )
    return payload


def rewind_log(log: Path, step: int, epoch: int) -> None:
    """Drop the records of the training log ``log`` written after the checkpoint being resumed
    (at ``step`` and ``epoch``: the steps a killed run did not save, a line cut off by the kill),
    so that the resumed run logs those steps once, as an uninterrupted run would.  The end
    record goes too: the resumed run writes its own when it stops (a run killed after its end
    record, before it exited, would otherwise end twice)."""
    if not log.is_file():
        return
    kept: list[str] = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("event") == "end":
            continue
        at_step, at_epoch = record.get("step"), record.get("epoch", 0)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (at_step, at_epoch))
        if numbers and at_step <= step and at_epoch <= epoch:
            kept.append(line)
    atomic_write(log, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))


def _plain(value: Any) -> Any:
    """Containers of plain Python values only (checkpoints are read with weights_only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
