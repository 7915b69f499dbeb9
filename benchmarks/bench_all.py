"""All benchmarks in one run: Sim-MPNet `paper` against a timm MaxxViT yardstick, peak memory,
ONNX Runtime latency, and the `tiny` training step.  Writes its table into README.md.

(a) training step (B=2, 256 px) and eval forward (B=1, ``torch.inference_mode``) of the `paper`
    variant (9 classes, after the memory warm-up) and of the yardstick
    ``timm.create_model("maxxvit_rmlp_small_rw_256", pretrained=False, features_only=True)``.
    Ours: forward, DeepSupervisionLoss (the trainer's loss), backward, AdamW step, memory commit.
    Yardstick: forward, loss = sum of the means of its feature maps, backward, AdamW step.
    Both use the fused AdamW kernel, as the trainer does.
(b) peak RSS (``ru_maxrss``) of the two training steps, each in a fresh child process.
(c) ONNX Runtime (CPU, `simmpnet.export.onnxruntime_session`) latency of the exported eval networks of `paper` and `tiny`, B=1,
    against PyTorch eager eval.
(d) `tiny` training step, B=8, 128 px.
(e) the floor under (a) with the same mathematics: the global reads ``softmax(t q^T) v`` of the
    `paper` DMW-LA blocks (docs/method.md: over all N positions of each map; N = 3,136 at the
    first stage) replayed alone with the shapes one training step / eval forward gives them,
    and a square fp32 matrix product for the rate the CPU reaches.  Encoder A is the yardstick
    itself, so "yardstick + global reads" is a lower bound on Sim-MPNet's time.

All timed cases run interleaved, round by round, after warm-up runs; the figures are medians.
torch and ONNX Runtime use one thread per available core.

Usage (from the repository root or from benchmarks/):
    python benchmarks/bench_all.py                # full run, rewrites the bench_all block of README.md
    python benchmarks/bench_all.py --quick        # 2 repetitions, prints only (add --readme to write)
    python benchmarks/bench_all.py --profile      # top operators of the `paper` training step
"""
from __future__ import annotations

import argparse
import datetime
import json
import resource
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from harness import cores, cpu_model, median_ms, peak_rss_mb, rss_mb, time_interleaved, write_readme  # noqa: E402

BEGIN, END = "<!-- bench_all:begin -->", "<!-- bench_all:end -->"
N_CLASSES = 9
YARDSTICK = "maxxvit_rmlp_small_rw_256"
PAPER_TRAIN = (2, 256)
TINY_TRAIN = (8, 128)


def memory_gib() -> str:
    try:
        with open("/proc/meminfo") as handle:
            kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
        return f"{kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        return "RAM unknown"


# ----------------------------------------------------------------------- cases
def ours(variant: str, batch: int, side: int) -> tuple[torch.nn.Module, Callable[[], None], Callable[[], None]]:
    """`variant` after warm-up: (model, training step at (batch, side), eval forward at B=1)."""
    from simmpnet import SimMPNet
    from simmpnet.training.losses import DeepSupervisionLoss

    torch.manual_seed(0)
    model = SimMPNet.from_variant(variant, n_classes=N_CLASSES)
    model.end_warmup()
    criterion = DeepSupervisionLoss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    x = torch.rand(batch, 1, side, side)
    y = torch.randint(0, N_CLASSES, (batch, side, side))
    x1 = torch.rand(1, 1, model.config.img_size_a, model.config.img_size_a)

    def train_step() -> None:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimiser.step()
        model.commit_memory()  # the memory change this step recorded

    def eval_forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(x1)

    return model, train_step, eval_forward


