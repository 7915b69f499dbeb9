"""How far bf16 agrees with fp32 on a trained Sim-MPNet: the choices made inside the fp32
islands, and the labels.

Table 1 runs the demo's held-out slices (resized to the network's input, as prediction does)
through four forwards: pure fp32; bf16 autocast with the islands in fp32 (the default); bf16
autocast with the islands in bf16 (`simmpnet.precision`); and, as a yardstick, bf16 autocast
with fp32 islands whose reads are moved by one bf16 step at random where they enter the
block's output projection (`UlpMoves`: the spread that any read handed on in bf16 leaves
open).  Forward hooks record, in each forward, the choices that the islands make:

- the memory's category of every position of every DMW-LA block past its warm-up
  (`PrototypeMemory.assign` of the block's ``theta`` output, as the read computes it);
- the memory slot each position weighs most (the largest logit of its category's block), from
  the fp32 logits that the memory read computes in either island (`slot_logits`);
- DS-GIM's coherent windows (`coherent_window_mask` of the module's input: fp32 scores in every
  forward), per position and per call (the whole set of windows alike);
- the label of every pixel (argmax of the logits, at the network's size).

Each forward feeds every block the features that its own arithmetic produced, so a choice can
differ because an earlier layer computed differently.  Table 1b makes each island's choice both
ways on the same inputs (those of the autocast forward with fp32 islands): what the island's
own arithmetic changes; for DS-GIM's window scores, which stay fp32, it measures the bf16
variant that was rejected (`bf16_window_mask`), and for the memory slot the bank rounded to
bf16 that the fp32 memory read avoids.  Table 2 predicts the held-out volumes
with ``predict_slices(precision="fp32")`` and ``precision="bf16"`` (original size, the model's
``resample``) and compares the label maps and their Dice scores.  At the demo's 96 px DS-GIM's
map is a single window, so it chooses nothing; tables 3 and 3b repeat tables 1 and 1b with a
network whose DS-GIM chooses two windows of four (`wide_network`).

No timing: figures of agreement only.

Usage (from the repository root), with a trained demo network:
    python benchmarks/bf16_agreement.py [--checkpoint runs/demo/last.pt] [--data runs/brain_demo_data]
"""
from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib.harness import Skip, held_out_volumes, trained_checkpoint  # noqa: E402
from benchlib.results import git_commit  # noqa: E402
from simmpnet.provenance import cpu_flags, cpu_model  # noqa: E402
from simmpnet.data.layouts import open_layout  # noqa: E402
from simmpnet.evaluation.evaluate import evaluate_volumes  # noqa: E402
from simmpnet.loading import load_trained_model  # noqa: E402
from simmpnet.models.dmwla import DMWLA  # noqa: E402
from simmpnet.models import SimMPNet  # noqa: E402
from simmpnet.models.dsgim import DSGIM, coherent_window_mask  # noqa: E402
from simmpnet.precision import set_island_precision  # noqa: E402

#: The forwards of table 1: name -> (autocast dtype or None, island precision, reads moved by one ulp).
FORWARDS = {
    "fp32": (None, "fp32", False),
    "bf16 autocast, fp32 islands": (torch.bfloat16, "fp32", False),
    "bf16 autocast, bf16 islands": (torch.bfloat16, "bf16", False),
    "bf16 autocast, fp32 islands, reads moved one ulp": (torch.bfloat16, "fp32", True),
}
#: The comparisons of table 1's columns: (forward, reference).
COMPARISONS = [
    ("bf16 autocast, bf16 islands", "bf16 autocast, fp32 islands"),
    ("bf16 autocast, fp32 islands, reads moved one ulp", "bf16 autocast, fp32 islands"),
    ("bf16 autocast, fp32 islands", "fp32"),
    ("bf16 autocast, bf16 islands", "fp32"),
]


def slot_logits(queries: torch.Tensor, bank: torch.Tensor, how: str) -> torch.Tensor:
    """``(R, num_k * P)`` fp32 logits of the memory read: ``"fp32"`` from the fp32 bank (the read
    of either island), ``"rounded"`` from the bank rounded to bf16 (what the fp32 read avoids)."""
    return queries.float() @ (bank.float() if how == "fp32" else bank.bfloat16().float())


