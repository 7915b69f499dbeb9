"""One self-contained HTML page of an evaluated run (``simmpnet report RUN_DIR``).

The page needs no network and no other file: CSS and JavaScript are inline, pictures are
PNG data URIs, the curves are inline SVG.  It shows

* the run's settings, the versions, the data, split and checkpoint, the metric conventions;
* the per-class metrics (headline convention, paper protocol, pooled DSC) and the per-case
  rows, in tables that sort by any column;
* the learning curves of ``log.jsonl`` (loss, validation DSC, W-LD's ``K``, learning rate);
* a slice viewer per case (image with the truth's and the prediction's outlines, a slider,
  the slices with the most wrong pixels first);
* the memory of Sim-MPNet: for each DMW-LA block past its warm-up, the category each position
  reads (`MemoryProbe`) over the image, how often each
  slot of each category is the one read most, and the prototype drift per epoch that the
  trainer logs.

What it embeds is capped (`MAX_CASES` cases, `MAX_SLICES` slices per case by
default) and the page says so.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..colours import CLASS_COLORS, label_palette
from ..provenance import software
from ..files import atomic_write
from ..errors import InputError
from .resample import RESAMPLE_WORDS
from .tables import _METRICS, SOURCE_KEYS, _fmt, _unit_word
from .training_log import mean_drift

logger = logging.getLogger(__name__)

__all__ = ["MAX_CASES", "MAX_SLICES", "ViewerCases", "write_report"]

#: Cases with a slice viewer (the first of the split), unless told otherwise.
MAX_CASES = 3
#: Slices per case in the viewer: those with the most wrong pixels (then the most foreground).
MAX_SLICES = 24

# ---------------------------------------------------------------------------------- inputs
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _read_log(path: Path) -> list[dict[str, Any]]:
    """Records of ``log.jsonl`` (malformed lines are skipped: the curves show what is there)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _versions() -> dict[str, str]:
    versions = software()
    commit = versions.pop("commit")
    return {"simmpnet": versions.pop("simmpnet"), "simmpnet source commit (at report time)": commit, **versions}


def _existing(path: Any, run_dir: Path) -> Path | None:
    """``path`` as recorded (relative paths were relative to where the command ran), else the
    file of that name in ``run_dir`` (a run folder that was moved or copied)."""
    if not path:
        return None
    path = Path(path)
    if path.exists():
        return path
    moved = run_dir / path.name
    return moved if moved.exists() else None


# ---------------------------------------------------------------------------------- pictures
def _png(array: np.ndarray, palette: Sequence[int] | None = None) -> str:
    """Base64 PNG of a uint8 array: grey (H, W), RGB (H, W, 3), or a palette image whose
    index 0 is transparent."""
    from PIL import Image

    buffer = io.BytesIO()
    if palette is None:
        Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    else:
        image = Image.fromarray(array.astype(np.uint8), mode="P")
        image.putpalette(list(palette))
        image.save(buffer, format="PNG", optimize=True, transparency=0)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _display_volume(image: np.ndarray) -> np.ndarray:
    """``(D, H, W[, C])`` -> uint8 for display: grey volumes clipped to their 0.5-99.5th
    percentiles (one window for the whole case), colour pictures min-max scaled."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 4 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 4 and image.shape[-1] != 3:
        image = image[..., 0]  # other channel counts: the first channel
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if image.ndim == 3 else (finite.min(), finite.max())) if finite.size else (0, 1)
    scaled = (np.nan_to_num(image, nan=lo) - lo) / max(float(hi - lo), 1e-12)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Class ids on the boundary pixels of each region (4-neighbourhood), 0 elsewhere."""
    pad = np.pad(labels, 1, mode="edge")
    centre = pad[1:-1, 1:-1]
    edge = (
        (centre != pad[:-2, 1:-1]) | (centre != pad[2:, 1:-1]) | (centre != pad[1:-1, :-2]) | (centre != pad[1:-1, 2:])
    )
    return np.where(edge & (centre > 0), centre, 0)


