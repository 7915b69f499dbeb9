"""How a prediction made at the network's input size returns to the slice's own size.

- ``"labels"`` (the paper's): the label map at the network's size is resized back with
  nearest-neighbour interpolation;
- ``"logits"``: the logits are interpolated bilinearly to the slice's size and the label is
  their argmax there, as nnU-Net does with its class scores.

The alternative to resizing, ``inference="sliding-window"``, predicts tiles of the network's
input size at the slice's own resolution (`simmpnet.evaluation.sliding_window`), so
nothing returns to the slice's size and ``resample`` does not apply.

This module holds the names only (no torch), so that the command line can list them without
importing the network; `simmpnet.evaluation.inference` does the resizing.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "INFERENCE_MODES",
    "TRAINED_ON",
    "check_sliding_window",
    "RESAMPLE_MODES",
    "RESAMPLE_WORDS",
    "check_inference",
    "check_resample",
    "resolve_resample",
]

#: How a prediction returns to the slice's size (see the module docstring), in the words of
#: the reports.
RESAMPLE_WORDS = {
    "labels": "a nearest resize of the label map (the paper's)",
    "logits": "a bilinear interpolation of the logits, then the argmax",
}
RESAMPLE_MODES = tuple(RESAMPLE_WORDS)

#: How slices meet the network: ``"resize"`` (the paper's: each slice resized to the input
#: size) or ``"sliding-window"`` (overlapping tiles of the input size at the slice's own
#: resolution, see `simmpnet.evaluation.sliding_window`).
INFERENCE_MODES = ("resize", "sliding-window")


def check_resample(resample: str) -> None:
    """Raise an `InputError` unless ``resample`` is one of `RESAMPLE_MODES`."""
    if resample not in RESAMPLE_MODES:
        raise InputError(f"resample must be one of {list(RESAMPLE_MODES)}, got {resample!r}")


def check_inference(inference: str, overlap: float, resample: str | None = None) -> None:
    """Raise an `InputError` unless ``inference`` is one of `INFERENCE_MODES` and
    ``overlap`` (the fraction of a tile its neighbours share) is in ``[0, 1)``; a ``resample``
    given explicitly (not None) is refused with ``"sliding-window"``, which predicts at the
    slice's own size and has nothing to resample."""
    if inference not in INFERENCE_MODES:
        raise InputError(f"inference must be one of {list(INFERENCE_MODES)}, got {inference!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap < 1:
        raise InputError(f"overlap must be a number in [0, 1), got {overlap!r}")
    if resample is not None and inference == "sliding-window":
        raise InputError(
            f"resample={resample!r} applies to inference='resize' only: the sliding window predicts "
            "at the image's own size"
        )


def resolve_resample(resample: str | None, config: Mapping[str, Any]) -> str:
    """The mode a trained model predicts with: ``resample`` when given, else its training
    config's ``resample``, else ``"labels"``; checked, so that a hand-edited checkpoint fails
    before anything is written."""
    chosen = resample or config.get("resample", "labels")
    check_resample(chosen)
    return chosen


#: What a network can have been trained on (`Preprocessing.trained_on`).
TRAINED_ON = ("resized-slices", "native-crops")


def check_sliding_window(prep: Any, source: str = "the model", warn: bool = True) -> None:
    """Refuse sliding-window prediction for a network trained on resized slices (``prep``: its
    `Preprocessing`, or None): its tiles
    would show it the image at another scale than the one it learnt, and the labels are wrong
    without any error.  A network that does not record how it was trained is let through, with
    a warning when ``warn``."""
    trained_on = None if prep is None else prep.trained_on
    if trained_on == "resized-slices":
        raise InputError(
            f"{source}: sliding-window prediction needs a network trained on native-resolution crops, and this one "
            f"was trained on whole slices resized to {prep.input_size} x {prep.input_size}; use the resize inference "
            "(--inference resize, the default)"
        )
    if trained_on is None and warn:
        logger.warning(
            "%s: does not record how it was trained; sliding-window prediction is valid only for a network trained "
            "on crops at the images' own resolution", source,
        )