class Choices:
    """What the islands chose in the forwards since `start`: per module name, one tensor per call;
    with ``inputs``, also the islands' inputs (the ``theta`` output, DS-GIM's input)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.record: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.current: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.inputs: dict[str, list[torch.Tensor]] | None = None
        #: The inputs kept by the last `start` with ``keep_inputs``.
        self.kept: dict[str, list[torch.Tensor]] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        for name, module in model.named_modules():
            if isinstance(module, DMWLA) and not module.in_warmup:
                module.theta.register_forward_hook(partial(self._memory, name, module))
                self.modules[name] = module
            elif isinstance(module, DSGIM):
                module.register_forward_pre_hook(partial(self._windows, name, module))
                self.modules[name] = module

    def start(self, forward: str, keep_inputs: bool = False) -> None:
        self.current = self.record[forward] = defaultdict(list)
        self.inputs = defaultdict(list) if keep_inputs else None
        if self.inputs is not None:
            self.kept = self.inputs

    def _memory(self, name: str, block: DMWLA, _conv: torch.nn.Module, _inputs: Any, theta: torch.Tensor) -> None:
        queries = theta.flatten(2).transpose(1, 2).reshape(-1, block.feature_dim)
        memory = block.memory
        category = memory.assign(queries)
        with torch.autocast(queries.device.type, enabled=False):
            logits = slot_logits(queries, memory.bank, "fp32").view(-1, memory.num_k, memory.pool_size)
        self.current[f"category {name}"].append(category)
        self.current[f"slot {name}"].append(logits[torch.arange(len(category)), category].argmax(1))
        if self.inputs is not None:
            self.inputs[name].append(queries)

    def _windows(self, name: str, module: DSGIM, _module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        mask = coherent_window_mask(inputs[0], module.window, module.top_windows)
        self.current[f"windows {name}"].append(mask)
        if self.inputs is not None:
            self.inputs[name].append(inputs[0])


class UlpMoves:
    """While ``active``: every read that reaches a DMW-LA block's output projection ``o`` (a bf16
    tensor under autocast) has a random half of its values moved to the next bf16 value up or
    down.  Any read that is computed in fp32 and handed on in bf16, the fp32 island's included,
    may land on either neighbour: this is the spread of choices that such a read leaves open."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.active = False
        self.generator = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, DMWLA):
                module.o.register_forward_pre_hook(self._move)

    def _move(self, _module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor] | None:
        read = inputs[0]
        if not self.active or read.dtype != torch.bfloat16:
            return None
        draw = torch.rand(read.shape, generator=self.generator)
        up = torch.nextafter(read, torch.full_like(read, float("inf")))
        down = torch.nextafter(read, torch.full_like(read, float("-inf")))
        return (torch.where(draw < 0.25, up, torch.where(draw < 0.5, down, read)),)


def bf16_window_mask(x: torch.Tensor, window: int, top: int) -> torch.Tensor:
    """`coherent_window_mask` with the token unit vectors in bf16 and the scores accumulated in
    fp32: the bf16 island that DS-GIM's window scores would have; measured, not used."""
    b, c, h, w = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    rows, cols = (h + pad_h) // window, (w + pad_w) // window
    padded = F.pad(x.detach().bfloat16(), (0, pad_w, 0, pad_h))
    tokens = padded.view(b, c, rows, window, cols, window).permute(0, 2, 4, 3, 5, 1)
    unit = F.normalize(tokens.reshape(b, rows * cols, window * window, c), dim=-1, eps=1e-8)
    score = unit.sum(2, dtype=torch.float32).square().sum(-1) + unit.square().sum((-1, -2), dtype=torch.float32)
    chosen = score.topk(min(top, rows * cols), dim=1).indices
    selected = torch.zeros_like(score, dtype=torch.bool).scatter(1, chosen, True)
    grid = selected.view(b, rows, cols).repeat_interleave(window, 1).repeat_interleave(window, 2)
    return grid[:, :h, :w]


#: What `Choices` recorded in one forward: per choice and module, one tensor per call.
Record = dict[str, list[torch.Tensor]]


def agreement(kind: str, forward: Record, reference: Record) -> tuple[float, int, str, float]:
    """(share equal over every recorded entry of ``kind``, entries, the worst module, its share)."""
    equal = total = 0
    worst, worst_share = "", 1.0
    for key in sorted(k for k in forward if k.startswith(kind + " ")):
        a, b = torch.cat([t.flatten() for t in forward[key]]), torch.cat([t.flatten() for t in reference[key]])
        same = int((a == b).sum())
        equal, total = equal + same, total + a.numel()
        if same / a.numel() <= worst_share:
            worst, worst_share = key.split(" ", 1)[1], same / a.numel()
    return equal / max(total, 1), total, worst, worst_share


def window_sets(forward: Record, reference: Record) -> tuple[float, int]:
    """Share of (sample, DS-GIM call) whose coherent windows are the same set."""
    same = total = 0
    for key in (k for k in forward if k.startswith("windows ")):
        for a, b in zip(forward[key], reference[key]):
            equal = (a == b).flatten(1).all(1)
            same, total = same + int(equal.sum()), total + equal.numel()
    return same / max(total, 1), total


