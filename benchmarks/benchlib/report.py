"""docs/benchmarks.md from the CSV files of benchmarks/results/: per benchmark, its runs newest
first, each with the machine, versions and commit it ran on and its tables (cases down,
metrics across).  The page is generated, never edited by hand; tests/test_benchmarks.py checks
that the committed page is what this module writes from the committed files."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .results import RESULTS, ROOT, UNKNOWN, read_csv

PAGE = ROOT / "docs" / "benchmarks.md"
#: A 1-minute load average from which a run's times are flagged: other work was on the cores.
LOADED = 0.5

#: The benchmarks in the order of the page, each with what it measures.
BENCHMARKS = {
    "model": (
        "The whole network: training step and batch-1 eval forward of the `paper` and `tiny` "
        "variants (9 classes, after the memory warm-up; the trainer's 15-subset loss and fused "
        "AdamW) against the timm yardstick `maxxvit_rmlp_small_rw_256` (`features_only=True`, "
        "random weights: the backbone of encoder A alone), peak RSS of each in a fresh process, "
        "and the floor with the same mathematics: the global reads `softmax(t q^T) v` of the "
        "DMW-LA blocks replayed alone, added to the yardstick. From 2026-12-06 on, each run is in one "
        "precision (`--precision fp32` or `bf16`, CPU autocast for ours and the yardstick alike) "
        "and gives the time per counted FLOP against the yardstick."
    ),
    "dmwla": (
        "One DMW-LA block, forward + backward, at the four encoder-B stage sizes of `paper` "
        "(B = 2, d = 256, n_k = 9, P = 100): during warm-up (plain non-local attention, with its "
        "random writes into the bank) against after warm-up (the memory read of each position's "
        "category block and the memory update)."
    ),
    "onnx": (
        "ONNX Runtime (CPU) against PyTorch eager: the exported eval network of `paper` and "
        "`tiny` at B = 1 (`latency`), and on the trained demo network the labels and logits of "
        "the held-out slices through two ONNX Runtime sessions (`demo`)."
    ),
    "resample": (
        "`predict_slices` with `resample=\"labels\"` (the paper's nearest resize of the label map) "
        "against `resample=\"logits\"` (bilinear logits, then the argmax), with the trained demo "
        "network: milliseconds per slice, forward included, and the share of pixels with the "
        "same label in both modes."
    ),
    "predict-memory": (
        "Peak RSS of `simmpnet predict` over folders of N PNG slices (a small U-Net, one torch "
        "thread), each run in a fresh process: it must not grow with N (target: within 10 %)."
    ),
    "cuda": (
        "Checks on a CUDA GPU (CPU/GPU parity, eval purity, 30 training steps under fp32, bf16 and "
        "fp16, a trained network under autocast) and timings of training steps and eval forwards."
    ),
    "throughput": (
        "Paper-scale training: the `paper` step as the trainer takes it (256 px, 9 classes, after "
        "the memory warm-up) and the timm yardstick at the same batch, for each setting (fp32, "
        "bf16 autocast, the unfused optimiser, channels-last, `torch.compile`, CUDA graphs), "
        "interleaved; FLOPs counted with every attention as explicit matrix products; with "
        "`--authors-repo`, the authors' network and training step too."
    ),
    "precision": (
        "bf16 against fp32 on the CPU: the `paper` eval forward (B = 4) and training step (B = 2) at "
        "256 px against the timm yardstick under the same precision, per counted FLOP; `bf16` runs "
        "the default islands (the DMW-LA global reads in bf16; in the run of 08:19 the memory reads "
        "too, an island since dropped), `bf16 fp32-islands` keeps every island in fp32; and a whole "
        "181 x 217 x 181 volume predicted by `tiny` and `paper`. All cases of a run share one process: "
        "after the fp32 networks have run in it, the bf16 ones ran 5 to 15 % slower than in a run of "
        "their own (`--precisions bf16`), as a training or prediction run is. The loss's half-precision "
        "heads are cast to fp32 once from 11:08 on (before: every subset sum twice)."
    ),
}

#: What a table holds, where its rows need saying.
CAPTIONS = {
    ("model", "steps"): "Median milliseconds; peak RSS in MB, and its growth over the RSS before the workload.",
    ("model", "yardstick"): "Ours over the yardstick.",
    ("model", "floor"): "The global reads alone, and added to the yardstick (which is our encoder A); "
                        "the targets are those of issue 5 for `paper`.",
    ("model", "per FLOP"): "Our time per counted FLOP over the yardstick's, first variant, same precision: "
                           "the median over the rounds of the ratio within a round, and its lowest and highest round.",
    ("model", "flops"): "Counted FLOPs (fp32, attention as explicit products).",
    ("model", "rate"): "The rate of the eval forward's global reads, and of a square matrix product in the run's precision on the same threads.",
    ("onnx", "latency"): "Eval forward, B = 1, median milliseconds.",
    ("onnx", "demo"): "Held-out slices of the demo; batch 10 is one test slab.",
    ("predict-memory", "peak"): "One run per count.",
    ("cuda", "checks"): "Each check's figures.",
    ("cuda", "timings"): "Median milliseconds, each run followed by a wait for the GPU; TF32 on.",
    ("throughput", "throughput"): "Median step time, each run followed by a wait for the GPU; images/s; "
                                  "counted FLOPs over the step time; peak GPU memory of the step with "
                                  "the parameters and optimiser state.",
    ("throughput", "per FLOP"): "Our milliseconds per counted FLOP over the yardstick's, same setting and batch.",
    ("throughput", "authors"): "Our images/s over the authors' (their step as published: fp32).",
    ("throughput", "flops"): "Counted FLOPs of one training step; host syncs of one eager fp32 step of ours.",
    ("precision", "per FLOP"): (
        "Median milliseconds, interleaved; our time per counted FLOP over the yardstick's: the median over "
        "the rounds of the ratio within a round, and (from 10:37 on) its lowest and highest round "
        "(until 10:26: the ratio of the medians)."
    ),
    ("precision", "speed-up"): "fp32 milliseconds over this precision's, for ours and for the yardstick.",
    ("precision", "flops"): "Counted FLOPs of one eval forward and one training step (fp32, attention as explicit products).",
    ("precision", "volume"): "One prediction of the whole volume per case, interleaved, after a warm-up on 4 slices.",
    ("throughput", "failures"): "Cases that failed to build, count or run (the traceback is in the run's output).",
}

HEADER = """\
# Benchmarks

