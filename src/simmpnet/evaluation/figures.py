"""Pictures: overlays of label maps on a slice (`overlay_panels`, `save_overlay`, and
`pick_overlays` to choose the slices) and the training curves of a run (`plot_curves`).

`save_overlay` writes one PNG with the panels image | truth | prediction (or image |
prediction), labels in the fixed colours `CLASS_COLORS`, with a legend; `plot_curves` plots
a training log (`simmpnet.evaluation.training_log.read_training_log`) as loss vs step and
validation DSC vs epoch.

Pictures are drawn on a `matplotlib.figure.Figure` with the Agg canvas directly: no
``pyplot``, no display, no global figure registry, so nothing accumulates when thousands of
overlays are written; every figure is cleared after saving. All files are written through
`simmpnet.files.atomic_write` (temporary file in the same folder, then `os.replace`); every
error is an `InputError` with a one-line message naming the file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..colours import label_color
from ..errors import InputError
from ..files import atomic_write
from .training_log import read_training_log

__all__ = ["overlay_panels", "pick_overlays", "plot_curves", "save_overlay"]


def _new_figure(width: float, height: float) -> Any:
    """A Figure on an Agg canvas, outside pyplot (nothing to close, nothing global)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise InputError("drawing pictures needs matplotlib (pip install matplotlib)") from exc
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _release(fig: Any) -> None:
    """Clear a figure and drop its cached Agg renderer (the pixel buffer), so that the
    memory is returned at once instead of waiting for the cyclic garbage collector."""
    canvas = fig.canvas
    fig.clear()
    for attr in ("renderer", "_lastKey"):
        if attr in vars(canvas):
            delattr(canvas, attr)


def _save_figure(fig: Any, path: Path, dpi: int) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), suffix=".png")
    finally:
        _release(fig)


