"""The JSON Lines training log (``log.jsonl``) read back: `read_training_log` reads it
leniently (malformed lines skipped with a warning), `mean_drift` sums up the DMW-LA prototype
drift of an epoch record."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .jsonio import _is_number

__all__ = ["mean_drift", "read_training_log"]

logger = logging.getLogger(__name__)


def mean_drift(entry: Any) -> float | None:
    """The mean over categories of a DMW-LA block's prototype drift in an epoch record of the
    training log (``record["memory"][block]``); None where the record has none."""
    drift = [d for d in (entry or {}).get("drift") or [] if _is_number(d)]
    return sum(drift) / len(drift) if drift else None


def read_training_log(jsonl_path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """Read a JSON Lines training log leniently.

    Each line is a JSON object. Lines with ``"event": "step"`` need numeric ``step`` and
    ``loss``; lines with ``"event": "epoch"`` need numeric ``epoch``, ``step`` and
    ``train_loss`` and may carry ``val_dsc`` (number or null). Blank lines and other events
    are ignored; malformed lines (invalid JSON, not an object, missing or non-numeric fields)
    are skipped with a logged warning that gives the line number.

    Args:
        jsonl_path: the log file.

    Returns:
        ``{"step": [...], "loss": [...], "epoch_step": [...], "epoch": [...],
        "train_loss": [...], "val_epoch": [...], "val_dsc": [...]}`` (floats, in file order;
        ``epoch_step``/``epoch``/``train_loss`` are parallel, as are ``val_epoch``/``val_dsc``).

    Raises:
        InputError: the file is missing or unreadable.
    """
    path = Path(jsonl_path)
    if not path.is_file():
        raise InputError(f"{path}: training log not found")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read training log ({type(exc).__name__}: {exc})") from exc
    out: dict[str, list[float]] = {
        k: [] for k in ("step", "loss", "epoch_step", "epoch", "train_loss", "val_epoch", "val_dsc")
    }
    skipped = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            logger.warning("%s:%d: skipped, not valid JSON (%s)", path, lineno, exc.msg)
            skipped += 1
            continue
        if not isinstance(rec, dict):
            logger.warning("%s:%d: skipped, not a JSON object", path, lineno)
            skipped += 1
            continue
        event = rec.get("event")
        if event == "step":
            if not (_is_number(rec.get("step")) and _is_number(rec.get("loss"))):
                logger.warning("%s:%d: skipped step record without numeric 'step' and 'loss'", path, lineno)
                skipped += 1
                continue
            out["step"].append(float(rec["step"]))
            out["loss"].append(float(rec["loss"]))
        elif event == "epoch":
            if not all(_is_number(rec.get(k)) for k in ("epoch", "step", "train_loss")):
                logger.warning(
                    "%s:%d: skipped epoch record without numeric 'epoch', 'step' and 'train_loss'",
                    path, lineno,
                )
                skipped += 1
                continue
            out["epoch"].append(float(rec["epoch"]))
            out["epoch_step"].append(float(rec["step"]))
            out["train_loss"].append(float(rec["train_loss"]))
            val = rec.get("val_dsc")
            if _is_number(val):
                out["val_epoch"].append(float(rec["epoch"]))
                out["val_dsc"].append(float(val))
            elif val is not None:
                logger.warning("%s:%d: ignored non-numeric 'val_dsc' %r", path, lineno, val)
    non_finite = sum(not math.isfinite(v) for k in ("loss", "train_loss", "val_dsc") for v in out[k])
    if non_finite:
        logger.warning("%s: %d NaN/infinite loss or DSC value(s) (shown as gaps)", path, non_finite)
    logger.debug(
        "%s: %d step, %d epoch records, %d skipped line(s)",
        path, len(out["step"]), len(out["epoch"]), skipped,
    )
    return out
