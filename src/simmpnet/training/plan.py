"""The plan of a training run: how long it is, and when validation, W-LD and the DMW-LA
memory start within it.

The paper's schedule (validation and W-LD from epoch 100 of 300, a 2000-forward warm-up) is
written for a long run.  Left unset (``None``), the three keys scale with the run as the paper
places them: a third of the way through.  Set explicitly to a point the run never reaches by
its ``epochs``, they are refused, since validation would never run (no ``best.pt``), ``K``
would never move or the memory never be read.  A run cut earlier by ``max_steps`` is a choice
of the user (a smoke test, a fixed step count): it is not refused, and the plan's ``warnings``
say what it will miss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

__all__ = ["RunPlan", "plan_run", "scaled_warmup", "scaled_wld_start", "steps_per_epoch"]


def steps_per_epoch(n_slices: int, batch_size: int) -> int:
    """Optimisation steps of one epoch: full batches only (a ragged last batch is dropped)
    unless the split holds at most one batch."""
    return max(1, n_slices // batch_size)


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, resolved from its config and the size of its training split."""

    steps_per_epoch: int
    epochs: int  # the epochs the run reaches (``epochs``, or fewer when ``max_steps`` cuts it)
    steps: int
    eval_start_epoch: int | None  # None: no validation split
    wld_start_epoch: int | None  # None: W-LD drives no block
    warmup_iters: int | None  # None: no DMW-LA memory, or set through model_overrides
    scaled: tuple[str, ...] = ()  # the keys left unset and scaled to the run
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs, "steps": self.steps,
            "eval_start_epoch": self.eval_start_epoch, "wld_start_epoch": self.wld_start_epoch,
            "warmup_iters": self.warmup_iters, "scaled": list(self.scaled),
        }


def _a_third(total: int, least: int) -> int:
    return max(least, total // 3)


def scaled_warmup(variant_warmup: int, steps: int) -> int:
    """The DMW-LA warm-up of a run of ``steps`` optimiser steps: the variant's, but at most a
    third of the run (at least 1)."""
    return min(variant_warmup, _a_third(steps, 1))


def scaled_wld_start(epochs: int) -> int:
    """The epoch from which W-LD acts in a run of ``epochs``: a third of the way through (the
    paper: epoch 100 of 300)."""
    return _a_third(epochs, 0)


def plan_run(
    config: Any,
    n_slices: int,
    variant_warmup: int | None,
    memory_parts: tuple[str, ...] = ("encoder", "decoder"),
) -> RunPlan:
    """The `RunPlan` of ``config`` (a `TrainConfig`) on a
    training split of ``n_slices`` slices; ``variant_warmup`` is the warm-up the network would
    have without ``warmup_iters`` (None for a network without DMW-LA memory, or when
    ``model_overrides`` sets it); ``memory_parts`` the parts of the network whose blocks hold
    a DMW-LA memory (``SimMPNetConfig.memory_parts``): W-LD has a plan only where
    ``wld_blocks`` names one of them.

    Raises:
        InputError: a key set to a point that the run's ``epochs`` never reach, named with
            the values that would work.
    """
    per_epoch = steps_per_epoch(n_slices, config.batch_size)
    full_steps = per_epoch * config.epochs
    steps = full_steps if config.max_steps is None else min(full_steps, config.max_steps)
    epochs = math.ceil(steps / per_epoch)
    scaled: list[str] = []
    warnings: list[str] = []
    cut = f"max_steps {config.max_steps} ends the run in epoch {epochs} of {config.epochs}"

    eval_start = None
    if config.val_list:
        eval_start = config.eval_start_epoch
        if eval_start is None:
            eval_start = _a_third(epochs, 1)
            scaled.append("eval_start_epoch")
        elif eval_start > config.epochs:
            raise InputError(
                f"eval_start_epoch {eval_start} comes after the last of the {config.epochs} epochs: validation "
                f"would never run and no best.pt be written; set it to at most {config.epochs} (or leave it "
                "out: a third of the run), or set val_list: null to train without validation"
            )
        elif eval_start > epochs:
            warnings.append(f"{cut}, before eval_start_epoch {eval_start}: no validation, no best.pt")

    wld_start = None
    drives = bool(memory_parts) if config.wld_blocks == "all" else config.wld_blocks in memory_parts
    if config.model == "simmpnet" and drives:
        wld_start = config.wld_start_epoch
        if wld_start is None:
            wld_start = scaled_wld_start(epochs)
            scaled.append("wld_start_epoch")
        elif wld_start > config.epochs - 2:
            # epochs count from 0 here: K follows the losses from epoch wld_start + 1 on
            fix = (
                f"set it to at most {config.epochs - 2} (or leave it out: a third of the run)"
                if config.epochs >= 2 else "leave it out or set wld_blocks: none"
            )
            raise InputError(
                f"wld_start_epoch {wld_start} leaves no epoch of the {config.epochs} in which W-LD changes K "
                f"(it acts from the epoch after it, counted from 0); {fix}"
            )
        elif wld_start > epochs - 2:
            warnings.append(f"{cut}, before W-LD acts (wld_start_epoch {wld_start})")

    warmup = None
    if variant_warmup is not None:
        warmup = config.warmup_iters
        if warmup is None:
            warmup = scaled_warmup(variant_warmup, steps)
            if warmup != variant_warmup:
                scaled.append("warmup_iters")
        elif warmup >= full_steps:
            raise InputError(
                f"warmup_iters {warmup} is not below the {full_steps} steps of the run ({config.epochs} epochs of "
                f"{per_epoch}): the DMW-LA memory would never be clustered and read; set it below {full_steps} "
                "(or leave it out: the variant's, at most a third of the run)"
            )
        elif warmup >= steps:
            warnings.append(f"{cut}, before the DMW-LA warm-up ends (warmup_iters {warmup})")
    return RunPlan(per_epoch, epochs, steps, eval_start, wld_start, warmup, tuple(scaled), tuple(warnings))