def _display_rgb(image: Any, where: Path) -> np.ndarray:
    """Image (H x W, H x W x 1 or H x W x 3) -> float RGB in [0, 1] for display."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{where}: image must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputError(f"{where}: image must be H x W or H x W x 3, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{where}: image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float64) / 255.0
    else:
        out = arr.astype(np.float64)
        if not np.isfinite(out).all():
            raise InputError(f"{where}: image holds NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return out


def _label_array(labels: Any, name: str, shape: tuple[int, int], where: Path) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{where}: {name} must be an integer label map, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise InputError(f"{where}: {name} shape {arr.shape} does not match the image ({shape})")
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or np.any(arr != np.round(arr))):
        raise InputError(f"{where}: {name} must hold whole class ids")
    if arr.size and arr.min() < 0:
        raise InputError(f"{where}: {name} holds negative class ids")
    return arr.astype(np.int64)


def _blend(base: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    out = base.copy()
    for c in np.unique(labels):
        if c == 0:
            continue
        mask = labels == c
        out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(label_color(int(c)))
    return out


def overlay_panels(image2d: Any, truth2d: Any, pred2d: Any, alpha: float = 0.5) -> np.ndarray:
    """The panels image | truth | prediction of `save_overlay` side by side, without
    titles or legend, as one ``(H, 3 W, 3)`` uint8 array (for TensorBoard and the HTML report).

    Raises:
        InputError: shapes that do not match, non-integer or negative labels.
    """
    where = Path("overlay")
    base = _display_rgb(image2d, where)
    shape = (base.shape[0], base.shape[1])
    truth = _label_array(truth2d, "truth", shape, where)
    pred = _label_array(pred2d, "prediction", shape, where)
    panels = np.concatenate([base, _blend(base, truth, alpha), _blend(base, pred, alpha)], axis=1)
    return np.round(np.clip(panels, 0.0, 1.0) * 255.0).astype(np.uint8)


def pick_overlays(limit: int) -> tuple[Callable[[str, np.ndarray, np.ndarray, np.ndarray], None], list]:
    """An ``on_case`` callback for `evaluate_volumes` that
    keeps the slice with the most foreground of each case, up to ``limit`` cases, and the list
    it fills with ``(name, slice index, image, truth, prediction)``; empty the list to keep
    ``limit`` more."""
    chosen: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []

    def on_case(name: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        if len(chosen) >= limit:
            return
        index = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(1)))
        # copies: a view would keep the whole volume alive until the end
        chosen.append((name, index, image[index].copy(), truth[index].copy(), prediction[index].copy()))

    return on_case, chosen


def save_overlay(
    image2d: Any,
    truth2d: Any | None,
    pred2d: Any,
    path: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    title: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """Save one PNG with the panels image | truth | prediction (image | prediction without truth).

    Labels are blended over the image in the fixed colours `CLASS_COLORS` (class ``c``
    -> ``CLASS_COLORS[(c - 1) % 20]``, background not drawn); a legend below the panels names
    the classes. All panels have the same size, so the picture is ``n_panels * panel_inches``
    wide. The figure never enters pyplot and is cleared after saving (no memory growth over
    thousands of calls).

    Args:
        image2d: the slice, ``H x W``, ``H x W x 1`` or ``H x W x 3``; uint8 is shown as
            ``value / 255``, anything else min-max normalised.
        truth2d: reference label map ``H x W`` (class ids), or ``None``.
        pred2d: predicted label map ``H x W``.
        path: target ``.png`` (parent folders are created).
        class_names: names of all classes, background (id 0) first, as in the training
            configuration (``class_names[c]`` names class ``c``); the legend then lists every
            foreground class (consistent colours across pictures). Default: the ids present,
            as ``class <id>``.
        alpha: opacity of the label colours, in ``[0, 1]``.
        title: optional title above the panels.
        panel_inches: size of one (square) panel in inches.
        dpi: resolution of the PNG.

    Returns:
        ``path`` as a `Path`.

    Raises:
        InputError: shapes that do not match, non-integer or negative labels, a bad
            ``alpha``, or a failed write.
    """
    path = Path(path)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"{path}: alpha must lie in [0, 1], got {alpha}")
    base = _display_rgb(image2d, path)
    shape = (base.shape[0], base.shape[1])
    pred = _label_array(pred2d, "prediction", shape, path)
    truth = None if truth2d is None else _label_array(truth2d, "truth", shape, path)

    panels: list[tuple[str, np.ndarray]] = [("image", base)]
    if truth is not None:
        panels.append(("truth", _blend(base, truth, float(alpha))))
    panels.append(("prediction", _blend(base, pred, float(alpha))))

    present = set(np.unique(pred).tolist()) | (set(np.unique(truth).tolist()) if truth is not None else set())
    n_named = 0 if class_names is None else len(class_names)
    ids = list(range(1, n_named)) + sorted(c for c in present if c > 0 and c >= n_named)

    def name_of(c: int) -> str:
        if class_names is not None and c < len(class_names):
            return str(class_names[c])
        return f"class {c}"

    n = len(panels)
    legend_rows = max(1, math.ceil(len(ids) / max(1, 2 * n))) if ids else 0
    legend_h = 0.25 * legend_rows + (0.1 if ids else 0.0)
    title_h = 0.3 if title else 0.0
    head_h = 0.25  # panel titles
    height = panel_inches + legend_h + head_h + title_h
    fig = _new_figure(panel_inches * n, height)
    try:
        from matplotlib.patches import Patch

        for i, (label, rgb) in enumerate(panels):
            ax = fig.add_axes((i / n, legend_h / height, 1.0 / n, panel_inches / height))
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.set_axis_off()
        if title:
            fig.suptitle(title, fontsize=10, y=1.0 - 0.02, va="top")
        if ids:
            handles = [Patch(facecolor=label_color(c), edgecolor="none", label=name_of(c)) for c in ids]
            fig.legend(
                handles=handles, loc="lower center", ncol=min(len(ids), 2 * n), frameon=False,
                fontsize=8, bbox_to_anchor=(0.5, 0.0), handlelength=1.0, columnspacing=1.0,
            )
    except Exception:
        _release(fig)
        raise
    return _save_figure(fig, path, dpi)


def plot_curves(
    jsonl_path: str | os.PathLike[str], png_path: str | os.PathLike[str], *, dpi: int = 100
) -> Path:
    """Plot a training log (see `read_training_log`) as a two-panel PNG.

    Left: training loss vs step (per-step values as a line, per-epoch ``train_loss`` as dots
    at the epoch's last step). Right: validation DSC vs epoch, best epoch marked. A panel
    without data says so instead of failing, so a plot can be drawn at any time during
    training.

    Args:
        jsonl_path: the JSON Lines log.
        png_path: target ``.png`` (parent folders are created).
        dpi: resolution of the PNG.

    Returns:
        ``png_path`` as a `Path`.

    Raises:
        InputError: the log is missing or unreadable, or the write fails.
    """
    log = read_training_log(jsonl_path)
    png = Path(png_path)
    fig = _new_figure(10.0, 4.0)
    try:
        ax_loss, ax_dsc = fig.subplots(1, 2)
        if log["step"] or log["train_loss"]:
            if log["step"]:
                ax_loss.plot(log["step"], log["loss"], lw=0.8, color="#4363d8", label="step loss")
            if log["train_loss"]:
                ax_loss.plot(
                    log["epoch_step"], log["train_loss"], "o", ms=4, color="#e6194b",
                    label="epoch mean train loss",
                )
            ax_loss.legend(fontsize=8)
        else:
            ax_loss.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_loss.transAxes)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_loss.set_title("training loss")
        ax_loss.grid(alpha=0.3)

        if log["val_dsc"]:
            ax_dsc.plot(log["val_epoch"], log["val_dsc"], "o-", ms=3, color="#3cb44b", label="val DSC")
            finite = [(d, e) for e, d in zip(log["val_epoch"], log["val_dsc"]) if math.isfinite(d)]
            if finite:
                best, best_epoch = max(finite)
                ax_dsc.plot([best_epoch], [best], "*", ms=12, color="#f58231", label=f"best {best:.4f} (epoch {best_epoch:g})")
            ax_dsc.legend(fontsize=8)
        else:
            ax_dsc.text(0.5, 0.5, "no validation DSC logged", ha="center", va="center", transform=ax_dsc.transAxes)
        ax_dsc.set_xlabel("epoch")
        ax_dsc.set_ylabel("DSC")
        ax_dsc.set_title("validation DSC")
        ax_dsc.grid(alpha=0.3)
        fig.tight_layout()
    except Exception:
        _release(fig)
        raise
    return _save_figure(fig, png, dpi)
