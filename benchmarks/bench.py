"""The benchmarks of simmpnet, one command: each subcommand measures one thing and writes a CSV
file into benchmarks/results/ (one row per figure, each with the machine, the package versions
and the commit); ``report`` turns those files into docs/benchmarks.md.

    python benchmarks/bench.py all                 # every benchmark, then the docs page
    python benchmarks/bench.py model               # one benchmark
    python benchmarks/bench.py model --quick       # shrunk sizes, 1 round: tests the code, measures nothing
    python benchmarks/bench.py report [--check]    # rewrite (or check) docs/benchmarks.md

Run the measurements on a quiet machine: nothing else on the cores.  A benchmark that cannot run
here (``cuda`` without a GPU; ``resample`` and the ``onnx`` demo check without the trained
`make demo` network) prints ``skipped <benchmark>: <why>`` on stderr, writes no row and exits 0.
"""
from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib.harness import Skip  # noqa: E402
from simmpnet.provenance import cores  # noqa: E402
from benchlib.results import RESULTS, ROOT, context, write_csv  # noqa: E402

#: Subcommand -> (module of benchlib, one line of help), in the order `all` runs them.
BENCHMARKS = {
    "model": ("model", "training step, eval forward and peak RSS of paper and tiny against a timm yardstick"),
    "dmwla": ("dmwla", "one DMW-LA block after warm-up against during warm-up"),
    "onnx": ("onnx_runtime", "ONNX Runtime against PyTorch eager (and on the trained demo network)"),
    "resample": ("resample", "resample labels against logits (needs the trained demo network)"),
    "predict-memory": ("predict_memory", "peak RSS of `simmpnet predict` over 200 and 2,000 slices"),
    "cuda": ("cuda", "checks and timings on a CUDA GPU (needs one)"),
    "throughput": ("throughput", "paper-scale training throughput, settings on and off, against the yardstick"),
    "precision": ("precision", "bf16 against fp32 per FLOP against the yardstick, and a whole volume predicted"),
}
#: Where --quick runs write unless --out says otherwise: never among the committed results.
QUICK_OUT = ROOT / "runs" / "bench-quick"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help=f"folder of the CSV files (default {RESULTS.relative_to(ROOT)}; "
                                                 f"--quick: {QUICK_OUT.relative_to(ROOT)})")
    parser.add_argument("--quick", action="store_true",
                        help="shrunk sizes, 1 round, no warm-up: tests the code, measures nothing")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: the benchmark's own; --quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up rounds (default: the benchmark's own; --quick 0)")
    parser.add_argument("--threads", type=int, help="torch threads (default: one per available core)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in BENCHMARKS.items():
        module = importlib.import_module(f"benchlib.{module_name}")
        child = sub.add_parser(name, help=summary, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(child)
        module.add_arguments(child)
    every = sub.add_parser("all", help="every benchmark above in turn, then the report",
                           description="Every benchmark in turn (those that cannot run here are skipped), then "
                                       "`report` into docs/benchmarks.md (into OUT/benchmarks.md for another --out).")
    _common(every)
    every.add_argument("--checkpoint", type=Path, help="the trained network of onnx and resample (default runs/demo/last.pt)")
    every.add_argument("--data", type=Path, help="its data (default runs/brain_demo_data)")
    every.add_argument("--skip", nargs="+", default=[], choices=list(BENCHMARKS), help="benchmarks not to run")
    report = sub.add_parser("report", help="docs/benchmarks.md from the CSV files",
                            description="Write the docs page of the CSV files in RESULTS (tables per benchmark and run).")
    report.add_argument("--results", type=Path, default=RESULTS, help="folder of the CSV files")
    report.add_argument("--page", type=Path, help="the page to write (default docs/benchmarks.md)")
    report.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is out of date")
    return parser


def measure(name: str, args: argparse.Namespace, command: str) -> Path | None:
    """Run benchmark ``name`` with ``args``; returns the CSV file written, None when skipped."""
    from benchlib.report import _loaded, _table

    module = importlib.import_module(f"benchlib.{BENCHMARKS[name][0]}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else module.REPEATS
    if args.warmup is None:
        args.warmup = 0 if args.quick else module.WARMUP
    if args.threads is None:
        args.threads = getattr(module, "THREADS", None) or cores()
    out = args.out or (QUICK_OUT if args.quick else RESULTS)

    import torch

    torch.set_num_threads(args.threads)
    ctx = context(repeats=args.repeats, warmup=args.warmup, threads=args.threads, quick=args.quick, command=command)
    print(f"{name}: {ctx['cpu_model']}, {ctx['cores']} cores, GPU {ctx['gpu']}, torch {ctx['torch']}, "
          f"{args.threads} threads, commit {ctx['commit']}", flush=True)
    try:
        rows = module.run(args)
    except Skip as why:
        print(f"skipped {name}: {why}", file=sys.stderr, flush=True)
        return None
    if not rows:
        return None
    path = write_csv(out, name, rows, ctx)
    records = [{"case": r.case, "metric": r.metric, "unit": r.unit, "value": r.value} for r in rows]
    for table in dict.fromkeys(r.table for r in rows):
        print(f"\n{table}:")
        print("\n".join(_table([rec for rec, r in zip(records, rows) if r.table == table])))
    print(f"\nwritten: {path}", flush=True)
    if not args.quick and _loaded(ctx["loadavg"]):
        print(f"warning: load average {ctx['loadavg']} at the start: other processes were running, "
              "the times are not to be trusted", file=sys.stderr, flush=True)
    return path


def failed(path: Path | None) -> bool:
    """Whether the file records a check that did not pass."""
    from benchlib.results import read_csv

    return path is not None and any(row["metric"] == "passed" and row["value"] == "no" for row in read_csv(path))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "benchmarks/bench.py", *argv])
    if args.command == "report":
        from benchlib import report

        page = args.page or report.PAGE
        text = report.render(args.results)
        if args.check:
            current = page.read_text(encoding="utf-8") if page.is_file() else ""
            if current != text:
                print(f"{page} is out of date: run `python benchmarks/bench.py report`", file=sys.stderr)
                return 1
            print(f"{page} is up to date")
            return 0
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text, encoding="utf-8")
        print(f"written: {page}")
        return 0
    if args.command != "all":
        return int(failed(measure(args.command, args, command)))

    parser = build_parser()
    written, skipped, failures = [], [], []
    for name in BENCHMARKS:
        if name in args.skip:
            continue
        sub_argv = [name, *(["--quick"] if args.quick else [])]
        for option in ("out", "repeats", "warmup", "threads"):
            if getattr(args, option) is not None:
                sub_argv += [f"--{option}", str(getattr(args, option))]
        if name in ("onnx", "resample") or (name == "cuda" and args.checkpoint):
            for option in ("checkpoint", "data"):
                if getattr(args, option) is not None:
                    sub_argv += [f"--{option}", str(getattr(args, option))]
        path = measure(name, parser.parse_args(sub_argv), command)
        (written if path else skipped).append(name)
        if failed(path):
            failures.append(name)
    out = args.out or (QUICK_OUT if args.quick else RESULTS)
    from benchlib import report

    page = report.PAGE if out.resolve() == RESULTS.resolve() else out / "benchmarks.md"
    report.write(out, page)
    print(f"\nran: {', '.join(written) or 'none'}; skipped: {', '.join(skipped) or 'none'}; page: {page}")
    if failures:
        print(f"FAILED checks in: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