def yardstick(batch: int, side: int) -> tuple[Callable[[], None], Callable[[], None]]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(YARDSTICK, pretrained=False, features_only=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    x = torch.rand(batch, 3, side, side)
    x1 = torch.rand(1, 3, side, side)

    def train_step() -> None:
        model.train()
        optimiser.zero_grad(set_to_none=True)
        loss = sum(f.mean() for f in model(x))
        loss.backward()
        optimiser.step()

    def eval_forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(x1)

    return train_step, eval_forward


def global_reads(model: torch.nn.Module, batch: int, side: int) -> tuple[Callable[[], None], Callable[[], None], float]:
    """(e): the scaled-dot-product attentions one training forward of ``model`` at
    (batch, side) and one eval forward at B=1 call, replayed on random tensors: (forward +
    backward of the training ones, eval forwards, multiply-adds x 2 of the eval forwards)."""
    import torch.nn.functional as F

    shapes: dict[str, list[tuple[torch.Size, torch.Size, torch.Size, float | None]]] = {"train": [], "eval": []}
    original = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        shapes["train" if model.training else "eval"].append((q.shape, k.shape, v.shape, kwargs.get("scale")))
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        model.train()
        model(torch.rand(batch, 1, side, side))
        model.discard_memory()
        model.eval()
        with torch.inference_mode():
            model(torch.rand(1, 1, side, side))
    finally:
        F.scaled_dot_product_attention = original

    def tensors(mode: str, grad: bool) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(torch.randn(s, requires_grad=grad) for s in call[:3]) for call in shapes[mode]]

    train_inputs, eval_inputs = tensors("train", True), tensors("eval", False)
    scales = {mode: [call[3] for call in shapes[mode]] for mode in shapes}

    def train_reads() -> None:
        total = sum(original(q, k, v, scale=s).sum() for (q, k, v), s in zip(train_inputs, scales["train"]))
        total.backward()

    def eval_reads() -> None:
        with torch.inference_mode():
            for (q, k, v), s in zip(eval_inputs, scales["eval"]):
                original(q, k, v, scale=s)

    flops = sum(2.0 * q.numel() * k.shape[-2] + 2.0 * q.shape[:-1].numel() * k.shape[-2] * v.shape[-1] for q, k, v in eval_inputs)
    return train_reads, eval_reads, flops


def matmul_case(n: int = 2048) -> Callable[[], None]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.mm(a, b)


def onnx_case(model: torch.nn.Module, folder: Path, name: str) -> Callable[[], None]:
    """Export the eval network of ``model`` and return a B=1 ONNX Runtime (CPU) run."""
    from simmpnet.export import export_model, onnxruntime_session

    path = export_model(model, folder / f"{name}.onnx", "onnx")
    session = onnxruntime_session(path, threads=cores())
    side = model.config.img_size_a
    feed = {session.get_inputs()[0].name: torch.rand(1, 1, side, side).numpy()}
    return lambda: session.run(None, feed)


# ------------------------------------------------------------------- peak RSS
def rss_child(case: str) -> None:
    """Child side: build the case, run its training step 3 times, print the peaks as JSON."""
    torch.set_num_threads(cores())
    step = ours("paper", *PAPER_TRAIN)[1] if case == "paper" else yardstick(*PAPER_TRAIN)[0]
    idle = rss_mb()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({"ru_maxrss_mb": peak, "vmhwm_mb": peak_rss_mb(), "idle_rss_mb": idle}))


def child_rss(case: str) -> tuple[float, float]:
    """``(ru_maxrss, ru_maxrss - RSS before the step)`` in MB of a fresh child process.

    Linux carries ``ru_maxrss`` over ``exec`` from the forked copy of the parent, so this must
    run while the parent is still small (before any model is built); the child's own ``VmHWM``
    is checked against it."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rss-case", case], check=True, capture_output=True, text=True
    ).stdout
    record = json.loads(out.strip().splitlines()[-1])
    if abs(record["ru_maxrss_mb"] - record["vmhwm_mb"]) > 0.05 * record["vmhwm_mb"]:
        print(f"warning: {case}: ru_maxrss {record['ru_maxrss_mb']:.0f} MB but VmHWM {record['vmhwm_mb']:.0f} MB", flush=True)
    return record["ru_maxrss_mb"], record["ru_maxrss_mb"] - record["idle_rss_mb"]


# -------------------------------------------------------------------- profile
def profile(variant: str, rows: int, shapes: bool) -> None:
    """Print the operators of one training step of ``variant`` by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch, side = PAPER_TRAIN if variant == "paper" else TINY_TRAIN
    _, step, _ = ours(variant, batch, side)
    step()  # warm-up
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        step()
    averages = prof.key_averages(group_by_input_shape=shapes)
    total = sum(event.self_cpu_time_total for event in averages) / 1000.0
    print(f"{variant} training step (B={batch}, {side} px), {torch.get_num_threads()} threads: {total:.0f} ms self CPU in all")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


