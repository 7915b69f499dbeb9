"""ONNX Runtime against PyTorch on the demo's held-out slices, with the trained demo network.

The unit tests compare ONNX Runtime with PyTorch for untrained networks; this script does it
for the network `make demo` trained (default ``runs/demo/last.pt``) on the 30 slices of the
three test slabs (default data ``runs/brain_demo_data``), at the size the network was trained
at.  Two ONNX Runtime sessions are compared: ``simmpnet.export.onnxruntime_session`` (ONNX
Runtime's default optimisations without the NCHWc layout rewrite) and ONNX Runtime's plain
defaults.  For each: the share of pixels with the PyTorch label and the largest logit
difference, slice by slice (batch 1) and per test slab (batch 10); and the median latency of a
batch-1 forward (20 runs after 5 warm-up runs, the two sessions interleaved).  Writes its block
into README.md.

Usage (from the repository root):
    python benchmarks/check_onnx_demo.py [--checkpoint runs/demo/last.pt] [--data runs/brain_demo_data]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from harness import cores, cpu_model, held_out_volumes, median_ms, time_interleaved, write_readme  # noqa: E402

BEGIN, END = "<!-- check_onnx_demo:begin -->", "<!-- check_onnx_demo:end -->"


def pytorch_logits(model: torch.nn.Module, batches: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(torch.from_numpy(x)).numpy() for x in batches]


def compare(session: ort.InferenceSession, batches: list[np.ndarray], references: list[np.ndarray]) -> tuple[float, float]:
    """(share of pixels with the PyTorch label, largest |logit difference|) over ``batches``."""
    same = total = 0
    worst = 0.0
    name = session.get_inputs()[0].name
    for x, reference in zip(batches, references):
        got = session.run(None, {name: x})[0]
        same += int((reference.argmax(1) == got.argmax(1)).sum())
        total += reference.shape[0] * reference.shape[2] * reference.shape[3]
        worst = max(worst, float(np.abs(reference - got).max()))
    return same / total, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"))
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(cores())

    from simmpnet.errors import InputError
    from simmpnet.export import export_model, onnxruntime_session
    from simmpnet.training.trainer import load_trained_model

    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint} not found; run `make demo` first")
    model, size, _ = load_trained_model(args.checkpoint, "cpu")
    model.eval()
    try:
        volumes = held_out_volumes(args.data, size)
    except InputError as err:
        raise SystemExit(f"{err}; run `make demo` first") from err
    slices = [v[i : i + 1] for v in volumes for i in range(len(v))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="check_onnx_") as folder:
        path = export_model(model, Path(folder) / "demo.onnx", "onnx")
        sessions = {
            "`simmpnet.export.onnxruntime_session`": onnxruntime_session(path, threads=cores()),
            "ONNX Runtime defaults (`ORT_ENABLE_ALL`, = `layout_rewrite=True`)": onnxruntime_session(
                path, threads=cores(), layout_rewrite=True
            ),
        }
        one = slices[len(slices) // 2]
        runs = {label: (lambda s=s: s.run(None, {s.get_inputs()[0].name: one})) for label, s in sessions.items()}
        times = time_interleaved(runs, repeats=20, warmup=5)
        single_reference, batched_reference = pytorch_logits(model, slices), pytorch_logits(model, volumes)
        for label, session in sessions.items():
            single, single_diff = compare(session, slices, single_reference)
            batched, batched_diff = compare(session, volumes, batched_reference)
            rows.append(
                f"| {label} | {100 * single:.3f} | {single_diff:.2g} | {100 * batched:.3f} | {batched_diff:.2g} | "
                f"{median_ms(times[label]):.1f} |"
            )
    block = "\n".join(
        [
            BEGIN,
            "## ONNX Runtime on the demo's test slices (`check_onnx_demo.py`)",
            "",
            f"Machine: {cpu_model()}, {cores()} cores; torch {torch.__version__}, onnxruntime {ort.__version__}; "
            f"{datetime.date.today().isoformat()}.",
            "",
            f"Network: `{args.checkpoint}` (the trained `make demo` network, {size} px), exported with "
            f"`simmpnet export`; {len(slices)} test slices of {len(volumes)} slabs.",
            "",
            "| session | same label, batch 1 (%) | max logit diff, batch 1 | same label, batch 10 (%) | max logit diff, batch 10 | latency, batch 1 (ms) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "PyTorch itself is not batch-invariant here: the same slice in a batch of 10 and alone",
            "differs in the last bits, which DS-GIM's exact ties can turn into other labels.",
            END,
        ]
    )
    print(block)
    if not args.no_readme:
        write_readme(args.readme, block, BEGIN, END)
        print(f"written to {args.readme}")


if __name__ == "__main__":
    main()
