"""The report writers under one name: JSON (`simmpnet.evaluation.jsonio`), metric tables
(`simmpnet.evaluation.tables`), overlay pictures and training curves
(`simmpnet.evaluation.figures`), the training log (`simmpnet.evaluation.training_log`) and the
label colours (`simmpnet.colours`)."""
from __future__ import annotations

from ..colours import CLASS_COLORS, label_color, label_palette
from .figures import overlay_panels, pick_overlays, plot_curves, save_overlay
from .jsonio import write_json
from .tables import format_comparison, format_table, metrics_markdown, write_metrics_markdown
from .training_log import mean_drift, read_training_log

__all__ = [
    "CLASS_COLORS",
    "format_comparison",
    "format_table",
    "label_color",
    "label_palette",
    "mean_drift",
    "metrics_markdown",
    "overlay_panels",
    "pick_overlays",
    "plot_curves",
    "read_training_log",
    "save_overlay",
    "write_json",
    "write_metrics_markdown",
]
