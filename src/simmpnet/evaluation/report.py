"""Report writers: JSON, metric tables (Markdown and terminal), overlay pictures, training curves.

* `write_json` -- any result as strict JSON (numpy scalars/arrays converted, NaN/Inf
  written as ``null``), atomically.
* `metrics_markdown` / `write_metrics_markdown` -- the summary produced by
  `simmpnet.evaluation.metrics.summarize` as Markdown: a per-class table for the
  headline convention, then the same table for the other convention (the paper protocol when
  the headline is ``"excluded"``), each with its units in the header, and one line saying
  which convention and unit each table uses. `format_table` gives the headline table as
  plain text for a terminal, `format_comparison` several models side by side.
* `save_overlay` -- one PNG with the panels image | truth | prediction (or image |
  prediction), labels in the fixed colours `CLASS_COLORS`, with a legend.
* `read_training_log` / `plot_curves` -- a JSON Lines training log read
  leniently (malformed lines skipped with a warning) and plotted as loss vs step and
  validation DSC vs epoch.

Pictures are drawn on a `matplotlib.figure.Figure` with the Agg canvas directly: no
``pyplot``, no display, no global figure registry, so nothing accumulates when thousands of
overlays are written; every figure is cleared after saving. All files are written through
`simmpnet.data.io.atomic_write` (temporary file in the same folder, then
`os.replace`); every error is an `InputError` with a one-line
message naming the file.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simmpnet.colours import CLASS_COLORS, label_color, label_palette
from simmpnet.files import atomic_write
from simmpnet.errors import InputError
from simmpnet.evaluation.resample import RESAMPLE_WORDS

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

logger = logging.getLogger(__name__)


_METRICS: tuple[tuple[str, str, bool], ...] = (
    # (summary key, column title, shown as a percentage?)
    ("dsc", "DSC", True),
    ("hd95", "HD95", False),
    ("jaccard", "Jaccard", True),
    ("asd", "ASD", False),
)



# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------
def _jsonable(obj: Any, where: str, counter: list[int]) -> Any:
    """Plain-Python copy of ``obj`` fit for strict JSON; non-finite floats -> ``None``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isfinite(value):
            return value
        counter[0] += 1
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where, counter)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where, counter)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (np.integer, np.floating, np.bool_)):
                key = key.item()
            if not isinstance(key, str):
                if key is None or isinstance(key, (bool, int, float)):
                    key = json.dumps(key)
                else:
                    raise InputError(f"{where}: cannot write a {type(key).__name__} dict key to JSON")
            out[key] = _jsonable(value, where, counter)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v, where, counter) for v in items]
    raise InputError(f"{where}: cannot write an object of type {type(obj).__name__} to JSON")


def write_json(obj: Any, path: str | os.PathLike[str], *, indent: int = 2) -> Path:
    """Write ``obj`` as strict, human-readable JSON, atomically.

    numpy scalars and arrays become numbers and lists, paths become strings, tuples and sets
    become lists, non-string dict keys are converted as `json` does; NaN and infinities
    (not valid JSON) become ``null`` with a logged warning.

    Args:
        obj: dicts, lists, numbers, strings, ``None``, numpy values, paths.
        path: the target file (parent folders are created).
        indent: JSON indentation.

    Returns:
        ``path`` as a `Path`.

    Raises:
        InputError: an object that cannot be represented in JSON, or a failed write.
    """
    path = Path(path)
    counter = [0]
    plain = _jsonable(obj, str(path), counter)
    if counter[0]:
        logger.warning("%s: %d NaN/infinite value(s) written as null", path, counter[0])
    text = json.dumps(plain, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")


# --------------------------------------------------------------------------------------------
# metric tables
# --------------------------------------------------------------------------------------------
def _check_summary(summary: Any) -> None:
    """Refuse anything that is not a `summarize` result."""
    def bad(problem: str) -> InputError:
        return InputError(f"summary is not a result of simmpnet.evaluation.metrics.summarize: {problem}")

    if not isinstance(summary, Mapping):
        raise bad(f"got {type(summary).__name__}")
    for key in ("classes", "conventions", "headline_convention", "n_cases"):
        if key not in summary:
            raise bad(f"missing {key!r}")
    conventions = summary["conventions"]
    if not isinstance(conventions, Mapping) or summary["headline_convention"] not in conventions:
        raise bad("'conventions' lacks the headline convention")
    for name, block in conventions.items():
        if not isinstance(block, Mapping):
            raise bad(f"convention {name!r} is not a mapping")
        for key in ("per_class", "mean", "distance_unit"):
            if key not in block:
                raise bad(f"convention {name!r} lacks {key!r}")
        missing = [c for c in summary["classes"] if c not in block["per_class"]]
        if missing:
            raise bad(f"convention {name!r} has no result for class(es) {missing}")


def _unit_word(unit: str, summary: Mapping[str, Any]) -> str:
    """The distance unit as a word: a grid distance counts pixels where every case is one 2-D
    picture or slice (``case_dims`` 2), voxels otherwise."""
    if unit != "voxel":
        return str(unit)
    return "pixels" if summary.get("case_dims") == 2 else "voxels"


def _fmt(value: Any, percent: bool) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value * 100.0:.2f}" if percent else f"{value:.2f}"