<!-- Generated by `python benchmarks/bench.py report` from benchmarks/results/*.csv; do not edit by hand. -->

Every table below comes from a CSV file in `benchmarks/results/`, one file per run of
`python benchmarks/bench.py <benchmark>` (`benchmarks/README.md` says how to run them). Times
are medians of interleaved rounds after warm-up runs, taken with nothing else running on the
cores; a run whose load average was high when it started says so. What the figures mean and
where the time goes: [Results](results.md#speed).
"""


def load(folder: Path) -> dict[str, list[tuple[str, list[dict[str, str]]]]]:
    """``{benchmark: [(file name, rows), ...]}``, each benchmark's runs newest first."""
    runs: dict[str, list[tuple[str, list[dict[str, str]]]]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.csv")):
        rows = read_csv(path)
        if rows:
            runs[rows[0]["benchmark"]].append((path.name, rows))
    for name in runs:
        runs[name].sort(key=lambda run: (run[1][0]["date"], run[0]), reverse=True)
    return runs


def render(folder: Path = RESULTS) -> str:
    runs = load(folder)
    lines = [HEADER]
    for benchmark in [*BENCHMARKS, *sorted(set(runs) - set(BENCHMARKS))]:
        lines += [f"## `{benchmark}`", "", BENCHMARKS.get(benchmark, ""), ""]
        if not runs.get(benchmark):
            lines += [f"No results yet: `python benchmarks/bench.py {benchmark}` writes them.", ""]
        for name, rows in runs.get(benchmark, []):
            lines += _run(benchmark, name, rows)
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_known(value: str) -> bool:
    return value not in ("", UNKNOWN)


def _known(value: str) -> str:
    return value if _is_known(value) else "unknown"


def _count(value: str, what: str) -> str:
    """``"2 cores"``, or ``"cores unknown"``."""
    return f"{value} {what}" if _is_known(value) else f"{what} unknown"


def _run(benchmark: str, name: str, rows: list[dict[str, str]]) -> list[str]:
    ctx = rows[0]
    device = ctx["cpu_model"] if ctx["gpu"] in ("none", "") else ctx["gpu"]
    title = f"### {ctx['date']}: {device}, torch {ctx['torch']}"
    if ctx["quick"] == "yes":
        title += " (quick: shrunk sizes, not a measurement)"
    flags = f"flags {ctx['cpu_flags']}" if _is_known(ctx["cpu_flags"]) else "flags unknown"
    lines = [
        title,
        "",
        f"- Machine: {_known(ctx['cpu_model'])} CPU ({flags}; torch CPU capability {_known(ctx['torch_cpu_capability'])}), "
        f"{_count(ctx['cores'], 'cores')}, {_count(ctx['memory_gib'], 'GiB RAM')}, GPU {_known(ctx['gpu'])}; "
        f"{_count(ctx['threads'], 'threads')}; load average at the start {_known(ctx['loadavg'])}.",
        f"- Versions: Python {_known(ctx['python'])}, torch {_known(ctx['torch'])}, timm {_known(ctx['timm'])}, "
        f"numpy {_known(ctx['numpy'])}, onnxruntime {_known(ctx['onnxruntime'])}; commit {_known(ctx['commit'])}.",
        f"- Command: `{ctx['command']}`; {ctx['repeats']} timed round(s) after {ctx['warmup']} warm-up round(s). "
        f"File: `{name}`.",
    ]
    if ctx["note"]:
        lines.append(f"- Note: {ctx['note']}")
    if _loaded(ctx["loadavg"]):
        lines.append(f"- Warning: load average {ctx['loadavg']} at the start: other processes were running, "
                     "and the times are not to be trusted.")
    lines.append("")
    tables: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        tables[row["table"]].append(row)
    for table, table_rows in tables.items():
        caption = CAPTIONS.get((benchmark, table))
        lines += [f"{table.capitalize()}. {caption}" if caption else f"{table.capitalize()}.", ""]
        lines += _table(table_rows) + [""]
    return lines


def _loaded(loadavg: str) -> bool:
    try:
        return float(loadavg) >= LOADED
    except ValueError:
        return False


def _header(row: dict[str, str]) -> str:
    return f"{row['metric']} ({row['unit']})" if row["unit"] not in ("", "ratio") else row["metric"]


def _table(rows: list[dict[str, str]]) -> list[str]:
    """Cases down and metrics across; a table whose cases share few metrics (under half the
    cells filled) is listed one figure per line instead."""
    cases = list(dict.fromkeys(row["case"] for row in rows))
    metrics = list(dict.fromkeys(_header(row) for row in rows))
    cells = {(row["case"], _header(row)): row["value"] for row in rows}
    if len(cells) * 2 < len(cases) * len(metrics):
        return ["| case | figure | value |", "|---|---|---:|"] + [
            f"| {row['case']} | {_header(row)} | {row['value']} |" for row in rows
        ]
    lines = ["| case | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(cells.get((case, m), "") for m in metrics) + " |")
    return lines


def write(folder: Path = RESULTS, page: Path = PAGE) -> Path:
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(folder), encoding="utf-8")
    return page
