"""The model card that `save_pretrained` writes next to ``config.json``: a ``README.md`` in the
Hugging Face Hub convention (YAML metadata, then Markdown), saying what the model is for and
what not, what it was trained on and how, and the scores of its run where they are known.

A ``README.md`` the user wrote is never replaced: only a card that carries `CARD_MARKER` (one
this module wrote) is rewritten.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["CARD_MARKER", "CARD_NAME", "model_card", "write_model_card"]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
#: Closes every card written here; a README.md without it is the user's and is left alone.
CARD_MARKER = "<!-- model card written by simmpnet save_pretrained; edit freely, then delete this line to keep it -->"

#: Training config keys shown in the card (the rest stays in the run's resolved_config.yaml).
_TRAINING_KEYS = (
    "layout", "data_root", "train_list", "val_list", "model", "variant", "model_overrides", "input_size", "in_channels",
    "n_classes", "epochs", "max_steps", "batch_size", "lr", "optimizer", "seed", "amp", "augment",
)


def _yaml_list(values: Sequence[str]) -> str:
    return "\n".join(f"  - {json.dumps(v)}" for v in values)


def _number(value: Any, percent: bool) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f} %" if percent else f"{value:.2f}"


def _metrics_section(metrics: Mapping[str, Any]) -> list[str]:
    mean = metrics.get("mean") or {}
    unit = metrics.get("distance_unit", "")
    lines = [
        "## Evaluation",
        "",
        f"Scored by `simmpnet evaluate` on {metrics.get('n_cases', '?')} case(s) of split "
        f"`{metrics.get('split', '?')}` of `{metrics.get('data', '?')}` ({metrics.get('layout', '?')} layout), "
        f"headline convention `{metrics.get('headline_convention', '?')}` (docs/evaluation.md).",
        "",
        "| class | DSC | HD95" + (f" ({unit})" if unit else "") + " |",
        "|---|---:|---:|",
    ]
    for name, values in (metrics.get("per_class") or {}).items():
        values = values if isinstance(values, Mapping) else {}
        lines.append(f"| {name} | {_number(values.get('dsc'), True)} | {_number(values.get('hd95'), False)} |")
    lines.append(f"| **mean** | **{_number(mean.get('dsc'), True)}** | **{_number(mean.get('hd95'), False)}** |")
    pooled = (metrics.get("pooled_dsc") or {}).get("mean")
    if pooled is not None:
        lines += ["", f"Pooled DSC (all voxels of all cases at once): {_number(pooled, True)}."]
    return [*lines, ""]


def model_card(
    architecture: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    n_classes: int,
    in_channels: int,
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> str:
    """The card's text: metadata, intended use, the model, its preprocessing, its training
    (``training``: the run's config, when known), its scores (``metrics``: the ``metrics.json``
    of ``simmpnet evaluate`` of this model, when known) and how to load it."""
    names = list(preprocessing.get("class_names") or [f"class {i}" for i in range(n_classes)])
    variant = (training or {}).get("variant")
    window = preprocessing.get("intensity_window")
    lines = [
        "---",
        "library_name: simmpnet",
        "license: other",
        "pipeline_tag: image-segmentation",
        "tags:\n" + _yaml_list(["medical-imaging", "segmentation", "sim-mpnet", "research-only"]),
        "---",
        "",
        "# Sim-MPNet segmentation model",
        "",
        f"A Sim-MPNet (ICCV 2025) network segmenting {n_classes} classes "
        f"({', '.join(names)}) from {in_channels}-channel images, saved by simmpnet {__version__}"
        + (f" from `{source}`" if source else "") + ".",
        "",
        "## Intended use",
        "",
        "**Research use only.** This model is not a medical device: it has not been cleared or approved by "
        "any regulator, and its output must not be used for diagnosis, treatment or any decision about a "
        "patient. It is meant for reproducing and extending research on medical image segmentation, on data "
        "like the data it was trained on. Predictions on images from other scanners, protocols, body parts "
        "or populations than its training data are unvalidated; check them against expert labels before "
        "drawing any conclusion. See the simmpnet documentation, \"Intended use and limits\".",
        "",
        "## Model",
        "",
        f"- Architecture: Sim-MPNet{f' `{variant}`' if variant else ''} (dual encoder, DMW-LA prototype "
        "memory, DS-GIM); the full configuration is in `config.json`.",
        f"- Input: {in_channels} channel(s), slices resized to {preprocessing.get('input_size')} x "
        f"{preprocessing.get('input_size')} pixels (`trained_on: {preprocessing.get('trained_on')}`).",
        "- Intensities: "
        + (f"clipped to the window {list(window)} and scaled to [0, 1]." if window else
           "percentile normalisation (0.5-99.5 %) unless already in [0, 1]."),
        f"- Labels return to the image's size by `{preprocessing.get('resample')}` resampling.",
        f"- Architecture keys: `{json.dumps(dict(architecture), sort_keys=True)}`.",
        "",
    ]
    lines += ["## Training", ""]
    if training:
        lines.append("From the training run's config (the run's `resolved_config.yaml` holds every key):")
        lines.append("")
        lines += [f"- `{key}`: `{json.dumps(training[key])}`" for key in _TRAINING_KEYS if key in training]
        lines.append("")
    else:
        lines += ["Not recorded with these weights (saved from a model in memory, not from a training run).", ""]
    if metrics:
        lines += _metrics_section(metrics)
    lines += [
        "## How to use",
        "",
        "```python",
        "from simmpnet import SimMPNet",
        "",
        'model = SimMPNet.from_pretrained("path/to/this/folder")',
        "labels = model.predict(image)  # (H, W) picture or (D, H, W) volume of raw intensities",
        "```",
        "",
        "or `simmpnet predict --checkpoint path/to/this/folder --input IMAGES --output LABELS`.",
        "",
        CARD_MARKER,
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: Path, text: str) -> Path | None:
    """Write ``directory/README.md`` atomically, unless a README.md without `CARD_MARKER` is
    there (the user's own card: kept, with a log line).  Returns the path written, or None."""
    from .files import atomic_write

    path = directory / CARD_NAME
    if path.is_file() and CARD_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        logger.warning("%s: a README.md that simmpnet did not write is there; kept as it is (no model card written)", path)
        return None
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
