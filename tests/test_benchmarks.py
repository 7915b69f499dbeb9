"""benchmarks/bench.py: every subcommand runs in --quick mode and writes rows that carry the
machine, the versions and the commit; those that cannot run here skip with exit 0 and no row;
the report turns CSV files into markdown tables; docs/benchmarks.md is what the report writes
from the committed benchmarks/results/."""
from __future__ import annotations

import csv
import platform
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
from benchlib import report  # noqa: E402
from benchlib.results import COLUMNS, RESULTS, Row, context, write_csv  # noqa: E402


def _run(tmp_path: Path, *argv: str) -> tuple[int, list[dict[str, str]]]:
    """Run ``bench.py argv --out tmp_path``; (exit code, rows of the CSV files written)."""
    code = bench.main([*argv, "--out", str(tmp_path)])
    rows = []
    for path in sorted(tmp_path.glob("*.csv")):
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == COLUMNS
            rows += list(reader)
    return code, rows


def _assert_context(rows: list[dict[str, str]], benchmark: str) -> None:
    assert rows, f"{benchmark}: no rows"
    import numpy
    import timm

    for row in rows:
        assert row["benchmark"] == benchmark
        assert row["value"] != ""
        assert row["quick"] == "yes"
        assert row["cpu_model"] and row["cpu_flags"] and int(row["cores"]) >= 1 and row["gpu"]
        assert (row["python"], row["torch"], row["timm"], row["numpy"]) == (
            platform.python_version(), torch.__version__, timm.__version__, numpy.__version__
        )
        assert row["commit"] and row["command"].startswith("python benchmarks/bench.py")


# ----------------------------------------------------------------------------- the report
def test_docs_page_is_the_report_of_the_committed_results():
    committed = report.PAGE.read_text(encoding="utf-8")
    assert committed == report.render(RESULTS), (
        "docs/benchmarks.md differs from the CSV files: run `python benchmarks/bench.py report` and commit it"
    )
    assert bench.main(["report", "--check"]) == 0


def test_committed_results_have_every_column_filled():
    files = sorted(RESULTS.glob("*.csv"))
    assert files
    for path in files:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == COLUMNS, path.name
            for row in reader:
                # "unknown" where a converted figure's machine was not recorded, never empty.
                assert all(row[c] for c in COLUMNS if c not in ("note", "unit")), (path.name, row)
                assert row["quick"] == "no", f"{path.name}: quick runs are not results"


def test_report_renders_tables_of_csv_files(tmp_path):
    ctx = context(repeats=3, warmup=1, threads=1, quick=False, command="python benchmarks/bench.py dmwla")
    ctx["loadavg"] = "1.50"
    write_csv(tmp_path, "dmwla", [
        Row("forward+backward", "768 x 7 x 7", "warm-up", "2.5", "ms"),
        Row("forward+backward", "768 x 7 x 7", "after warm-up", "4.6", "ms"),
        Row("forward+backward", "768 x 7 x 7", "after / warm-up", "1.845", "ratio"),
        Row("forward+backward", "384 x 14 x 14", "warm-up", "4.6", "ms"),
    ], ctx)
    checks = [Row("checks", "parity", "passed", "yes"), Row("checks", "train", "loss first", "20.1"),
              Row("checks", "purity", "changed state tensors", "0")]
    write_csv(tmp_path, "cuda", checks, dict(ctx, quick="yes", gpu="NVIDIA H200"))
    page = report.render(tmp_path)
    assert "| case | warm-up (ms) | after warm-up (ms) | after / warm-up |" in page
    assert "| 768 x 7 x 7 | 2.5 | 4.6 | 1.845 |" in page
    assert "| 384 x 14 x 14 | 4.6 |  |  |" in page
    # Cases that share no metric are listed one figure a line.
    assert "| parity | passed | yes |" in page and "| train | loss first | 20.1 |" in page
    assert f"torch {torch.__version__}" in page and f"commit {ctx['commit']}" in page
    assert ctx["cpu_model"] in page and "Warning: load average 1.50" in page
    assert "NVIDIA H200, torch" in page and "(quick: shrunk sizes, not a measurement)" in page
    assert "No results yet: `python benchmarks/bench.py model`" in page
    out = tmp_path / "page.md"
    assert bench.main(["report", "--results", str(tmp_path), "--page", str(out)]) == 0
    assert out.read_text() == page
    assert bench.main(["report", "--results", str(tmp_path), "--page", str(out), "--check"]) == 0
    out.write_text(page + "edited by hand\n")
    assert bench.main(["report", "--results", str(tmp_path), "--page", str(out), "--check"]) == 1


