"""Tests of simmpnet.evaluation.report: JSON, Markdown/terminal tables, overlays, curves."""
from __future__ import annotations

import gc
import json
import logging
import math
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from simmpnet.errors import InputError
from simmpnet.evaluation import evaluate_case, summarize
from simmpnet.evaluation import report as rep
from simmpnet.evaluation.report import (
    format_comparison,
    format_table,
    label_color,
    metrics_markdown,
    plot_curves,
    read_training_log,
    save_overlay,
    write_json,
    write_metrics_markdown,
)

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

CLASS_NAMES = ["liver", "left kidney", "stomach|fundus"]


def make_summary(headline: str = "excluded") -> dict:
    """Three 3-D cases, three classes; class 3 is absent from case 1 (prediction and truth)."""
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(3):
        truth = np.zeros((6, 20, 20), np.uint8)
        truth[1:5, 2:10, 2:10] = 1
        truth[2:4, 12:18, 3:8] = 2
        if i != 1:
            truth[1:3, 12:16, 12:18] = 3
        pred = truth.copy()
        pred[rng.random(pred.shape) < 0.05] = 0
        pred[:, :, 9 + i] = np.where(pred[:, :, 9 + i] == 0, 1, pred[:, :, 9 + i])
        cases[f"case{i}"] = evaluate_case(pred, truth, 4, spacing=(2.5, 0.8, 0.8))
    return summarize(cases, CLASS_NAMES, headline=headline)


def table_rows(markdown: str, table_number: int) -> dict[str, list[str]]:
    """Rows of Markdown table ``table_number`` (1-based): first cell -> other cells."""
    section = markdown.split(f"## Table {table_number}")[1].split("## Table")[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].replace("\\|", "|").strip("*")] = [c.strip("*") for c in cells[1:]]
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown and terminal tables
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headline", ["excluded", "paper"])
def test_markdown_tables_match_summary(tmp_path: Path, headline: str) -> None:
    summary = make_summary(headline)
    other = "paper" if headline == "excluded" else "excluded"
    out = write_metrics_markdown(summary, tmp_path / "reports" / "metrics.md")
    text = out.read_text(encoding="utf-8")
    assert text == metrics_markdown(summary)
    for name in CLASS_NAMES:
        assert name.replace("|", "\\|") in text
    assert "excluded" in text and "paper protocol" in text
    which = [line for line in text.splitlines() if line.startswith("- Table 1")]
    assert len(which) == 1
    unit = {"excluded": "mm", "paper": "voxels"}
    assert f"in {unit[headline]}; Table 2" in which[0] and which[0].count(unit[other]) >= 1

    for number, conv in ((1, headline), (2, other)):
        rows = table_rows(text, number)
        block = summary["conventions"][conv]
        header = rows["Class"]
        assert header[:4] == ["DSC (%)", f"HD95 ({unit[conv]})", "Jaccard (%)", f"ASD ({unit[conv]})"]
        for name in CLASS_NAMES:
            entry = block["per_class"][name]
            got = rows[name]
            assert got[0] == f"{entry['dsc'] * 100:.2f}"
            assert got[1] == f"{entry['hd95']:.2f}"
            assert got[2] == f"{entry['jaccard'] * 100:.2f}"
            assert got[3] == f"{entry['asd']:.2f}"
            assert got[4] == f"{entry['n_cases']['dsc']} / {entry['n_cases']['hd95']}"
        assert rows["Mean"][0] == f"{block['mean']['dsc'] * 100:.2f}"
        assert rows["Mean"][1] == f"{block['mean']['hd95']:.2f}"
    # the excluded convention drops the case without class 3; the paper protocol keeps it
    ex = summary["conventions"]["excluded"]["per_class"]["stomach|fundus"]["n_cases"]["dsc"]
    pa = summary["conventions"]["paper"]["per_class"]["stomach|fundus"]["n_cases"]["dsc"]
    assert (ex, pa) == (2, 3)
    # the distances really differ in unit between the two tables (anisotropic spacing)
    assert table_rows(text, 1)["liver"][1] != table_rows(text, 2)["liver"][1]


def test_markdown_survives_json_round_trip_and_shows_na(tmp_path: Path) -> None:
    summary = make_summary()
    path = write_json(summary, tmp_path / "summary.json")
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == json.loads(json.dumps(summary))
    loaded["conventions"]["excluded"]["per_class"]["liver"]["hd95"] = None
    text = metrics_markdown(loaded)
    assert table_rows(text, 1)["liver"][1] == "n/a"


