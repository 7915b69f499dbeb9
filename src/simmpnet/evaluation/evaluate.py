"""Evaluate a network on labelled volumes: slice-wise prediction, per-case and per-class
metrics under both conventions, and the summary that `metrics.json` holds."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .inference import predict_slices
from .metrics import evaluate_case, summarize

logger = logging.getLogger(__name__)

__all__ = ["evaluate_volumes"]


def evaluate_volumes(
    model: nn.Module,
    volumes: Iterable[dict[str, Any]],
    input_size: int,
    n_classes: int,
    class_names: Sequence[str],
    device: torch.device | str = "cpu",
    on_case: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Predict and score every volume.

    Args:
        model: the network (put in ``eval()`` mode; never changed).
        volumes: cases of a layout (:mod:`simmpnet.data.layouts`): ``image`` (D, H, W) or
            (D, H, W, C), ``label`` (D, H, W), ``name`` and ``spacing`` (D, H, W) in mm or None.
        input_size: slice side the network expects.
        n_classes: classes including background.
        class_names: names of all classes, background first.
        device: where the model lives.
        on_case: called as ``on_case(name, image, truth, prediction)`` after each case (for
            pictures), without holding every volume in memory.

    Returns:
        the :func:`simmpnet.evaluation.metrics.summarize` dictionary (headline: empty/empty
        excluded, HD95/ASD in mm; the paper protocol next to it).
    """
    results: dict[str, Any] = {}
    for item in volumes:
        image, truth = np.asarray(item["image"]), np.asarray(item["label"])
        prediction = predict_slices(model, image, input_size, device)
        results[item["name"]] = evaluate_case(prediction, truth, n_classes, spacing=item.get("spacing"))
        if on_case is not None:
            on_case(item["name"], image, truth, prediction)
        logger.debug("evaluated %s", item["name"])
    return summarize(results, list(class_names[1:]))
