"""Evaluation: medpy-compatible segmentation metrics, per-class case evaluation, summaries."""
from __future__ import annotations

from simmpnet.evaluation.metrics import (
    CONVENTIONS,
    METRIC_NAMES,
    asd,
    assd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    pooled_dice,
    summarize,
    surface_distances,
)

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "asd",
    "assd",
    "dice",
    "evaluate_case",
    "hd95",
    "jaccard",
    "pooled_dice",
    "summarize",
    "surface_distances",
]