def test_format_table_plain_text() -> None:
    summary = make_summary()
    text = format_table(summary)
    lines = text.splitlines()
    assert len(lines) == 1 + 1 + 1 + len(CLASS_NAMES) + 1 + 1
    assert "excluded" in lines[0] and "mm" in lines[0]
    assert lines[1].split()[:3] == ["Class", "DSC", "(%)"] and "HD95 (mm)" in lines[1]
    for name, line in zip(CLASS_NAMES, lines[3:]):
        assert line.startswith(name)
        assert f"{summary['per_class'][name]['dsc'] * 100:.2f}" in line
    assert lines[-1].startswith("Mean") and f"{summary['mean']['dsc'] * 100:.2f}" in lines[-1]
    paper = format_table(summary, "paper")
    assert "voxels" in paper.splitlines()[0] and "HD95 (voxels)" in paper
    with pytest.raises(InputError):
        format_table(summary, "nope")


def test_format_comparison() -> None:
    a, b = make_summary(), make_summary()
    b["conventions"]["excluded"]["per_class"]["liver"]["dsc"] = 0.5
    b["training"] = {"steps": 120, "elapsed_s": 33.3}
    text = format_comparison({"simmpnet": a, "unet": b})
    lines = text.splitlines()
    assert "excluded" in lines[0] and "mm" in lines[0]
    assert "simmpnet DSC (%)" in lines[1] and "unet HD95 (mm)" in lines[1]
    liver = next(line for line in lines if line.startswith("liver")).split()
    assert liver[1] == f"{a['per_class']['liver']['dsc'] * 100:.2f}" and liver[3] == "50.00"
    assert lines[-1] == "unet: 120 training steps in 33 s"
    with pytest.raises(InputError):
        format_comparison({})
    c = make_summary()
    c["classes"] = ["x", "y", "z"]
    with pytest.raises(InputError):
        format_comparison({"a": a, "c": c})


@pytest.mark.parametrize(
    "bad",
    [None, [], {"classes": ["a"]}, {"classes": ["a"], "conventions": {}, "headline_convention": "excluded", "n_cases": 1}],
)
def test_tables_refuse_non_summaries(tmp_path: Path, bad) -> None:
    with pytest.raises(InputError) as exc:
        write_metrics_markdown(bad, tmp_path / "m.md")
    assert "m.md" in str(exc.value) and "summarize" in str(exc.value)
    assert not (tmp_path / "m.md").exists()
    with pytest.raises(InputError):
        format_table(bad)


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def test_write_json_converts_numpy_and_non_finite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    obj = {
        "a": np.float32(1.5),
        "b": np.arange(3),
        "c": float("nan"),
        1: np.int64(2),
        "p": Path("x/y"),
        "t": (np.bool_(True), -math.inf),
    }
    with caplog.at_level(logging.WARNING, logger="simmpnet.evaluation.jsonio"):
        path = write_json(obj, tmp_path / "r.json")
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": None, "1": 2, "p": "x/y", "t": [True, None]}
    assert any("2 NaN/infinite" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError) as exc:
        write_json({"x": object()}, tmp_path / "bad.json")
    assert "bad.json" in str(exc.value)
    assert not (tmp_path / "bad.json").exists()


def test_write_json_failure_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"old": true}\n')

    def broken_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    import simmpnet.data.io as sio

    monkeypatch.setattr(sio.os, "replace", broken_replace)
    with pytest.raises(InputError) as exc:
        write_json({"new": 1}, target)
    assert "r.json" in str(exc.value) and "\n" not in str(exc.value)
    assert target.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# ---------------------------------------------------------------------------------------------