def _category_colors(n: int) -> list[str]:
    """Colours of memory categories 0..n-1 (matplotlib's tab20, darker tones first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return ["#%02x%02x%02x" % tuple(round(255 * v) for v in cmap(order[i % 20])[:3]) for i in range(n)]


def _palette_of(colors: Sequence[str]) -> list[int]:
    """A PNG palette: index 0 transparent (unused colour), index ``i + 1`` is ``colors[i]``."""
    palette = [0, 0, 0]
    for color in colors:
        palette += [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return palette + [0] * (768 - len(palette))


def _heatmap(counts: np.ndarray) -> str:
    """``(num_k, P)`` slot counts -> PNG: each row scaled to its own largest count (viridis)."""
    from matplotlib import colormaps

    rows = counts.astype(np.float64)
    peak = rows.max(axis=1, keepdims=True)
    share = np.divide(rows, peak, out=np.zeros_like(rows), where=peak > 0)
    rgb = colormaps["viridis"](share)[..., :3]
    return _png(np.round(rgb * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------- model
class ViewerCases:
    """The slice viewer's cases and the memory panel's statistics, gathered from predictions
    made by whoever predicts the cases (``evaluate`` while it scores them, or the report).

    Use as a context manager around the predictions, with `on_case` called after each
    case (the ``on_case`` of `evaluate_volumes`): the
    memory probe records the forwards of the first ``max_cases`` cases and is removed after
    them, so that the other cases run on the model as it is.

    Args:
        model: the predicting model (a Sim-MPNet has its memory probed; others get no panel).
        config: the model's training config (the page's settings when the run folder has none).
        layout: the layout's name; split: the split; total: its number of cases.
        max_cases: cases with a slice viewer; max_slices: slices per case, worst errors first.
    """

    def __init__(
        self, model: Any, config: Mapping[str, Any], layout: str, split: str, total: int,
        max_cases: int = MAX_CASES, max_slices: int = MAX_SLICES,
    ) -> None:
        from .memory_maps import MemoryProbe

        self.config, self.layout, self.split, self.total = config, layout, split, total
        self.max_cases, self.max_slices = max_cases, max_slices
        self.model_name, self.warmup_blocks = type(model).__name__, _warmup_blocks(model)
        self.probe = MemoryProbe(model) if hasattr(model, "dmwla_blocks") else None
        self.blocks = list(self.probe.blocks) if self.probe is not None else []
        num_k = [b.memory.num_k for b in self.probe.blocks.values()] if self.probe is not None else []
        self.colors = _category_colors(max(num_k, default=1))
        self._category_palette, self._class_palette = _palette_of(self.colors), label_palette()
        self.cases: list[dict[str, Any]] = []

    def __enter__(self) -> ViewerCases:
        if self.probe is not None and self.max_cases > 0:
            self.probe.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.probe is not None:
            self.probe.close()

    def on_case(self, name: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Keep the case's worst slices (while fewer than ``max_cases`` are kept) with the
        memory categories its forwards read."""
        if len(self.cases) >= self.max_cases:
            return
        maps: dict[str, np.ndarray] = {}
        if self.probe is not None:
            maps = self.probe.concatenated()
            self.probe.reset()
        wrong = (prediction != truth).reshape(truth.shape[0], -1).sum(1)
        foreground = ((truth > 0) | (prediction > 0)).reshape(truth.shape[0], -1).sum(1)
        # worst first; among equally wrong slices the ones with more to see
        ranked = sorted(range(truth.shape[0]), key=lambda z: (-int(wrong[z]), -int(foreground[z]), z))
        chosen = [z for z in ranked if foreground[z] > 0][: self.max_slices] or ranked[: self.max_slices]
        shown = _display_volume(image)
        slices = []
        for z in chosen:
            slices.append({
                "z": int(z),
                "wrong": int(wrong[z]),
                "image": _png(shown[z]),
                "truth": _png(_outline(truth[z]).astype(np.uint8), self._class_palette),
                "prediction": _png(_outline(prediction[z]).astype(np.uint8), self._class_palette),
                "memory": {
                    b: _png((maps[b][z] + 1).astype(np.uint8), self._category_palette) for b in self.blocks if b in maps
                },
            })
        self.cases.append({"name": str(name), "depth": int(truth.shape[0]), "slices": slices})
        logger.info("report: case %s, %d of %d slices embedded", name, len(slices), truth.shape[0])
        if len(self.cases) >= self.max_cases and self.probe is not None:
            self.probe.close()

    def result(self) -> dict[str, Any]:
        """What the page shows of the model: the cases, the memory statistics, the settings."""
        memory = []
        if self.probe is not None:
            for block in self.blocks:
                counts = self.probe.slot_counts[block]
                positions = counts.sum(1)
                memory.append({
                    "block": block,
                    "num_k": int(counts.shape[0]),
                    "pool_size": int(counts.shape[1]),
                    "share": (positions / max(int(positions.sum()), 1)).tolist(),
                    "slots_read": (counts > 0).sum(1).tolist(),
                    "heatmap": _heatmap(counts),
                })
        return {
            "config": self.config, "cases": self.cases, "total_cases": self.total, "split": self.split,
            "layout": self.layout, "memory": memory, "category_colors": self.colors, "model": self.model_name,
            "warmup_blocks": self.warmup_blocks,
        }



