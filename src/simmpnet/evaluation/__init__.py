"""Evaluation: medpy-compatible segmentation metrics, per-class case evaluation, summaries."""
from __future__ import annotations

from .._lazy import lazy_attributes

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
__getattr__, __dir__ = lazy_attributes(__name__, {name: "simmpnet.evaluation.metrics" for name in __all__})