# --------------------------------------------------------------------- report
def render(
    times: dict[str, list[float]],
    rss: dict[str, tuple[float, float]],
    repeats: int,
    warmup: int,
    command: str,
    reads_flops: float = 0.0,
) -> str:
    ms = {name: median_ms(samples) for name, samples in times.items()}

    def ratio(a: str, b: str) -> str:
        return f"{ms[a] / ms[b]:.2f}" if a in ms and b in ms else "-"

    lines = [
        BEGIN,
        "## All in one (`bench_all.py`)",
        "",
        f"Machine: {cpu_model()}, {cores()} cores, {memory_gib()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {datetime.date.today().isoformat()}.",
        "",
        f"Command: `{command}`. Medians of {repeats} interleaved rounds after {warmup} warm-up round(s).",
        "",
        f"Yardstick: timm `{YARDSTICK}` (`features_only=True`, random weights), the backbone of our",
        "encoder A alone; its loss is the sum of the means of its four feature maps. Ours: `paper`",
        "variant, 9 classes, after the memory warm-up, `DeepSupervisionLoss` (15 head subsets), fused",
        "AdamW (as the trainer; the yardstick too), memory commit. Eval forwards under `torch.inference_mode`.",
        "",
        "| case | Sim-MPNet `paper` | yardstick | ratio |",
        "|---|---:|---:|---:|",
        f"| training step, B=2, 256 px (ms) | {ms['paper_train']:.0f} | {ms['yard_train']:.0f} | {ratio('paper_train', 'yard_train')} |",
        f"| eval forward, B=1, 256 px (ms) | {ms['paper_eval']:.0f} | {ms['yard_eval']:.0f} | {ratio('paper_eval', 'yard_eval')} |",
    ]
    if rss:
        (ours_peak, ours_growth), (yard_peak, yard_growth) = rss["paper"], rss["yardstick"]
        lines.append(
            f"| training step peak RSS, `ru_maxrss` (MB; + over the RSS before the step) | "
            f"{ours_peak:.0f} (+{ours_growth:.0f}) | {yard_peak:.0f} (+{yard_growth:.0f}) | {ours_peak / yard_peak:.2f} |"
        )
    if "reads_train" in ms:
        floor_train = (ms["yard_train"] + ms["reads_train"]) / ms["yard_train"]
        floor_eval = (ms["yard_eval"] + ms["reads_eval"]) / ms["yard_eval"]
        gflops_reads = reads_flops / ms["reads_eval"] / 1e6
        gflops_mm = 2.0 * 2048**3 / ms["matmul"] / 1e6
        lines += [
            "",
            "The floor with the same mathematics: the global reads `softmax(t q^T) v` of the `paper`",
            "DMW-LA blocks (docs/method.md), replayed alone at the shapes of one training step / eval",
            "forward, added to the yardstick (which is our encoder A):",
            "",
            "| case | global reads alone (ms) | yardstick + global reads (ms) | floor ratio | target |",
            "|---|---:|---:|---:|---:|",
            f"| training step, B=2 (forward + backward) | {ms['reads_train']:.0f} | {ms['yard_train'] + ms['reads_train']:.0f} | {floor_train:.2f} | 1.5 |",
            f"| eval forward, B=1 | {ms['reads_eval']:.0f} | {ms['yard_eval'] + ms['reads_eval']:.0f} | {floor_eval:.2f} | 1.75 |",
            "",
            f"The eval reads run at {gflops_reads:.0f} GFLOP/s; a 2048 x 2048 fp32 matrix product on the",
            f"same threads runs at {gflops_mm:.0f} GFLOP/s.",
        ]
    lines += [
        "",
        "| eval forward, B=1 | PyTorch eager (ms) | ONNX Runtime CPU (ms) | ONNX / eager |",
        "|---|---:|---:|---:|",
    ]
    for variant in ("paper", "tiny"):
        if f"ort_{variant}" in ms:
            side = 256 if variant == "paper" else 128
            lines.append(
                f"| `{variant}` ({side} px) | {ms[f'{variant}_eval']:.0f} | {ms[f'ort_{variant}']:.0f} | "
                f"{ratio(f'ort_{variant}', f'{variant}_eval')} |"
            )
        else:
            lines.append(f"| `{variant}` | {ms[f'{variant}_eval']:.0f} | not run | - |")
    lines += [
        "",
        "| `tiny` | ms |",
        "|---|---:|",
        f"| training step, B=8, 128 px | {ms['tiny_train']:.0f} |",
        "",
        "The ONNX export computes the memory read densely (scores against all n_k x P slots, masked",
        "to the query's category), which costs n_k times the multiply-adds of the chunked eager read.",
        END,
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 warm-up; README untouched unless --readme")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 7, --quick 2)")
    parser.add_argument("--readme", type=Path, help="file to write the table into (default benchmarks/README.md)")
    parser.add_argument("--no-onnx", action="store_true", help="skip (c)")
    parser.add_argument("--no-rss", action="store_true", help="skip (b)")
    parser.add_argument("--profile", action="store_true", help="only profile a training step and print the top operators")
    parser.add_argument("--profile-variant", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--profile-shapes", action="store_true", help="group the profile by input shapes")
    parser.add_argument("--rss-case", choices=["paper", "yardstick"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(cores())
    if args.rss_case:
        rss_child(args.rss_case)
        return
    if args.profile:
        profile(args.profile_variant, args.profile_rows, args.profile_shapes)
        return

    repeats = args.repeats or (2 if args.quick else 7)
    warmup = 1 if args.quick else 2
    command = "python benchmarks/bench_all.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"machine: {cpu_model()}, {cores()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    # (b) first: the children's ru_maxrss would include the parent's size at the fork.
    rss = {} if args.no_rss else {case: child_rss(case) for case in ("paper", "yardstick")}
    paper, paper_train, paper_eval = ours("paper", *PAPER_TRAIN)
    tiny, tiny_train, tiny_eval = ours("tiny", *TINY_TRAIN)
    yard_train, yard_eval = yardstick(*PAPER_TRAIN)
    reads_train, reads_eval, reads_flops = global_reads(paper, *PAPER_TRAIN)
    cases: dict[str, Callable[[], None]] = {
        "paper_train": paper_train,
        "yard_train": yard_train,
        "reads_train": reads_train,
        "paper_eval": paper_eval,
        "yard_eval": yard_eval,
        "reads_eval": reads_eval,
        "matmul": matmul_case(),
        "tiny_train": tiny_train,
        "tiny_eval": tiny_eval,
    }
    with tempfile.TemporaryDirectory(prefix="bench_all_") as folder:
        if not args.no_onnx:
            print("exporting paper and tiny to ONNX ...", flush=True)
            cases["ort_paper"] = onnx_case(paper, Path(folder), "paper")
            cases["ort_tiny"] = onnx_case(tiny, Path(folder), "tiny")
        print(f"timing {len(cases)} cases, {repeats} rounds ...", flush=True)
        times = time_interleaved(cases, repeats, warmup=warmup)
    block = render(times, rss, repeats, warmup, command, reads_flops)
    print(block)
    readme = args.readme or (None if args.quick else HERE / "README.md")
    if readme is not None:
        write_readme(readme, block, BEGIN, END)
        print(f"written to {readme}")
    else:
        print("(--quick: README left unchanged; pass --readme FILE to write the block)")


if __name__ == "__main__":
    main()