def _warmup_blocks(model: Any) -> list[str]:
    if not hasattr(model, "dmwla_blocks"):
        return []
    from .memory_maps import block_names

    return [n for n, b in zip(block_names(model), model.dmwla_blocks()) if b.in_warmup]


# ---------------------------------------------------------------------------------- HTML parts
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, percent: bool) -> tuple[str, str]:
    """(shown text, sort key) of a metric value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a", ""
    return _fmt(value, percent), repr(float(value))


def _cell(value: Any, percent: bool) -> str:
    text, key = _number(value, percent)
    return f'<td class="num" data-sort="{key}">{text}</td>'


def _sortable(table_id: str, header: Sequence[str], rows: Sequence[str], foot: str = "") -> str:
    heads = "".join(f'<th data-col="{i}" title="sort">{_e(h)}</th>' for i, h in enumerate(header))
    return (
        f'<table class="sortable" id="{table_id}"><thead><tr>{heads}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody>{foot}</table>'
    )


def _metrics_section(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return (
            '<section id="metrics"><h2>Metrics</h2><p class="note">This folder holds no metrics.json: '
            "run <code>simmpnet evaluate --checkpoint ... --output RUN_DIR</code> to score the model.</p></section>"
        )
    headline = summary["headline_convention"]
    conventions = summary["conventions"]
    paper = "paper" if "paper" in conventions and headline != "paper" else None
    unit = _unit_word(conventions[headline]["distance_unit"], summary)
    header = ["Class"] + [f"{t} ({'%' if p else unit})" for _, t, p in _METRICS]
    if paper:
        header += ["paper DSC (%)", f"paper HD95 ({_unit_word(conventions[paper]['distance_unit'], summary)})"]
    pooled = summary.get("pooled_dsc") if isinstance(summary.get("pooled_dsc"), Mapping) else None
    if pooled:
        header.append("pooled DSC (%)")
    rows = []
    for name in summary["classes"]:
        entry = conventions[headline]["per_class"][name]
        cells = [_cell(entry.get(k), p) for k, _, p in _METRICS]
        if paper:
            other = conventions[paper]["per_class"][name]
            cells += [_cell(other.get("dsc"), True), _cell(other.get("hd95"), False)]
        if pooled:
            cells.append(_cell(pooled.get("per_class", {}).get(name), True))
        rows.append(f'<tr><td data-sort="{_e(name)}">{_e(name)}</td>{"".join(cells)}</tr>')
    mean = conventions[headline]["mean"]
    foot_cells = [_cell(mean.get(k), p) for k, _, p in _METRICS]
    if paper:
        foot_cells += [_cell(conventions[paper]["mean"].get("dsc"), True), _cell(conventions[paper]["mean"].get("hd95"), False)]
    if pooled:
        foot_cells.append(_cell(pooled.get("mean"), True))
    foot = f'<tfoot><tr><th>Mean</th>{"".join(foot_cells)}</tr></tfoot>'
    class_table = _sortable("metrics-table", header, rows, foot)

    case_header = ["Case", "Class"] + [f"{t} ({'%' if p else unit})" for _, t, p in _METRICS]
    if paper:
        case_header.append("paper DSC (%)")
    case_rows = []
    per_case = conventions[headline].get("per_case") or summary.get("per_case") or {}
    for case, classes in per_case.items():
        for name, entry in classes.items():
            cells = [_cell(entry.get(k), p) for k, _, p in _METRICS]
            if paper:
                other = (conventions[paper].get("per_case") or {}).get(case, {}).get(name, {})
                cells.append(_cell(other.get("dsc"), True))
            case_rows.append(
                f'<tr><td data-sort="{_e(case)}">{_e(case)}</td><td data-sort="{_e(name)}">{_e(name)}</td>{"".join(cells)}</tr>'
            )
    descriptions = "".join(
        f"<li><b>{_e(name)}</b>{' (headline)' if name == headline else ''}: {_e(block.get('description', ''))}</li>"
        for name, block in conventions.items()
    )
    resample = summary.get("resample")
    how = f"<p>Predictions return to the image size by {_e(RESAMPLE_WORDS[resample])}.</p>" if resample in RESAMPLE_WORDS else ""
    return (
        '<section id="metrics"><h2>Metrics</h2>'
        f"<p>{summary['n_cases']} cases. Click a column title to sort; n/a: undefined for every case.</p>"
        f"{class_table}<h3>Per case (headline convention)</h3>"
        f"{_sortable('case-table', case_header, case_rows)}"
        f"<h3>Conventions</h3><ul>{descriptions}</ul>{how}"
        + (
            "<p>Pooled DSC: the pixels of all cases pooled per class, independent of the convention.</p>"
            if pooled else ""
        )
        + "</section>"
    )


def _svg_chart(title: str, series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], xlabel: str) -> str:
    """A small line chart as inline SVG: ``series`` of (label, x, y, colour)."""
    points = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    width, height, left, right, top, bottom = 420, 230, 56, 12, 26, 40
    if not points:
        return (
            f'<figure class="chart"><svg width="{width}" height="{height}" role="img"><text x="10" y="18" class="title">'
            f'{_e(title)}</text><text x="{width / 2}" y="{height / 2}" text-anchor="middle">not in this log</text></svg></figure>'
        )
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<text x="10" y="16" class="title">{_e(title)}</text>']
    parts.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" class="frame"/>')
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for value in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{sx(value):.1f}" y="{height - bottom + 14}" text-anchor="middle">{value:.4g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">{_e(xlabel)}</text>')
    legend = []
    for label, xs, ys, color in series:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y is not None and math.isfinite(y))
        if not coords:
            continue
        marker = "" if len(xs) > 1 else f'<circle cx="{coords.split(",")[0]}" cy="{coords.split(",")[1]}" r="3" fill="{color}"/>'
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>{marker}')
        legend.append(
            f'<span class="legend-item"><span class="swatch" style="background:{color}"></span>{_e(label)}</span>'
        )
    # An HTML caption wraps, so the legend fits however many series (one per DMW-LA block) there are.
    caption = f'<figcaption class="chart-legend">{"".join(legend)}</figcaption>' if len(series) > 1 else ""
    return f'<figure class="chart"><svg width="{width}" height="{height}" role="img">{"".join(parts)}</svg>{caption}</figure>'


def _curves_section(records: Sequence[Mapping[str, Any]]) -> str:
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]

    def column(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
        pairs = [(r[x], r[y]) for r in rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
        return [float(a) for a, _ in pairs], [float(b) for _, b in pairs]

    if not records:
        return '<section id="curves"><h2>Learning curves</h2><p class="note">No log.jsonl in this folder.</p></section>'
    charts = [
        _svg_chart("training loss", [("step loss", *column(steps, "step", "loss"), "#4363d8"),
                                     ("epoch mean", *column(epochs, "step", "train_loss"), "#e6194b")], "step"),
        _svg_chart("validation DSC (mean over classes)", [("val DSC", *column(epochs, "epoch", "val_dsc"), "#3cb44b")], "epoch"),
        _svg_chart("K of W-LD (slots rewritten per update)", [("K", *column(steps, "step", "k"), "#f58231")], "step"),
        _svg_chart("learning rate", [("lr", *column(steps, "step", "lr"), "#911eb4")], "step"),
    ]
    return f'<section id="curves"><h2>Learning curves</h2><p>From log.jsonl (the source of truth).</p><div class="charts">{"".join(charts)}</div></section>'


def _drift_chart(records: Sequence[Mapping[str, Any]]) -> str:
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        if record.get("event") != "epoch" or not isinstance(record.get("memory"), Mapping):
            continue
        for block, entry in record["memory"].items():
            drift = mean_drift(entry)
            if drift is not None:
                xs, ys = series.setdefault(block, ([], []))
                xs.append(float(record["epoch"]))
                ys.append(drift)
    if not series:
        return (
            '<p class="note">The training log holds no prototype drift (runs trained before the trainer logged it, '
            "or no epoch ended after the warm-up).</p>"
        )
    colors = _category_colors(len(series))
    return _svg_chart(
        "prototype drift per epoch (mean 1 - cos over categories)",
        [(block, xs, ys, colors[i]) for i, (block, (xs, ys)) in enumerate(series.items())], "epoch",
    )


def _memory_section(probed: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> str:
    if probed is None or probed["model"] != "SimMPNet":
        return ""
    intro = (
        "<p>Each position of a DMW-LA block reads the memory of one <i>category</i>: the one whose prototype "
        "has the highest cosine similarity with its query. Categories are clusters of the memory (k-means at the "
        "end of the warm-up), not classes. The right panel of each case below colours each position by the "
        "category it reads in the block chosen here.</p>"
    )
    if not probed["memory"]:
        return f'<section id="memory"><h2>The memory</h2>{intro}<p class="note">Every block is still in warm-up: no memory is read yet.</p></section>'
    options = "".join(f'<option value="{_e(m["block"])}">{_e(m["block"])}</option>' for m in probed["memory"])
    colors = probed["category_colors"]
    usage = []
    for m in probed["memory"]:
        rows = "".join(
            f'<tr><td><span class="swatch" style="background:{colors[c]}"></span>{c}</td>'
            f'<td class="num">{100 * m["share"][c]:.1f}</td><td class="num">{m["slots_read"][c]} / {m["pool_size"]}</td></tr>'
            for c in range(m["num_k"])
        )
        usage.append(
            f'<div class="usage" data-block="{_e(m["block"])}"><table><thead><tr><th>category</th><th>positions (%)</th>'
            f'<th>slots read most by some position</th></tr></thead><tbody>{rows}</tbody></table>'
            f'<figure><img class="heat" alt="slot usage of {_e(m["block"])}" src="data:image/png;base64,{m["heatmap"]}" '
            f'style="width:{min(4 * m["pool_size"], 600)}px;height:{14 * m["num_k"]}px">'
            "<figcaption>slot usage: one row per category, one column per slot; brightness: how many positions "
            "read that slot most, relative to the row's busiest slot</figcaption></figure></div>"
        )
    warm = probed["warmup_blocks"]
    warm_note = f'<p class="note">Still in warm-up (no memory read, not shown): {_e(", ".join(warm))}.</p>' if warm else ""
    return (
        f'<section id="memory"><h2>The memory</h2>{intro}'
        f'<label>DMW-LA block <select id="block-select">{options}</select></label>{warm_note}'
        f'<h3>Category and slot usage (all slices of the cases below)</h3>{"".join(usage)}'
        f"<h3>How the bank changed over training</h3>{_drift_chart(records)}</section>"
    )


def _settings_section(
    config: Mapping[str, Any], sources: Sequence[tuple[str, Any]], versions: Mapping[str, str]
) -> str:
    def table(items: Sequence[tuple[str, Any]]) -> str:
        rows = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(json.dumps(v) if isinstance(v, (dict, list)) else v)}</td></tr>" for k, v in items
        )
        return f'<table class="kv">{rows}</table>'

    return (
        '<section id="settings"><h2>Run</h2><div class="cols">'
        f"<div><h3>Data and model</h3>{table(sources)}<h3>Versions</h3>{table(list(versions.items()))}</div>"
        f"<div><h3>Training settings</h3>{table(list(config.items())) if config else '<p>not recorded</p>'}</div>"
        "</div></section>"
    )


def _viewer_section(probed: Mapping[str, Any] | None, max_cases: int, max_slices: int) -> tuple[str, list[Any]]:
    if probed is None:
        return "", []
    cases = probed["cases"]
    note = (
        f"<p>This page embeds {len(cases)} of the {probed['total_cases']} cases of split "
        f"<b>{_e(probed['split'])}</b> (the first ones; at most {max_cases}) and at most {max_slices} slices per case: "
        "the slices with the most wrong pixels, worst first. <code>simmpnet report --cases N --slices N</code> "
        "changes the caps. Outlines: truth left, prediction middle, in the class colours; right: the memory "
        "category each position of the chosen block reads. Slider or arrow keys: move through the slices.</p>"
    )
    sections = []
    for index, case in enumerate(cases):
        sections.append(
            f'<div class="case" data-case="{index}"><h3>{_e(case["name"])}</h3>'
            '<div class="controls"><input type="range" class="slice-slider" min="0" '
            f'max="{len(case["slices"]) - 1}" value="0" step="1" aria-label="slice of {_e(case["name"])}">'
            '<label>order <select class="order"><option value="worst">worst errors first</option>'
            '<option value="position">by position</option></select></label>'
            '<span class="slice-caption"></span></div><div class="panels">'
            + "".join(
                f'<figure><div class="stack"><img class="layer-image" alt=""><img class="layer-{kind}" alt=""></div>'
                f"<figcaption>{caption}</figcaption></figure>"
                for kind, caption in (("truth", "truth"), ("prediction", "prediction"), ("memory", "memory categories"))
            )
            + "</div></div>"
        )
    return f'<section id="viewer"><h2>Cases</h2>{note}{"".join(sections)}</section>', cases


def _legend(names: Sequence[str]) -> str:
    return "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{CLASS_COLORS[(c - 1) % len(CLASS_COLORS)]}"></span>{_e(name)}</span>'
        for c, name in enumerate(names) if c > 0
    )


# ---------------------------------------------------------------------------------- page
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
    probe: Callable[..., dict[str, Any]] | None = None,
) -> Path:
    """Write the report of the run in ``run_dir`` as one self-contained HTML file.

    Args:
        run_dir: a run folder (``log.jsonl``, ``resolved_config.yaml``, checkpoints) and/or an
            evaluation folder (``metrics.json``); whatever is missing is left out of the page,
            which says so.
        output: the HTML file (default ``run_dir/report.html``).
        checkpoint: the model of the slice viewer and the memory panel (default: the one
            ``metrics.json`` names, else ``last.pt``, else ``best.pt`` of ``run_dir``).
        data: the dataset folder (default: the one ``metrics.json`` names, else the training
            config's ``data_root``).
        layout: the dataset layout (default: as recorded).
        split: the split whose cases are shown (default: as recorded, else the layout's test split).
        device: where the model runs.
        max_cases: cases with a slice viewer.
        max_slices: slices per case in the viewer.
        layout_options: options of the layout over those the model was trained with (as
            ``evaluate --set``).
        resample: how predictions return to the slice size (default: as the model was trained).
        viewer: the cases and memory statistics gathered while ``checkpoint`` predicted ``split``
            of ``data`` (``evaluate`` passes them).
        probe: without ``viewer``, what predicts the cases of the viewer (called with
            ``checkpoint, data, layout, split, device, max_cases, max_slices, layout_options,
            resample``; `simmpnet.evaluate.probe_cases`, which
            `simmpnet.evaluate.write_report` passes).  Without either, the page has no
            slice viewer and no memory panel: this module never loads a model.

    Returns:
        the path of the HTML file.

    Raises:
        InputError: ``run_dir`` is not a folder, the caps are not positive, or a named file or
            folder is missing (before any work).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    for name, value in (("cases", max_cases), ("slices", max_slices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"report: {name} must be a positive integer, got {value!r}")
    output = Path(output) if output is not None else run_dir / "report.html"
    summary = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
    records = _read_log(run_dir / "log.jsonl")
    config: dict[str, Any] = {}
    if (run_dir / "resolved_config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((run_dir / "resolved_config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{run_dir / 'resolved_config.yaml'}: not valid YAML ({exc})") from exc
    recorded = summary or {}

    if checkpoint is not None:
        model_path = Path(checkpoint)
        if not model_path.exists():
            raise InputError(f"{model_path}: checkpoint not found")
    else:
        model_path = next(
            (p for p in (_existing(recorded.get("checkpoint"), run_dir), run_dir / "last.pt", run_dir / "best.pt")
             if p is not None and p.exists()),
            None,
        )
    data_path: Path | None = None
    if data is not None:
        data_path = Path(data)
        if not data_path.is_dir():
            raise InputError(f"{data_path}: dataset folder not found")
    else:
        for candidate in (recorded.get("data"), config.get("data_root")):
            if candidate and Path(candidate).is_dir():
                data_path = Path(candidate)
                break

    probed = None
    missing_viewer = ""
    if model_path is None:
        missing_viewer = "no checkpoint in this folder (give --checkpoint): no slice viewer, no memory panel."
    elif data_path is None:
        where = recorded.get("data") or config.get("data_root") or "not recorded"
        missing_viewer = f"the dataset folder ({where}) is not there (give --data): no slice viewer, no memory panel."
    elif viewer is not None:
        probed = viewer.result()
    elif probe is None:
        missing_viewer = "no model was run for this page (simmpnet report runs it): no slice viewer, no memory panel."
    else:
        probed = probe(
            model_path, data_path, layout or recorded.get("layout"), split or recorded.get("split"), device,
            max_cases, max_slices, layout_options, resample or recorded.get("resample"),
        )
    if not config and probed is not None:
        config = dict(probed["config"])
    names = list(config.get("class_names") or ["background", *(summary or {}).get("classes", [])])

    sources: list[tuple[str, Any]] = [(label, recorded[key]) for key, label in SOURCE_KEYS if recorded.get(key) is not None]
    if probed is not None:
        sources += [
            ("Report model", str(model_path)), ("Report data", str(data_path)),
            ("Layout (viewer)", probed["layout"]), ("Split (viewer)", probed["split"]),
        ]
    training = recorded.get("training")
    if isinstance(training, Mapping):
        sources.append(("Training", ", ".join(f"{k} {v}" for k, v in training.items() if k in ("steps", "epochs", "stop"))))

    viewer, cases = _viewer_section(probed, max_cases, max_slices)
    if missing_viewer:
        viewer = f'<section id="viewer"><h2>Cases</h2><p class="note">{_e(missing_viewer)}</p></section>'
    payload = {"cases": cases, "blocks": [m["block"] for m in probed["memory"]] if probed else []}
    title = f"simmpnet report: {run_dir.resolve().name}"
    body = (
        f"<header><h1>{_e(title)}</h1><nav><a href='#metrics'>metrics</a> <a href='#memory'>memory</a> "
        "<a href='#viewer'>cases</a> <a href='#curves'>curves</a> <a href='#settings'>run</a></nav>"
        f'<div class="legend">{_legend(names)}</div></header>'
        + _metrics_section(summary)
        + _memory_section(probed, records)
        + viewer
        + _curves_section(records)
        + _settings_section(config, sources, _versions())
    )
    data_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}"
        f'<script type="application/json" id="report-data">{data_json}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )
    return atomic_write(output, lambda tmp: tmp.write_text(page, encoding="utf-8"), suffix=".html")


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 16px 40px;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 0;z-index:2}
h1{font-size:20px;margin:4px 0}h2{border-bottom:2px solid #4363d8;padding-bottom:2px;margin-top:28px}
nav a{margin-right:12px}.note{color:#8a4b00}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f3f5fb;user-select:none}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
table.kv th{text-align:left;background:#f7f7f7;font-weight:normal;white-space:nowrap}table.kv td{word-break:break-all}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}
.charts{display:flex;flex-wrap:wrap;gap:8px}.chart{margin:0}.chart-legend{max-width:420px}svg{font-size:11px;background:#fff}
svg .title{font-weight:bold;font-size:12px}svg .frame{fill:none;stroke:#bbb}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle;border-radius:2px}
.legend-item{margin-right:10px;white-space:nowrap;font-size:12px}
.panels{display:flex;flex-wrap:wrap;gap:10px}.panels figure{margin:0}
.stack{position:relative;width:300px;height:300px;background:#000}
.stack img{position:absolute;left:0;top:0;width:100%;height:100%;object-fit:contain}
.stack img.layer-memory{opacity:.5;image-rendering:pixelated}
.controls{display:flex;align-items:center;gap:14px;margin:4px 0}.slice-slider{width:300px}
img.heat{image-rendering:pixelated;display:block;border:1px solid #ccc}
.usage{display:none;gap:20px;align-items:flex-start}.usage.shown{display:flex}
"""

_JS = r"""
(function(){
const DATA=JSON.parse(document.getElementById('report-data').textContent);
const PNG='data:image/png;base64,';
function sortKey(cell){const k=cell.getAttribute('data-sort');if(k===null||k==='')return null;const n=Number(k);return isNaN(n)?k.toLowerCase():n;}
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('thead th').forEach(function(th){
    th.addEventListener('click',function(){
      const col=Number(th.getAttribute('data-col'));const asc=!th.classList.contains('asc');
      table.querySelectorAll('thead th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      const body=table.tBodies[0];const rows=Array.from(body.rows);
      rows.sort(function(a,b){const x=sortKey(a.cells[col]),y=sortKey(b.cells[col]);
        if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
        const c=(x<y)?-1:(x>y?1:0);return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
const blockSelect=document.getElementById('block-select');
function currentBlock(){return blockSelect?blockSelect.value:null;}
const viewers=[];
document.querySelectorAll('.case').forEach(function(el){
  const info=DATA.cases[Number(el.getAttribute('data-case'))];
  const slider=el.querySelector('.slice-slider'),order=el.querySelector('.order'),caption=el.querySelector('.slice-caption');
  const byWorst=info.slices.map(function(_,i){return i;});
  const byPosition=byWorst.slice().sort(function(a,b){return info.slices[a].z-info.slices[b].z;});
  function show(){
    const list=order.value==='position'?byPosition:byWorst;const s=info.slices[list[Number(slider.value)]];
    el.querySelectorAll('.layer-image').forEach(function(img){img.src=PNG+s.image;});
    el.querySelector('.layer-truth').src=PNG+s.truth;el.querySelector('.layer-prediction').src=PNG+s.prediction;
    const mem=el.querySelector('.layer-memory');const b=currentBlock();
    if(b&&s.memory[b]){mem.src=PNG+s.memory[b];mem.style.display='';}else{mem.removeAttribute('src');mem.style.display='none';}
    caption.textContent='slice '+(s.z+1)+' of '+info.depth+' \u00b7 '+s.wrong+' wrong pixels \u00b7 '+(Number(slider.value)+1)+'/'+info.slices.length+' shown';
    el.setAttribute('data-shown-z',String(s.z));
  }
  slider.addEventListener('input',show);order.addEventListener('change',function(){slider.value=0;show();});
  viewers.push(show);show();
});
function showUsage(){const b=currentBlock();document.querySelectorAll('.usage').forEach(function(u){u.classList.toggle('shown',u.getAttribute('data-block')===b);});}
if(blockSelect){blockSelect.addEventListener('change',function(){showUsage();viewers.forEach(function(v){v();});});showUsage();}
})();
"""