# ----------------------------------------------------------------------------- skips
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda runs")
def test_cuda_skips_without_a_gpu(tmp_path, capsys):
    code, rows = _run(tmp_path, "cuda", "--quick")
    assert code == 0 and rows == []
    assert "skipped cuda: needs a CUDA GPU" in capsys.readouterr().err


def test_checkpoint_benchmarks_skip_without_a_trained_network(tmp_path, capsys):
    missing = str(tmp_path / "no" / "last.pt")
    for argv in (["resample", "--quick", "--checkpoint", missing], ["onnx", "--quick", "--no-latency", "--checkpoint", missing]):
        code, rows = _run(tmp_path, *argv)
        assert code == 0 and rows == []
        assert f"skipped {argv[0]}: needs a trained checkpoint, {missing} not found" in capsys.readouterr().err


def test_all_runs_what_it_can_and_writes_the_page(tmp_path, capsys):
    # Only the benchmarks that skip here: the sequence and the page, in seconds.
    skip = ["model", "dmwla", "onnx", "predict-memory", "throughput", "precision"] + (["cuda"] if torch.cuda.is_available() else [])
    code = bench.main(["all", "--quick", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt"), "--skip", *skip])
    assert code == 0
    assert "skipped resample" in capsys.readouterr().err
    page = (tmp_path / "benchmarks.md").read_text()
    assert "## `resample`" in page and "No results yet" in page


# ----------------------------------------------------------------------------- quick runs
def test_dmwla_quick(tmp_path):
    code, rows = _run(tmp_path, "dmwla", "--quick")
    assert code == 0
    _assert_context(rows, "dmwla")
    metrics = {row["metric"] for row in rows}
    assert {"warm-up", "after warm-up", "after / warm-up", "peak RSS, warm-up", "+ over idle, after"} <= metrics
    assert {row["case"] for row in rows} == {"768 x 7 x 7"}
    assert {(row["repeats"], row["warmup"]) for row in rows} == {("1", "0")}


def test_predict_memory_quick(tmp_path):
    code, rows = _run(tmp_path, "predict-memory", "--quick")
    assert code == 0
    _assert_context(rows, "predict-memory")
    peaks = [float(row["value"]) for row in rows if row["metric"] == "peak RSS"]
    assert len(peaks) == 2 and all(p > 50 for p in peaks)
    assert {row["threads"] for row in rows} == {"1"}


@pytest.mark.slow
def test_model_quick(tmp_path):
    code, rows = _run(tmp_path, "model", "--quick", "--precision", "bf16")
    assert code == 0
    _assert_context(rows, "model")
    assert {row["table"] for row in rows} == {"steps", "yardstick", "per FLOP", "flops", "floor", "rate"}
    cases = {row["case"] for row in rows if row["table"] == "steps"}
    assert cases == {"`tiny`, B=2, 64 px, bf16", "yardstick, B=2, 64 px, bf16"}
    assert any(row["metric"] == "peak RSS, training step" for row in rows)
    assert {row["case"] for row in rows if row["table"] == "rate"} >= {"matmul 256 x 256 bf16"}
    counted = {row["case"]: float(row["value"]) for row in rows if row["table"] == "flops"}
    assert len(counted) == 4 and min(counted.values()) > 0  # the eval forwards are counted too
    per_flop = {row["metric"]: float(row["value"]) for row in rows if row["table"] == "per FLOP"}
    for mode in ("training step", "eval forward, B=1"):
        low, mid, high = (per_flop[f"{mode}, {what}"] for what in ("lowest round", "time per FLOP", "highest round"))
        assert 0 < low <= mid <= high


@pytest.mark.slow
def test_onnx_latency_quick(tmp_path, capsys):
    import onnxruntime

    code, rows = _run(tmp_path, "onnx", "--quick", "--checkpoint", str(tmp_path / "none.pt"))
    assert code == 0
    _assert_context(rows, "onnx")
    assert {row["metric"] for row in rows} == {"PyTorch eager", "ONNX Runtime CPU", "ONNX / eager"}
    assert {row["onnxruntime"] for row in rows} == {onnxruntime.__version__}
    assert "skipped onnx demo check" in capsys.readouterr().err


@pytest.mark.slow
def test_throughput_quick(tmp_path):
    code, rows = _run(tmp_path, "throughput", "--quick", "--settings", "fp32", "bf16")
    assert code == 0
    _assert_context(rows, "throughput")
    assert not [row for row in rows if row["table"] == "failures"]
    figures = {(row["table"], row["case"], row["metric"]): float(row["value"]) for row in rows}
    for network in ("ours", "yardstick"):
        for setting in ("fp32", "bf16"):
            case = f"{network} {setting}, B=1, 64 px"
            assert figures["throughput", case, "images/s"] == pytest.approx(1e3 / figures["throughput", case, "step"], rel=1e-3)
            assert figures["throughput", case, "achieved"] > 0
        assert figures["flops", f"{network}, B=1, 64 px", "training step"] > 0
    assert figures["flops", "ours, B=1, 64 px", "host syncs (dispatch count)"] == 1  # the loss read
    assert {row["case"] for row in rows if row["table"] == "per FLOP"} == {"fp32, B=1, 64 px", "bf16, B=1, 64 px"}


@pytest.mark.slow
def test_cuda_dry_run_on_the_cpu(tmp_path):
    code, rows = _run(tmp_path, "cuda", "--quick", "--device", "cpu", "--amps", "fp32", "--skip-timings")
    assert code in (0, 1)  # 6 steps need not lower the loss by a fifth; the rows say either way
    _assert_context(rows, "cuda")
    checks = {row["case"]: row["value"] for row in rows if row["metric"] == "passed"}
    assert set(checks) == {"parity_cpu_cuda", "inference_leaves_model_unchanged", "train_fp32"}
    assert checks["parity_cpu_cuda"] == checks["inference_leaves_model_unchanged"] == "yes"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A `tiny` Sim-MPNet at 64 px after the memory warm-up, saved as a checkpoint, and a
    Synapse-layout folder with two small test volumes."""
    from simmpnet import SimMPNet

    root = tmp_path_factory.mktemp("bench_trained")
    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", 9, img_size_a=64, img_size_b=56)
    model.end_warmup()
    checkpoint = model.save(root / "model.pt")
    data = root / "data"
    (data / "test_vol_h5").mkdir(parents=True)
    (data / "lists").mkdir()
    rng = np.random.default_rng(0)
    for name in ("case1", "case2"):
        with h5py.File(data / "test_vol_h5" / f"{name}.npy.h5", "w") as handle:
            handle["image"] = rng.random((3, 40, 48), dtype=np.float32)
            handle["label"] = rng.integers(0, 9, (3, 40, 48)).astype(np.uint8)
    (data / "lists" / "test_vol.txt").write_text("case1\ncase2\n")
    return checkpoint, data


@pytest.mark.slow
def test_trained_network_benchmarks_quick(tmp_path, trained):
    checkpoint, data = trained
    given = ["--quick", "--checkpoint", str(checkpoint), "--data", str(data)]
    code, rows = _run(tmp_path / "resample", "resample", *given)
    assert code == 0
    _assert_context(rows, "resample")
    assert {row["metric"] for row in rows} == {"`labels`", "`logits`", "logits / labels", "same label"}
    assert any(row["case"] == "demo slabs, 2 x 2 slices of 40 x 48" for row in rows)
    code, rows = _run(tmp_path / "onnx", "onnx", "--no-latency", *given)
    assert code == 0
    _assert_context(rows, "onnx")
    assert {row["table"] for row in rows} == {"demo"}
    assert {row["metric"] for row in rows if row["unit"] == "%"} == {"same label, batch 1", "same label, batch 2"}


@pytest.mark.slow
def test_precision_quick(tmp_path):
    code, rows = _run(tmp_path, "precision", "--quick")
    assert code == 0
    ratios = [r for r in rows if r["table"] == "per FLOP" and r["metric"] == "ours / yardstick, time per FLOP"]
    assert {r["case"].split(",")[0] for r in ratios} == {"fp32", "bf16", "bf16 fp32-islands"}
    assert all(float(r["value"]) > 0 for r in ratios)
    volumes = [r for r in rows if r["table"] == "volume"]
    assert sorted(r["case"].split(",")[0] for r in volumes) == ["paper bf16", "paper fp32", "tiny bf16", "tiny fp32"]

