"""Metric tables of a `simmpnet.evaluation.metrics.summarize` result.

`metrics_markdown` / `write_metrics_markdown` give the summary as Markdown: a per-class table
for the headline convention, then the same table for the other convention (the paper protocol
when the headline is ``"excluded"``), each with its units in the header, and one line saying
which convention and unit each table uses. `format_table` gives the headline table as plain
text for a terminal, `format_comparison` several models side by side.  Files are written
through `simmpnet.files.atomic_write`; every error is an `InputError` with a one-line message.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_write
from .jsonio import _is_number
from .resample import RESAMPLE_WORDS

__all__ = ["format_comparison", "format_table", "metrics_markdown", "write_metrics_markdown"]


_METRICS: tuple[tuple[str, str, bool], ...] = (
    # (summary key, column title, shown as a percentage?)
    ("dsc", "DSC", True),
    ("hd95", "HD95", False),
    ("jaccard", "Jaccard", True),
    ("asd", "ASD", False),
)


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
        lines.append(
            "- The network ran under bf16 autocast, the DMW-LA global reads in bf16 and its other fp32 islands "
            "kept (precision bf16)."
        )
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