def choices_tables(model: torch.nn.Module, slices: torch.Tensor, batch_size: int) -> tuple[list[str], list[str]]:
    """Table 1 (choices in each forward) and table 1b (the islands' own choices on the same inputs)."""
    choices = Choices(model)
    moves = UlpMoves(model)
    for forward, (dtype, islands, moved) in FORWARDS.items():
        choices.start(forward, keep_inputs=forward == "bf16 autocast, fp32 islands")
        set_island_precision(model, islands)
        moves.active = moved
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for start in range(0, len(slices), batch_size):
                choices.current["labels"].append(model(slices[start : start + batch_size]).float().argmax(1))
    moves.active = False
    set_island_precision(model, "fp32")
    record = choices.record
    header = " | ".join(f"{a} against {b} (%)" for a, b in COMPARISONS)
    lines = [f"| choice | compared | {header} |", "|---|---:|" + "---:|" * len(COMPARISONS)]

    def row(label: str, kind: str, worst_label: str | None = None) -> None:
        figures = [agreement(kind, record[a], record[b]) for a, b in COMPARISONS]
        lines.append(f"| {label} | {figures[0][1]:,} | " + " | ".join(f"{100 * f[0]:.3f}" for f in figures) + " |")
        if worst_label is not None:
            cells = " | ".join(f"{100 * f[3]:.3f} ({f[2]})" for f in figures)
            lines.append(f"| {worst_label} | | {cells} |")

    row("memory category, all blocks (positions)", "category", "memory category, worst block")
    row("memory slot weighed most, all blocks (positions)", "slot", "memory slot, worst block")
    row("DS-GIM coherent windows (positions)", "windows")
    sets = [window_sets(record[a], record[b]) for a, b in COMPARISONS]
    lines.append(f"| DS-GIM coherent windows (sets, per sample and call) | {sets[0][1]:,} | "
                 + " | ".join(f"{100 * s[0]:.3f}" for s in sets) + " |")
    labels = {f: torch.cat(record[f]["labels"]) for f in FORWARDS}
    cells = " | ".join(f"{100 * float((labels[a] == labels[b]).float().mean()):.3f}" for a, b in COMPARISONS)
    lines.append(f"| labels at the network's size (pixels) | {labels['fp32'].numel():,} | {cells} |")
    for name, module in choices.modules.items():
        if isinstance(module, DSGIM):
            h, w = choices.kept[name][0].shape[-2:]
            count = math.ceil(h / module.window) * math.ceil(w / module.window)
            lines.append(f"\nDS-GIM {name}: maps of {h} x {w}, {count} window(s) of {module.window} px, "
                         f"{min(module.top_windows, count)} chosen.")
    return lines, same_input_table(choices.modules, choices.kept)