def _rows(summary: Mapping[str, Any], convention: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, class rows, mean row) of one convention, as strings."""
    block = summary["conventions"][convention]
    unit = _unit_word(block["distance_unit"], summary)
    header = ["Class"] + [f"{title} ({'%' if pct else unit})" for _, title, pct in _METRICS]
    header.append("Cases (DSC / HD95)")
    rows = []
    for name in summary["classes"]:
        entry = block["per_class"][name]
        counts = entry.get("n_cases", {}) if isinstance(entry, Mapping) else {}
        rows.append(
            [str(name)]
            + [_fmt(entry.get(key), pct) for key, _, pct in _METRICS]
            + [f"{counts.get('dsc', '?')} / {counts.get('hd95', '?')}"]
        )
    mean = ["Mean"] + [_fmt(block["mean"].get(key), pct) for key, _, pct in _METRICS] + [""]
    return header, rows, mean


def _other_convention(summary: Mapping[str, Any]) -> str | None:
    headline = summary["headline_convention"]
    if headline != "paper" and "paper" in summary["conventions"]:
        return "paper"
    others = [c for c in summary["conventions"] if c != headline]
    return others[0] if others else None


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], mean: list[str]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    lines.append("| " + " | ".join(f"**{_md_cell(c)}**" if c else "" for c in mean) + " |")
    return lines


def _title(convention: str) -> str:
    return "paper protocol" if convention == "paper" else f"{convention!r} convention"


#: What was scored, as `simmpnet.cli` records it in a summary: key -> label in reports.
SOURCE_KEYS: tuple[tuple[str, str], ...] = (
    ("checkpoint", "Model"),
    ("data", "Data"),
    ("layout", "Layout"),
    ("split", "Split"),
    ("predictions", "Predictions"),
    ("labels", "Ground truth"),
)


def _source_lines(summary: Mapping[str, Any]) -> list[str]:
    return [f"- {label}: {summary[key]}" for key, label in SOURCE_KEYS if summary.get(key) is not None]


def metrics_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown report of a `summarize` result.

    Args:
        summary: the dict returned by ``summarize`` (also after a JSON round trip).

    Returns:
        Markdown text: case and class counts, a line naming the convention and distance
        unit of each table, one naming the resampling when the summary records it
        (`evaluate_volumes` does), the headline table
        (one row per class, then the mean over classes; DSC and Jaccard in %, HD95 and ASD in
        the convention's unit, and the number of cases that define DSC and HD95), the
        convention's description, the same table for the other convention, and the pooled
        DSC.

    Raises:
        InputError: ``summary`` does not have the structure ``summarize`` produces.
    """
    _check_summary(summary)
    headline = summary["headline_convention"]
    other = _other_convention(summary)
    conventions = summary["conventions"]
    classes = [str(c) for c in summary["classes"]]

    def unit_of(conv: str) -> str:
        return _unit_word(conventions[conv]["distance_unit"], summary)

    which = (
        f"Table 1 (headline) uses the {_title(headline)} with HD95 and ASD in {unit_of(headline)}"
    )
    if other is not None:
        which += f"; Table 2 uses the {_title(other)} with HD95 and ASD in {unit_of(other)}"
    which += ". DSC and Jaccard are percentages."
    units = {unit_of(conv) for conv in conventions}
    if len(units) > 1:
        which += (
            " The units differ on purpose: the paper protocol measures distances on the grid, as the "
            "authors' code does; the other convention in mm from the spacing of the files."
        )

    lines = [
        "# Segmentation metrics",
        "",
        *_source_lines(summary),
        f"- Cases: {summary['n_cases']}",
        f"- Classes ({len(classes)}): {', '.join(classes)}",
        f"- {which}",
    ]
    resample = summary.get("resample")
    if resample in RESAMPLE_WORDS:
        lines.append(f"- Predictions return to the image size by {RESAMPLE_WORDS[resample]}.")
    if summary.get("precision") == "bf16":
        lines.append("- The network ran under bf16 autocast, its DMW-LA reads in their bf16 island (precision bf16).")
    lines.append("")
    tables = [(1, headline)] + ([(2, other)] if other is not None else [])
    for number, conv in tables:
        role = "headline, " if conv == headline else ""
        lines.append(f"## Table {number}: {role}{_title(conv)} (HD95, ASD in {unit_of(conv)})")
        lines.append("")
        lines.extend(_md_table(*_rows(summary, conv)))
        lines.append("")
        description = conventions[conv].get("description")
        if description:
            lines.append(f"Convention: {description}")
            lines.append("")
    pooled = summary.get("pooled_dsc")
    if isinstance(pooled, Mapping) and isinstance(pooled.get("per_class"), Mapping):
        per = ", ".join(f"{name} {_fmt(pooled['per_class'].get(name), True)}" for name in classes)
        lines.append(
            f"Pooled DSC (%; {'pixels' if summary.get('case_dims') == 2 else 'voxels'} of all cases pooled per class, independent of the "
            f"convention): mean {_fmt(pooled.get('mean'), True)}; {per}."
        )
        lines.append("")
    lines.append(
        "n/a: undefined for every case (e.g. the class is absent from every prediction and "
        "truth, or every distance is undefined under this convention). Cases: number of cases "
        "that define the class's DSC / HD95."
    )
    return "\n".join(lines) + "\n"


