"""Evaluation of a trained model on a dataset, as ``simmpnet evaluate`` and ``simmpnet report``
run it: the model loaded once (`simmpnet.loading`), its test split predicted, the metrics,
overlays and the HTML report written.  `simmpnet.evaluation` computes metrics and pages
from predictions; this module is where a model meets them.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data.layouts import default_test_split, open_layout, open_layout_of_model
from .errors import CheckpointError, SimMPNetError
from .evaluation import html_report
from .evaluation.evaluate import evaluate_volumes
from .evaluation.figures import pick_overlays, save_overlay
from .evaluation.html_report import MAX_CASES, MAX_SLICES, ViewerCases
from .evaluation.inference import predict_slices
from .evaluation.jsonio import write_json
from .evaluation.resample import resolve_resample
from .evaluation.tables import write_metrics_markdown
from .files import check_output_folder
from .loading import load_trained_model, resolve_device
from .precision import check_precision

logger = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "probe_cases", "save_overlays", "warn_if_trained_on", "write_report"]


def save_overlays(
    chosen: Sequence[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]], out_dir: Path, names: Sequence[str]
) -> list[Path]:
    """Draw the slices `pick_overlays` kept (image | truth | prediction)."""
    written: list[Path] = []
    for name, index, image, truth, prediction in chosen:
        path = out_dir / f"{name}_slice{index:03d}.png"
        save_overlay(image, truth, prediction, path, class_names=list(names))
        written.append(path)
    return written


def evaluate_checkpoint(
    checkpoint: Path,
    data: Path,
    split: str | None,
    out_dir: Path,
    device: str,
    overlays: int,
    extra: dict | None = None,
    layout: str | None = None,
    layout_options: dict | None = None,
    workers: int = 1,
    resample: str | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> tuple[dict, list[Path]]:
    """Evaluate ``checkpoint`` on the volumes of ``split``; write metrics.json (with ``extra``
    merged in), metrics.md and overlay pictures.  ``layout_options`` override those the model
    was trained with; ``workers`` processes compute the metrics; ``resample`` is how the
    predictions return to the slice size (None: as the model's validation did); ``precision``
    is ``"fp32"``, ``"bf16"`` or ``"auto"`` (`simmpnet.precision`; metrics.json records it,
    resolved).  Returns the summary and the pictures.  Nothing is written unless every case
    was scored."""
    check_output_folder(out_dir)
    check_precision(precision)
    dev = resolve_device(device)
    model, input_size, config = load_trained_model(checkpoint, dev)
    n_classes = getattr(model, "n_classes", None) or config.get("n_classes")
    if not n_classes:
        raise CheckpointError(f"{checkpoint}: the checkpoint does not record its number of classes")
    names = config.get("class_names") or ["background", *(f"class_{i}" for i in range(1, n_classes))]
    in_channels = int(getattr(model, "in_channels", config.get("in_channels", 1)))
    name, found = open_layout_of_model(config, n_classes, in_channels, data, layout, layout_options)
    split = split or default_test_split(found)
    volumes = found.cases(split)
    warn_if_trained_on(config, data, name, split, list(getattr(volumes, "names", [])))
    keep_overlay, chosen = pick_overlays(overlays)

    # The report's viewer takes its cases from these predictions: nothing is predicted twice.
    def on_case(*case: object) -> None:
        keep_overlay(*case)
        viewer.on_case(*case)

    with ViewerCases(model, config, name, split, len(volumes)) as viewer:
        summary = evaluate_volumes(
            model, volumes, input_size, n_classes, names, dev, on_case=on_case, workers=workers,
            resample=resolve_resample(resample, config), progress=progress, precision=precision,
        )
    summary.update(checkpoint=str(checkpoint), data=str(data), layout=name, split=split)
    summary.update(extra or {})
    pictures = save_overlays(chosen, out_dir / "overlays", names)  # drawn once every case is scored
    write_metrics_markdown(summary, out_dir / "metrics.md")
    write_json(summary, out_dir / "metrics.json")
    write_report(out_dir, checkpoint=checkpoint, data=data, viewer=viewer)
    return summary, pictures


def warn_if_trained_on(config: dict, data: Path, layout: str, split: str, cases: list[str]) -> None:
    """Warn when cases of ``split`` were in the model's training split (e.g. another fold
    chosen at evaluation): their scores flatter the model.  Only for the data folder and
    layout the model was trained on, opened with its training options; slices and volumes
    named ``<case>_slice...`` or ``<case>_volume...`` count for their case."""
    root, train_list = config.get("data_root"), config.get("train_list")
    if not (root and train_list and layout == config.get("layout")):
        return
    try:
        if Path(root).resolve() != data.resolve():
            return
        trained = open_layout(layout, data, config.get("n_classes"), None, **dict(config.get("layout_options", {})))
        names = trained.slices(train_list).names
    except (SimMPNetError, OSError, KeyError, AttributeError):
        return  # the training split cannot be listed any more: nothing to compare
    def subject(name: str) -> str:  # the case a slice or volume name belongs to
        return re.split(r"_slice|_volume", str(name))[0]

    seen = {subject(n) for n in names}
    overlap = [c for c in cases if subject(c) in seen]
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        logger.warning(
            "%d of the %d cases of split %r were in the model's training split %r (%s): their scores flatter the model",
            len(overlap), len(cases), split, train_list, shown,
        )


def probe_cases(
    checkpoint: Path, data: Path, layout: str | None, split: str | None, device: str, max_cases: int, max_slices: int,
    layout_options: Mapping[str, Any] | None = None, resample: str | None = None,
) -> dict[str, Any]:
    """Predict the first ``max_cases`` cases of ``split`` with the memory probed (the report
    of a folder that ``evaluate`` did not just write)."""
    dev = resolve_device(device)
    model, input_size, config = load_trained_model(checkpoint, dev)
    n_classes = int(getattr(model, "n_classes", None) or config.get("n_classes"))
    in_channels = int(getattr(model, "in_channels", config.get("in_channels", 1)))
    name, found = open_layout_of_model(config, n_classes, in_channels, data, layout, layout_options)
    split = split or default_test_split(found)
    volumes = found.cases(split)
    resample = resolve_resample(resample, config)
    with ViewerCases(model, config, name, split, len(volumes), max_cases, max_slices) as viewer:
        for index in range(min(max_cases, len(volumes))):
            item = volumes[index]
            image, truth = np.asarray(item["image"]), np.asarray(item["label"])
            viewer.on_case(item["name"], image, truth, predict_slices(model, image, input_size, dev, resample=resample))
    return viewer.result()


def write_report(
    run_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    layout: str | None = None,
    split: str | None = None,
    device: str = "cpu",
    max_cases: int = MAX_CASES,
    max_slices: int = MAX_SLICES,
    layout_options: Mapping[str, Any] | None = None,
    resample: str | None = None,
    viewer: ViewerCases | None = None,
) -> Path:
    """`simmpnet.evaluation.html_report.write_report` (same arguments), with the slice
    viewer and the memory panel predicted by the run's model when ``viewer`` is not given
    (`probe_cases`): what ``simmpnet report`` writes."""
    return html_report.write_report(
        run_dir, output, checkpoint=checkpoint, data=data, layout=layout, split=split, device=device,
        max_cases=max_cases, max_slices=max_slices, layout_options=layout_options, resample=resample,
        viewer=viewer, probe=probe_cases,
    )