# overlays
# ---------------------------------------------------------------------------------------------
def _maps(h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((h, w), np.float32)  # constant -> shown black, so colours are exact
    truth = np.zeros((h, w), np.uint8)
    truth[5:30, 5:30] = 1
    pred = np.zeros((h, w), np.uint8)
    pred[10:35, 20:45] = 2
    return image, truth, pred


def _has_colour(region: np.ndarray, rgb: np.ndarray, tol: int = 3) -> bool:
    return bool(np.any(np.all(np.abs(region[..., :3].astype(int) - rgb) <= tol, axis=-1)))


def test_overlay_panels_colours_and_legend(tmp_path: Path) -> None:
    image, truth, pred = _maps()
    names = ["background", "liver", "kidney"]  # background first, as in the training config
    p3 = save_overlay(image, truth, pred, tmp_path / "three.png", names, alpha=0.5)
    p2 = save_overlay(image, None, pred, tmp_path / "two.png", names, alpha=0.5)
    a3, a2 = np.asarray(Image.open(p3).convert("RGB")), np.asarray(Image.open(p2).convert("RGB"))
    assert a3.shape[0] == a2.shape[0]
    assert a3.shape[1] * 2 == a2.shape[1] * 3  # three equal panels vs two

    c1 = np.round(0.5 * np.asarray(label_color(1)) * 255).astype(int)
    c2 = np.round(0.5 * np.asarray(label_color(2)) * 255).astype(int)
    third = a3.shape[1] // 3
    legend_free = slice(0, int(a3.shape[0] * 0.8))  # above the legend row
    image_panel = a3[legend_free, :third]
    truth_panel = a3[legend_free, third : 2 * third]
    pred_panel = a3[legend_free, 2 * third :]
    assert not _has_colour(image_panel, c1) and not _has_colour(image_panel, c2)
    assert _has_colour(truth_panel, c1) and not _has_colour(truth_panel, c2)
    assert _has_colour(pred_panel, c2) and not _has_colour(pred_panel, c1)
    # legend swatches (full colour) below the panels, for both listed classes
    legend = a3[int(a3.shape[0] * 0.8) :]
    full1 = np.round(np.asarray(label_color(1)) * 255).astype(int)
    full2 = np.round(np.asarray(label_color(2)) * 255).astype(int)
    assert _has_colour(legend, full1) and _has_colour(legend, full2)


def test_overlay_rgb_image_and_bad_shapes(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pred = np.zeros((20, 30), np.int64)
    out = save_overlay(rgb, None, pred, tmp_path / "rgb.png")
    assert Image.open(out).size[0] > 0
    with pytest.raises(InputError) as exc:
        save_overlay(rgb, np.zeros((20, 31)), pred, tmp_path / "bad.png")
    assert "bad.png" in str(exc.value) and "shape" in str(exc.value)
    with pytest.raises(InputError):
        save_overlay(rgb, None, pred - 1, tmp_path / "bad.png")
    with pytest.raises(InputError):
        save_overlay(np.zeros((2, 3, 4, 5)), None, pred, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_overlay_no_memory_growth(tmp_path: Path) -> None:
    image, truth, pred = _maps(32, 32)
    for _ in range(3):  # warm up matplotlib's caches
        save_overlay(image, truth, pred, tmp_path / "o.png", ["bg", "a", "b"], panel_inches=1.5, dpi=50)
    # Figures are only reachable through reference cycles inside matplotlib, which the cyclic
    # garbage collector frees; a figure kept alive anywhere (e.g. a pyplot registry) would
    # make the retained memory grow by far more than 1 MB over 25 pictures.
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(25):
            save_overlay(image, truth, pred, tmp_path / "o.png", ["bg", "a", "b"], panel_inches=1.5, dpi=50)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 1_000_000, f"memory grew by {end - start} bytes over 25 overlays"
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


# ---------------------------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------------------------
LOG_LINES = [
    '{"event": "start", "config": {"lr": 0.0001}}',
    '{"event": "step", "step": 1, "loss": 2.0}',
    '{"event": "step", "step": 2, "loss": 1.5}',
    "{this is not json",
    '{"event": "epoch", "epoch": 1, "step": 2, "train_loss": 1.75}',
    "",
    '{"event": "step", "step": 3, "loss": 1.25}',
    "[1, 2, 3]",
    '{"event": "step", "step": 4}',
    '{"event": "step", "step": 5, "loss": 1.0}',
    '{"event": "epoch", "epoch": 2, "step": 5, "train_loss": 1.1, "val_dsc": 0.61}',
    '{"event": "epoch", "epoch": 3, "step": 8, "train_loss": 0.9, "val_dsc": 0.58}',
]


def test_read_training_log_skips_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "train.jsonl"
    log.write_text("\n".join(LOG_LINES) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="simmpnet.evaluation.training_log"):
        parsed = read_training_log(log)
    assert parsed["step"] == [1.0, 2.0, 3.0, 5.0] and parsed["loss"] == [2.0, 1.5, 1.25, 1.0]
    assert parsed["epoch"] == [1.0, 2.0, 3.0] and parsed["epoch_step"] == [2.0, 5.0, 8.0]
    assert parsed["train_loss"] == [1.75, 1.1, 0.9]
    assert parsed["val_epoch"] == [2.0, 3.0] and parsed["val_dsc"] == [0.61, 0.58]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "train.jsonl:4" in warned and "train.jsonl:8" in warned and "train.jsonl:9" in warned


def test_plot_curves_writes_two_panel_png(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "train.jsonl"
    log.write_text("\n".join(LOG_LINES) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="simmpnet.evaluation.training_log"):
        out = plot_curves(log, tmp_path / "plots" / "curves.png")
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 400)
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 0  # something was drawn
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert Image.open(plot_curves(empty, tmp_path / "empty.png")).size == (1000, 400)
    with pytest.raises(InputError) as exc:
        plot_curves(tmp_path / "absent.jsonl", tmp_path / "x.png")
    assert "absent.jsonl" in str(exc.value)
    assert not (tmp_path / "x.png").exists()


def test_label_color_fixed() -> None:
    assert label_color(1) == label_color(1 + len(rep.CLASS_COLORS))
    assert label_color(1) != label_color(2)
    with pytest.raises(InputError):
        label_color(0)