def same_input_table(modules: dict[str, torch.nn.Module], inputs: dict[str, list[torch.Tensor]]) -> list[str]:
    """Each island's choice made both ways on the same inputs (those of the autocast forward with
    fp32 islands): what the island's own arithmetic changes, nothing upstream."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with torch.no_grad():
        for name, module in modules.items():
            for x in inputs[name]:
                if isinstance(module, DSGIM):
                    fp32 = coherent_window_mask(x, module.window, module.top_windows)
                    bf16 = bf16_window_mask(x, module.window, module.top_windows)
                    counts["windows"][0] += int((fp32 == bf16).sum())
                    counts["windows"][1] += fp32.numel()
                    counts["window sets"][0] += int((fp32 == bf16).flatten(1).all(1).sum())
                    counts["window sets"][1] += len(fp32)
                    continue
                memory = module.memory
                category = memory.assign(x)
                rows = torch.arange(len(category))
                best = {
                    how: slot_logits(x, memory.bank, how).view(-1, memory.num_k, memory.pool_size)[rows, category].argmax(1)
                    for how in ("fp32", "rounded")
                }
                counts["slot rounded"][0] += int((best["rounded"] == best["fp32"]).sum())
                counts["slot rounded"][1] += len(category)
    labels = {
        "windows": "DS-GIM coherent windows from bf16 unit vectors, not used (positions)",
        "window sets": "DS-GIM coherent windows from bf16 unit vectors, not used (sets, per sample and call)",
        "slot rounded": "memory slot weighed most, the bank rounded to bf16, not used (positions)",
    }
    lines = ["| choice | compared | same as the fp32 island (%) |", "|---|---:|---:|"]
    for key, label in labels.items():
        equal, total = counts[key]
        lines.append(f"| {label} | {total:,} | {100 * equal / max(total, 1):.3f} |")
    return lines


def inference_table(model: torch.nn.Module, data: Path, input_size: int, config: dict) -> list[str]:
    n_classes = int(model.n_classes)
    names = config.get("class_names") or ["background", *(f"class_{i}" for i in range(1, n_classes))]
    resample = config.get("resample", "labels")
    results: dict[str, tuple[dict, dict[str, np.ndarray]]] = {}
    for precision in ("fp32", "bf16"):
        predictions: dict[str, np.ndarray] = {}
        volumes = open_layout("synapse", data).cases("test_vol")
        summary = evaluate_volumes(
            model, volumes, input_size, n_classes, names, "cpu", resample=resample, precision=precision,
            on_case=lambda name, image, truth, prediction: predictions.__setitem__(name, prediction),
        )
        results[precision] = (summary, predictions)
    (fp32, labels32), (bf16, labels16) = results["fp32"], results["bf16"]
    same = sum(int((labels32[n] == labels16[n]).sum()) for n in labels32)
    voxels = sum(labels32[n].size for n in labels32)
    per_class = [
        abs(bf16["per_class"][c]["dsc"] - fp32["per_class"][c]["dsc"])
        for c in names[1:]
        if fp32["per_class"][c]["dsc"] is not None and bf16["per_class"][c]["dsc"] is not None
    ]
    return [
        "| cases | voxels | same label (%) | mean DSC fp32 (%) | mean DSC bf16 (%) | bf16 - fp32 (points) "
        "| largest class difference (points) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(labels32)} | {voxels:,} | {100 * same / voxels:.3f} | {100 * fp32['mean']['dsc']:.3f} | "
        f"{100 * bf16['mean']['dsc']:.3f} | {100 * (bf16['mean']['dsc'] - fp32['mean']['dsc']):+.3f} | "
        f"{100 * max(per_class, default=0.0):.3f} |",
    ]


#: Encoder sizes at which DS-GIM has a choice to make: stage-3 maps of 14 x 14 px, four windows
#: of 7 px, two chosen.  (At the demo's 96 px, and at tiny's own 128 px, the map is one window.)
WIDE_SIZES = (256, 224)


def wide_network(slices: torch.Tensor) -> SimMPNet:
    """``tiny`` at `WIDE_SIZES`, randomly initialised (seed 0), its memories filled by warm-up
    writes of ``slices`` (two training forwards of 8) and started by k-means; eval() mode."""
    torch.manual_seed(0)
    model = SimMPNet.from_variant("tiny", n_classes=9, img_size_a=WIDE_SIZES[0], img_size_b=WIDE_SIZES[1])
    model.train()
    with torch.no_grad():
        for start in (0, 8):
            model(slices[start : start + 8])
            model.commit_memory()
    model.end_warmup()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"))
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward in table 1")
    args = parser.parse_args()
    try:
        trained_checkpoint(args.checkpoint, args.data)
    except Skip as why:
        raise SystemExit(f"bf16_agreement: {why}") from None
    model, input_size, config = load_trained_model(args.checkpoint, "cpu")
    slices = torch.from_numpy(np.concatenate(held_out_volumes(args.data, input_size)))
    flags = [flag for flag in cpu_flags().split() if flag == "avx512_bf16" or flag.startswith("amx")]
    print(f"date {datetime.date.today()}, commit {git_commit()}, torch {torch.__version__}")
    print(f"machine: {cpu_model()}, bf16 flags: {' '.join(flags) or 'none'}; "
          f"torch bf16 on the CPU: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"command: python {shlex.join(['benchmarks/bf16_agreement.py', *sys.argv[1:]])}")
    print(f"network: {args.checkpoint} ({type(model).__name__}, input {input_size} px); "
          f"{len(slices)} held-out slices of {args.data}\n")
    table, same_input = choices_tables(model, slices, args.batch_size)
    print("Table 1. Choices inside the islands and labels, share equal between two forwards.\n")
    print("\n".join(table))
    print("\nTable 1b. The islands' own choices: bf16 island against fp32 island on the same inputs.\n")
    print("\n".join(same_input))
    print("\nTable 2. Inference on the held-out volumes: precision bf16 against fp32.\n")
    print("\n".join(inference_table(model, args.data, input_size, config)))
    wide = torch.from_numpy(np.concatenate(held_out_volumes(args.data, WIDE_SIZES[0])))
    table, same_input = choices_tables(wide_network(wide), wide, args.batch_size)
    print(f"\nTable 3. As table 1, for DS-GIM's choice: tiny at {WIDE_SIZES[0]} / {WIDE_SIZES[1]} px, randomly "
          "initialised, its memories filled with the held-out slices and started by k-means.\n")
    print("\n".join(table))
    print("\nTable 3b. As table 1b, for the network of table 3.\n")
    print("\n".join(same_input))


if __name__ == "__main__":
    main()