def write_metrics_markdown(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `metrics_markdown` of ``summary`` to ``path`` atomically.

    Args:
        summary: the dict returned by `summarize`.
        path: target ``.md`` file (parent folders are created).

    Returns:
        ``path`` as a `Path`.

    Raises:
        InputError: ``summary`` has the wrong structure (message names ``path``), or the
            write fails.
    """
    path = Path(path)
    try:
        text = metrics_markdown(summary)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".md")


def format_table(summary: Mapping[str, Any], convention: str | None = None) -> str:
    """One convention's per-class table as aligned plain text, for a terminal.

    Args:
        summary: the dict returned by `summarize`.
        convention: which convention to show; default the headline convention.

    Returns:
        A title line naming the convention and the units, the column header, one line per
        class and a ``Mean`` line (no trailing newline).

    Raises:
        InputError: ``summary`` has the wrong structure or ``convention`` is not in it.
    """
    _check_summary(summary)
    conv = summary["headline_convention"] if convention is None else convention
    if conv not in summary["conventions"]:
        raise InputError(
            f"format_table: convention {conv!r} not in summary ({', '.join(summary['conventions'])})"
        )
    header, rows, mean = _rows(summary, conv)
    unit = _unit_word(summary["conventions"][conv]["distance_unit"], summary)
    role = "headline" if conv == summary["headline_convention"] else "secondary"
    title = (
        f"{_title(conv)} ({role}): HD95/ASD in {unit}, DSC/Jaccard in %, "
        f"{summary['n_cases']} case(s)"
    )
    table = [header] + rows + [mean]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([title[0].upper() + title[1:], line(header), rule] + [line(r) for r in rows] + [rule, line(mean)])


def format_comparison(summaries: Mapping[str, Mapping[str, Any]], convention: str | None = None) -> str:
    """Side-by-side DSC and HD95 of several models, as aligned plain text.

    Args:
        summaries: model name -> `summarize` result, all
            over the same classes. A ``"training"`` entry with ``steps`` and ``elapsed_s``
            (as the CLI adds) is shown under the table when present.
        convention: which convention to compare; default the headline convention of the
            first summary.

    Returns:
        A title line (convention and units), one column pair (DSC %, HD95) per model, one
        line per class, a ``Mean`` line, and the training effort per model when known.

    Raises:
        InputError: no summaries, a summary of the wrong structure, different class lists,
            or a convention missing from a summary.
    """
    if not isinstance(summaries, Mapping) or not summaries:
        raise InputError("format_comparison: expected a non-empty mapping model name -> summary")
    for summary in summaries.values():
        _check_summary(summary)
    first = next(iter(summaries.values()))
    conv = first["headline_convention"] if convention is None else convention
    classes = [str(c) for c in first["classes"]]
    units = set()
    for model, summary in summaries.items():
        if [str(c) for c in summary["classes"]] != classes:
            raise InputError(f"format_comparison: {model!r} was evaluated on other classes")
        if conv not in summary["conventions"]:
            raise InputError(f"format_comparison: {model!r} has no {conv!r} convention")
        units.add(_unit_word(summary["conventions"][conv]["distance_unit"], summary))
    unit = " / ".join(sorted(units))
    header = ["Class"]
    for model in summaries:
        header += [f"{model} DSC (%)", f"{model} HD95 ({unit})"]
    table = [header]
    for name in classes + ["Mean"]:
        row = [name]
        for summary in summaries.values():
            block = summary["conventions"][conv]
            entry = block["mean"] if name == "Mean" else block["per_class"][name]
            row += [_fmt(entry.get("dsc"), True), _fmt(entry.get("hd95"), False)]
        table.append(row)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    lines = [
        f"Model comparison, {_title(conv)}: HD95 in {unit}, DSC in %",
        line(header),
        rule,
        *[line(r) for r in table[1:-1]],
        rule,
        line(table[-1]),
    ]
    for model, summary in summaries.items():
        training = summary.get("training")
        if isinstance(training, Mapping) and "steps" in training:
            elapsed = training.get("elapsed_s")
            extra = f" in {float(elapsed):.0f} s" if _is_number(elapsed) else ""
            lines.append(f"{model}: {training['steps']} training steps{extra}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
