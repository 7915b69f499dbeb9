"""How a prediction made at the network's input size returns to the slice's own size.

- ``"labels"`` (the paper's): the label map at the network's size is resized back with
  nearest-neighbour interpolation;
- ``"logits"``: the logits are interpolated bilinearly to the slice's size and the label is
  their argmax there, as nnU-Net does with its class scores.

This module holds the names only (no torch), so that the command line can list them without
importing the network; :mod:`simmpnet.evaluation.inference` does the resizing.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError

__all__ = ["RESAMPLE_MODES", "RESAMPLE_WORDS", "check_resample", "resolve_resample"]

#: How a prediction returns to the slice's size (see the module docstring), in the words of
#: the reports.
RESAMPLE_WORDS = {
    "labels": "a nearest resize of the label map (the paper's)",
    "logits": "a bilinear interpolation of the logits, then the argmax",
}
RESAMPLE_MODES = tuple(RESAMPLE_WORDS)


def check_resample(resample: str) -> None:
    """Raise an :class:`InputError` unless ``resample`` is one of :data:`RESAMPLE_MODES`."""
    if resample not in RESAMPLE_MODES:
        raise InputError(f"resample must be one of {list(RESAMPLE_MODES)}, got {resample!r}")


def resolve_resample(resample: str | None, config: Mapping[str, Any]) -> str:
    """The mode a trained model predicts with: ``resample`` when given, else its training
    config's ``resample``, else ``"labels"``; checked, so that a hand-edited checkpoint fails
    before anything is written."""
    chosen = resample or config.get("resample", "labels")
    check_resample(chosen)
    return chosen
