"""TensorBoard event files of a training run (``tensorboard: true``), next to ``log.jsonl``.

The JSON Lines log stays the source of truth: every scalar written here is a field of a record
the trainer also writes to the log (`TensorBoardLog.record` takes those records), so the
two never disagree.  Validations add a few overlay pictures (image | truth | prediction, the
colours of `simmpnet.colours.label_color`).

Tags: ``train/loss``, ``train/k`` and ``train/lr`` per logged step; ``epoch/train_loss`` and
``val/dsc`` per epoch (by step); ``memory/drift/<block>`` the mean prototype drift of each
DMW-LA block; ``val/overlay/<case>`` the pictures.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import InputError
from ..evaluation.figures import pick_overlays
from ..evaluation.training_log import mean_drift

__all__ = ["TensorBoardLog", "check_tensorboard"]

#: Validation cases drawn per validation.
OVERLAY_CASES = 3


def check_tensorboard() -> None:
    """Raise a clear `InputError` (before any work) when the ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise InputError(
            'tensorboard: true needs the tensorboard package: pip install "simmpnet[tensorboard]"'
        ) from exc


class TensorBoardLog:
    """Writes the scalars of the trainer's log records and validation overlays.

    Args:
        folder: the event-file folder (``<output_dir>/tensorboard``).
        purge_step: the events already in ``folder`` with a step >= ``purge_step`` are dropped
            (TensorBoard no longer reads them).  On resume the trainer passes the
            checkpoint's step + 1: the events the interrupted run wrote after its checkpoint go,
            so that curves do not double back, and those up to and including it stay.
    """

    def __init__(self, folder: str | os.PathLike, purge_step: int | None = None) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.fspath(folder), purge_step=purge_step or None)
        self._keep, self._cases = pick_overlays(OVERLAY_CASES)

    def record(self, record: dict[str, Any]) -> None:
        """The scalars of one log record (``event`` step or epoch; others are ignored)."""
        step = record.get("step")
        if step is None:
            return
        event = record.get("event")
        if event == "step":
            scalars = {"train/loss": record.get("loss"), "train/k": record.get("k"), "train/lr": record.get("lr")}
        elif event == "epoch":
            scalars = {"epoch/train_loss": record.get("train_loss"), "val/dsc": record.get("val_dsc")}
            for block, entry in (record.get("memory") or {}).items():
                scalars[f"memory/drift/{block.replace(' ', '_')}"] = mean_drift(entry)
        else:
            return
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag, value, int(step))

    def keep_case(self, name: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        """``on_case`` of `evaluate_volumes`: keeps the slice
        with the most foreground of the first `OVERLAY_CASES` cases."""
        self._keep(name, image, truth, prediction)

    def overlays(self, step: int) -> None:
        """Write the pictures of the cases kept since the last call."""
        from ..evaluation.figures import overlay_panels

        for name, _, image, truth, prediction in self._cases:
            self.writer.add_image(f"val/overlay/{name}", overlay_panels(image, truth, prediction), step, dataformats="HWC")
        self._cases.clear()

    def close(self) -> None:
        self.writer.close()
