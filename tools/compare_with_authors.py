"""Compare this package's Sim-MPNet with the authors' code, tensor by tensor (a hand-run tool).

    python tools/compare_with_authors.py --authors-repo DIR [--dsgim-masks authors|method]
        [--gamma 0.0] [--all-configs] [--dtype float64] [--seed 0] [--skip-training] [--out FILE.md]

DIR is a clone of https://github.com/vpsg-research/Sim-MPNet (checked against commit
8d53c3dba0afe20cc853a72c8d100087a031085a).  Nothing is patched on disk: each module of theirs
that the comparison needs (``lib.*``, ``utils.utils``) is read as text from DIR, given the CPU
shims of ``SHIMS`` in memory (each asserted to apply, so the tool fails loudly when their code
has changed), compiled and registered in ``sys.modules``; no bytecode is written.  Third-party
modules that they import but that the compared code never runs (faiss, sklearn, thop, ...) are
replaced by stubs while their modules are imported, when they are not installed.

Checks (one function each):
1. parameters: our weights are transplanted into their network through ``name_map`` (every
   mapped pair shape-checked); tensors without a counterpart are listed and the parameter
   counts reconciled;
2. eval: both networks in ``eval()``, batch of two with the compared image at batch position 1
   (their DS-GIM breaks position 0), stage by stage through forward hooks, with the memory
   (a) in warm-up and (b) after warm-up with identical random banks, prototypes, momentum keys
   and K;
3. loss: our ``DeepSupervisionLoss`` against their powerset loop of ``0.3 CE + 0.7 DiceLoss``
   (their ``utils.utils.DiceLoss``), values and gradients w.r.t. the logits;
4. training step: one forward + backward of both networks in ``train()`` after warm-up
   (their batch-position-0 DS-GIM lines neutralised): loss, gradient of every mapped
   parameter, and each DMW-LA block's bank, prototypes and momentum key after the update
   (ours after ``commit_memory()``, theirs after their forward).

The report goes to stdout and, with ``--out``, to a markdown file; the exit status is 1 when a
PASS/FAIL check fails.  PASS/FAIL applies where our configuration must reproduce theirs
(``--dsgim-masks authors --gamma 0``); other configurations are reported as INFO.  This is not a
test: CI never runs it (it needs their clone, and a paper-scale float64 forward takes 10-30 s
on a CPU).  See docs/fidelity.md.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import importlib.abc
import importlib.machinery
import importlib.util
import io
import math
import platform
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import timm  # imported before any stub exists (timm imports torchvision, which inspects modules)
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
AUTHORS_COMMIT = "8d53c3dba0afe20cc853a72c8d100087a031085a"
N_CLASSES = 9
IMG_A, IMG_B = 256, 224

# --------------------------------------------------------------------------------------------
# Importing their code on the CPU without touching their files
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shim:
    """A text substitution applied to one of their modules before it is compiled."""

    module: str
    old: str
    new: str
    why: str


SHIMS: tuple[Shim, ...] = (
    Shim("lib.dmwla", ".cuda()", "", "CUDA-only: the phi_k conv and memory slices are moved to the GPU"),
    Shim(
        "lib.dmwla",
        "device='cuda', normalization",
        "device='cpu', normalization",
        "self.device (default 'cuda') places the warm-up sampling indices",
    ),
    Shim("lib.dsgim", ".cuda()", "", "CUDA-only: masks, eye and constants are moved to the GPU"),
    Shim(
        "lib.dsgim",
        "softmax = nn.Softmax(dim=-1)\n",
        "softmax = nn.Softmax(dim=-1)\nKEEP_BATCH0_GAMMA = True  # switch added by compare_with_authors.py\n",
        "a module switch for the next shim (the tool sets it False for the training check only)",
    ),
    Shim(
        "lib.dsgim",
        "        mask[0] = gamm\n        mask_1[0] = gamm\n",
        "        if KEEP_BATCH0_GAMMA:\n            mask[0] = gamm\n            mask_1[0] = gamm\n",
        "lets the training check neutralise the batch-position-0 lines (their int mask turns gamma into 0)",
    ),
    Shim(
        "lib.networks",
        "state_dict = torch.load(",
        "state_dict = (lambda _path: {})(",
        "no hard-coded ./pretrained_pth file: the backbone is built empty, all weights are transplanted",
    ),
    Shim(
        "lib.maxxvit_4out",
        "    conv_cfg: MaxxVitConvCfg = MaxxVitConvCfg()\n"
        "    transformer_cfg: MaxxVitTransformerCfg = MaxxVitTransformerCfg()\n",
        "    conv_cfg: MaxxVitConvCfg = __import__('dataclasses').field(default_factory=MaxxVitConvCfg)\n"
        "    transformer_cfg: MaxxVitTransformerCfg = __import__('dataclasses').field("
        "default_factory=MaxxVitTransformerCfg)\n",
        "Python >= 3.11 rejects a dataclass instance as a field default (same values through a factory)",
    ),
    Shim("lib.networks", 'device="cuda"', 'device="cpu"', "the device argument of the DMW-LA calls (unused by them)"),
    Shim("lib.decoders", 'device="cuda"', 'device="cpu"', "the device argument of the DMW-LA calls (unused by them)"),
)

# Imported by their modules but never run by the compared code; stubbed only when not installed.
STUB_IF_ABSENT: dict[str, tuple[str, ...]] = {
    "faiss": (),
    "sklearn": ("sklearn.cluster",),
    "thop": (),
    "seaborn": (),
    "segmentation_mask_overlay": (),
    "tensorboardX": (),
    "pandas": (),
    "medpy": (),
    "SimpleITK": (),
    "einops": ("einops.layers", "einops.layers.torch"),
    "matplotlib": ("matplotlib.pyplot", "matplotlib.colors"),
    "PIL": (),
    "scipy": ("scipy.ndimage",),
}

THEIR_MODULES = ("lib.networks", "utils.utils")  # (their imports pull in the rest of lib)


class _Unavailable:
    """What a stubbed module hands out: fails when actually used."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name} is a stub of compare_with_authors.py (not installed)")


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that submodules can be stubbed too

    def attribute(attr: str) -> _Unavailable:
        if attr.startswith("__"):  # inspect & co probe __file__ etc. of every module
            raise AttributeError(attr)
        return _Unavailable(f"{name}.{attr}")

    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


class AuthorsImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``lib.*`` and ``utils.*`` in their clone and loads them from text with ``SHIMS``
    applied.  No bytecode is read or written."""

    def __init__(self, root: Path, shims: Sequence[Shim]) -> None:
        self.root = root
        self.shims = list(shims)
        self.applied: list[tuple[Shim, int]] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in ("lib", "utils"):
            return None
        base = self.root.joinpath(*fullname.split("."))
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                fullname, base / "__init__.py", loader=self, submodule_search_locations=[str(base)]
            )
        if base.with_name(base.name + ".py").is_file():
            return importlib.util.spec_from_file_location(fullname, base.with_name(base.name + ".py"), loader=self)
        if base.is_dir():  # a folder without __init__.py (their lib/models_timm)
            spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            spec.submodule_search_locations = [str(base)]
            return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        origin = module.__spec__.origin if module.__spec__ else None
        if not origin or not origin.endswith(".py"):
            return  # a namespace folder
        source = Path(origin).read_text(encoding="utf-8")
        for shim in self.shims:
            if shim.module != module.__name__:
                continue
            count = source.count(shim.old)
            if count == 0:
                raise RuntimeError(
                    f"shim for {shim.module} no longer applies ({shim.old!r} not found): their code "
                    f"changed since commit {AUTHORS_COMMIT}; update SHIMS in {Path(__file__).name}"
                )
            source = source.replace(shim.old, shim.new)
            self.applied.append((shim, count))
        exec(compile(source, origin, "exec", dont_inherit=True), module.__dict__)


@dataclasses.dataclass
class Authors:
    """Their imported modules and what the import did."""

    root: Path
    networks: types.ModuleType
    dsgim: types.ModuleType
    utils: types.ModuleType
    applied: list[tuple[Shim, int]]
    stubbed: list[str]


def import_authors(root: str | Path, device: str = "cpu") -> Authors:
    """Import their network and DiceLoss from ``root`` with the shims (nothing on disk
    changes).  Fails when a shim does not apply or ``lib``/``utils`` are taken already.

    ``device="cuda"`` leaves out the shims that move their code off CUDA, so that it runs as
    published (the benchmarks time their training step on a GPU this way)."""
    shims = SHIMS if device == "cpu" else tuple(shim for shim in SHIMS if not _moves_off_cuda(shim))
    root = Path(root).resolve()
    if not (root / "lib" / "networks.py").is_file():
        raise SystemExit(f"{root}: not a clone of the authors' repository (no lib/networks.py)")
    for name in ("lib", "utils"):
        if name in sys.modules:
            raise RuntimeError(f"a module {name!r} is imported already ({sys.modules[name]!r})")
    stubbed: list[str] = []
    saved: dict[str, types.ModuleType | None] = {}
    for top, subs in STUB_IF_ABSENT.items():
        if importlib.util.find_spec(top) is not None:
            continue
        for name in (top, *subs):
            saved[name] = sys.modules.get(name)
            sys.modules[name] = _stub_module(name)
            if "." in name:
                parent, _, child = name.rpartition(".")
                setattr(sys.modules[parent], child, sys.modules[name])
        stubbed.append(top)
    importer = AuthorsImporter(root, shims)
    sys.meta_path.insert(0, importer)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            modules = [importlib.import_module(name) for name in THEIR_MODULES]
    finally:
        sys.meta_path.remove(importer)
        for name, previous in saved.items():  # their modules keep their references to the stubs
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    applied_modules = {shim.module for shim, _ in importer.applied}
    missing = [shim for shim in shims if shim.module not in applied_modules]
    if missing:
        raise RuntimeError(f"shims never applied (module not imported?): {missing}")
    return Authors(root, modules[0], sys.modules["lib.dsgim"], modules[1], importer.applied, stubbed)


def _moves_off_cuda(shim: Shim) -> bool:
    return ".cuda()" in shim.old or "'cuda'" in shim.old or '"cuda"' in shim.old


def build_theirs(authors: Authors) -> nn.Module:
    """Their ``SimMPNet(n_class=9, 256/224, 'small')`` with random (to be overwritten) weights."""
    with contextlib.redirect_stdout(io.StringIO()):
        return authors.networks.SimMPNet(
            n_class=N_CLASSES, img_size_s1=(IMG_A, IMG_A), img_size_s2=(IMG_B, IMG_B), model_scale="small"
        )


def prepare_theirs(theirs: nn.Module, dtype: torch.dtype) -> list[str]:
    """``.to(dtype)`` plus what ``.to`` misses: the ``phi_k`` conv of each DMW-LA block lives in
    a plain Python list.  Returns the runtime shims applied, for the report."""
    theirs.to(dtype)
    blocks = [m for m in theirs.modules() if hasattr(m, "phi_k")]
    for block in blocks:
        block.phi_k[0].to(dtype)
    return [f"their phi_k[0] (a conv in a plain list, not moved by .to()) converted to {dtype} by hand "
            f"in {len(blocks)} blocks"]


# --------------------------------------------------------------------------------------------
# Our network
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One configuration of our network to compare: DS-GIM masks and gamma (None: default)."""

    label: str
    masks: str | None
    gamma: float | None

    @property
    def strict(self) -> bool:
        """The configuration that must reproduce their network: their masks, hard 0/1 windows."""
        return self.masks == "authors" and self.gamma == 0.0


def build_ours(config: RunConfig, seed: int) -> tuple[nn.Module, str]:
    """``SimMPNet.from_variant("paper", 9, 1, **overrides)`` with the weights drawn from ``seed``;
    returns the model and a note on how the overrides were applied."""
    from simmpnet import SimMPNet
    from simmpnet.errors import InputError

    overrides: dict[str, Any] = {}
    if config.gamma is not None:
        overrides["dsgim_gamma"] = config.gamma
    if config.masks is not None:
        overrides["dsgim_masks"] = config.masks
    torch.manual_seed(seed)
    try:
        model = SimMPNet.from_variant("paper", n_classes=N_CLASSES, in_channels=1, **overrides)
        return model, f"overrides {overrides or 'none'}"
    except InputError as err:
        if "dsgim_masks" not in str(err) or config.masks != "method":
            raise
    # This checkout's config has no dsgim_masks field yet: its DS-GIM is the method's.
    overrides.pop("dsgim_masks")
    torch.manual_seed(seed)
    model = SimMPNet.from_variant("paper", n_classes=N_CLASSES, in_channels=1, **overrides)
    return model, f"overrides {overrides or 'none'} (this checkout has no dsgim_masks field: method masks)"


# --------------------------------------------------------------------------------------------
# Name map: our state_dict key -> their key
# --------------------------------------------------------------------------------------------

# (pattern on our key, their key as a function of the match).  Stages, blocks and heads that we
# number deepest-first or from 0 are renumbered to their names.
NAME_RULES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (r"stem\.(\d)\.(.+)", lambda m: f"conv.{m[1]}.{m[2]}"),
    (r"encoder_a\.backbone\.stem\.(.+)", lambda m: f"stem_1.{m[1]}"),
    (r"encoder_a\.backbone\.stages_(\d)\.(.+)", lambda m: f"encoder1_{int(m[1]) + 1}.{m[2]}"),
    (r"encoder_a\.injections\.(\d)\.proj\.(.+)", lambda m: f"out_head1_{int(m[1]) + 1}_in.{m[2]}"),
    (r"gate\.(.+)", lambda m: f"out_head4_in.{m[1]}"),
    (r"encoder_b\.embeddings\.(\d)\.(proj|norm)\.(.+)", lambda m: f"patch_embed{int(m[1]) + 1}.{m[2]}.{m[3]}"),
    (
        r"encoder_b\.stages\.(\d)\.(\d+)\.(theta|phi|g|o)\.weight",
        lambda m: f"DMWLA_{int(m[1]) + 1}.{m[2]}.{m[3]}.weight",
    ),
    (r"encoder_b\.dsgims\.0\.(query|key|value)\.(.+)", lambda m: f"DSGIM.{m[1]}.{m[2]}"),
    (r"encoder_b\.dsgims\.0\.proj\.(.+)", lambda m: f"DSGIM.fc.{m[1]}"),
    (r"encoder_b\.dsgims\.0\.refine\.layers\.(.+)", lambda m: f"DSGIM.ConvBlock.conv.{m[1]}"),
    (r"encoder_b\.injections\.(\d)\.proj\.(.+)", lambda m: f"out_head2_{int(m[1]) + 1}_in.{m[2]}"),
    (r"decoder\.entry\.(.+)", lambda m: f"decoder.Conv_1x1.{m[1]}"),
    (r"decoder\.blocks\.(\d)\.(theta|phi|g|o)\.weight", lambda m: f"decoder.DMWLA_{4 - int(m[1])}.{m[2]}.weight"),
    (r"decoder\.convs\.(\d)\.layers\.(.+)", lambda m: f"decoder.ConvBlock{4 - int(m[1])}.conv.{m[2]}"),
    (r"decoder\.ups\.(\d)\.conv\.(\d)\.(.+)", lambda m: f"decoder.Up{3 - int(m[1])}.up.{int(m[2]) + 1}.{m[3]}"),
    (r"decoder\.channel_attention\.(\d)\.mlp\.0\.weight", lambda m: f"decoder.CA{3 - int(m[1])}.fc1.weight"),
    (r"decoder\.channel_attention\.(\d)\.mlp\.2\.weight", lambda m: f"decoder.CA{3 - int(m[1])}.fc2.weight"),
    (r"decoder\.spatial_attention\.conv\.weight", lambda m: "decoder.SA.conv1.weight"),
    (r"heads\.(\d)\.(.+)", lambda m: f"out_head{int(m[1]) + 1}.{m[2]}"),
)

# Our memory state of a DMW-LA block (state_dict suffix) -> theirs.  Not weights: the checks
# set both sides to the same values (see set_memory), so these are not transplanted.
STATE_MAP = {
    "key_weight": "phi_k[0].weight (a conv in a plain list: not in their state_dict)",
    "memory.bank": "concept_pool",
    "memory.prototypes": "concept_proto",
    "memory.warmup_counter": "warmup_iter_counter (float; warm-up while counter <= T_w)",
    "memory.warmup_done": "no buffer: their phase is derived from warmup_iter_counter (_get_warmup_state)",
    "memory.update_count": "k (one shared Parameter: net.k for encoder B, decoder.k for the decoder)",
}

# Their tensors without a counterpart in ours: (row label, pattern, reason).
THEIR_UNMATCHED = (
    ("backbone1.norm.*", r"backbone1\.norm\.(weight|bias)", "final LayerNorm of their backbone, never called"),
    ("decoder.CA4.*", r"decoder\.CA4\.fc[12]\.weight", "channel attention for the deepest level; never called"),
    ("k, decoder.k", r"(decoder\.)?k", "W-LD K as frozen Parameters (ours: the update_count buffer of each block)"),
    ("*DMWLA_*.k", r"(decoder\.)?DMWLA_\d(\.\d+)?\.k", "the same two K Parameters, registered again in each block"),
    (
        "*DMWLA_*.concept_pool/_proto, warmup_iter_counter",
        r"(decoder\.)?DMWLA_\d(\.\d+)?\.(concept_pool|concept_proto|warmup_iter_counter)",
        "memory state, see STATE_MAP (set alike on both sides, not transplanted)",
    ),
    ("*DMWLA_*.pool_structured", r"(decoder\.)?DMWLA_\d(\.\d+)?\.pool_structured", "buffer never read"),
)


def their_name(our_key: str) -> str | None:
    for pattern, template in NAME_RULES:
        match = re.fullmatch(pattern, our_key)
        if match:
            return template(match)
    return None


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))


@dataclasses.dataclass
class NameMap:
    """Our state_dict key -> their key, and what has no counterpart (table rows)."""

    mapping: dict[str, str]
    ours_unmatched: list[list[str]]
    theirs_unmatched: list[list[str]]
    aliases: int  # their names that alias a mapped tensor (backbone1.* = stem_1 / encoder1_*)


def name_map(ours: nn.Module, theirs: nn.Module) -> NameMap:
    """Build and check the weight map.  Raises when a key of ours has no rule, a rule names a
    missing key, a shape differs, or a tensor of theirs is neither mapped, an alias of a mapped
    one, nor explained by THEIR_UNMATCHED."""
    our_sd, their_sd = ours.state_dict(), theirs.state_dict()
    mapping: dict[str, str] = {}
    ours_unmatched: dict[str, list[Any]] = {}
    problems: list[str] = []
    for key, tensor in our_sd.items():
        suffix = next((s for s in STATE_MAP if key.endswith("." + s)), None)
        if suffix is not None:
            why = "memory state -> their " + STATE_MAP[suffix]
            row = ours_unmatched.setdefault(suffix, [f"*.{suffix}", 0, set(), why])
            row[1] += 1
            row[2].add(tuple(tensor.shape))
            continue
        name = their_name(key)
        if name is None:
            problems.append(f"no rule for our {key}")
        elif name not in their_sd:
            problems.append(f"our {key} -> their {name}: no such tensor")
        elif their_sd[name].shape != tensor.shape:
            problems.append(f"our {key} {tuple(tensor.shape)} -> their {name} {tuple(their_sd[name].shape)}")
        else:
            mapping[key] = name
    if len(set(mapping.values())) != len(mapping):
        problems.append("two of our tensors map to the same tensor of theirs")
    mapped_storage = {_storage_key(their_sd[name]) for name in mapping.values()}
    rows: dict[str, list[Any]] = {}
    aliases = 0
    for name, tensor in their_sd.items():
        if name in mapping.values():
            continue
        if _storage_key(tensor) in mapped_storage:
            aliases += 1
            continue
        entry = next(((label, why) for label, p, why in THEIR_UNMATCHED if re.fullmatch(p, name)), None)
        if entry is None:
            problems.append(f"their {name} {tuple(tensor.shape)}: no counterpart and no reason")
            continue
        row = rows.setdefault(entry[0], [entry[0], 0, set(), entry[1]])
        row[1] += 1
        row[2].add(tuple(tensor.shape))
    if problems:
        raise RuntimeError("name map incomplete:\n  " + "\n  ".join(problems))

    def table(found: dict[str, list[Any]]) -> list[list[str]]:
        return [
            [label, str(n), ", ".join(str(s) for s in sorted(shapes))[:60], why]
            for label, n, shapes, why in found.values()
        ]

    return NameMap(mapping, table(ours_unmatched), table(rows), aliases)


@torch.no_grad()
def transplant(ours: nn.Module, theirs: nn.Module, mapping: dict[str, str]) -> None:
    """Copy every mapped tensor of ours (weights, biases, BatchNorm statistics) into theirs."""
    our_sd, their_sd = ours.state_dict(), theirs.state_dict()
    for key, name in mapping.items():
        their_sd[name].copy_(our_sd[key])


# --------------------------------------------------------------------------------------------
# Memory state
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BlockPair:
    label: str
    ours: nn.Module
    theirs: nn.Module
    state: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def dmwla_pairs(ours: nn.Module, theirs: nn.Module) -> list[BlockPair]:
    """Our DMW-LA blocks (encoder B shallow to deep, then decoder deep to shallow) with theirs."""
    encoder = [(f"B{s + 1}.{j}", b) for s, stage in enumerate(ours.encoder_b.stages) for j, b in enumerate(stage)]
    their_encoder = [b for stage in (theirs.DMWLA_1, theirs.DMWLA_2, theirs.DMWLA_3, theirs.DMWLA_4) for b in stage]
    decoder = [(f"dec d{4 - i}", b) for i, b in enumerate(ours.decoder.blocks)]
    their_decoder = [getattr(theirs.decoder, f"DMWLA_{4 - i}") for i in range(4)]
    pairs = [BlockPair(label, o, t) for (label, o), t in zip(encoder + decoder, their_encoder + their_decoder)]
    assert len(pairs) == len(encoder) + len(decoder) == 16
    return pairs


def draw_memory(pairs: list[BlockPair], seed: int, dtype: torch.dtype) -> None:
    """One random memory per block, shared by both networks: category blocks around random
    centres, prototypes = block means (as their update computes them), momentum key = phi
    weight plus noise, K from our config."""
    generator = torch.Generator().manual_seed(seed)
    for pair in pairs:
        memory = pair.ours.memory
        d, n_k, p = memory.feature_dim, memory.num_k, memory.pool_size
        centres = torch.randn(d, n_k, generator=generator, dtype=torch.float64)
        noise = torch.randn(d, n_k * p, generator=generator, dtype=torch.float64)
        bank = centres.repeat_interleave(p, dim=1) + 0.5 * noise
        phi = pair.ours.phi.weight.detach().double()
        key = phi + 0.1 * phi.std() * torch.randn(phi.shape, generator=generator, dtype=torch.float64)
        pair.state = {
            "bank": bank.to(dtype),
            "prototypes": bank.view(d, n_k, p).mean(2).to(dtype),
            "key": key.to(dtype),
            "K": torch.tensor(int(memory.update_count)),
        }


@torch.no_grad()
def set_memory(pairs: list[BlockPair], theirs: nn.Module, phase: str) -> None:
    """Give both networks the drawn memory; ``phase`` "warmup" (counters 0) or "after" (ours
    at T_w, theirs at T_w + 1 since their warm-up lasts while counter <= T_w)."""
    ks = {int(pair.state["K"]) for pair in pairs}
    assert len(ks) == 1, f"their K is shared by all blocks; ours differ: {ks}"
    theirs.k.fill_(ks.pop())
    theirs.decoder.k.copy_(theirs.k)
    for pair in pairs:
        memory, block = pair.ours.memory, pair.theirs
        t_w = memory.warmup_iters
        if block.warmup_total_iter != t_w:
            raise RuntimeError(f"{pair.label}: warm-up lengths differ ({t_w} vs {block.warmup_total_iter})")
        state = dict(memory.state_dict())
        state.update(bank=pair.state["bank"].clone(), prototypes=pair.state["prototypes"].clone())
        state["warmup_counter"] = torch.tensor(0 if phase == "warmup" else t_w)
        state["warmup_done"] = torch.tensor(int(phase != "warmup"))
        state["update_count"] = pair.state["K"].clone()
        memory.load_state_dict(state)  # (keeps the block's host mirror of the phase in step)
        pair.ours.key_weight.copy_(pair.state["key"])
        block.concept_pool = pair.state["bank"].clone()  # (they rebind these buffers in forward)
        block.concept_proto = pair.state["prototypes"].clone()
        block.warmup_iter_counter.fill_(0 if phase == "warmup" else t_w + 1)
        block.phi_k[0].weight.copy_(pair.state["key"])
        if pair.ours.in_warmup != (phase == "warmup") or bool(block._get_warmup_state()) != (phase == "warmup"):
            raise RuntimeError(f"{pair.label}: could not put both blocks in the {phase} state")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


class Report:
    """Lines printed as they come and kept for ``--out`` (markdown)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.summary: list[list[str]] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def section(self, title: str, level: int = 2) -> None:
        self("")
        self("#" * level + " " + title)
        self("")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self("| " + " | ".join(headers) + " |")
        self("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            self("| " + " | ".join(str(cell) for cell in row) + " |")
        self("")

    def verdict(
        self, config: RunConfig | None, check: str, value: float, threshold: float, text: str, higher: bool = False
    ) -> None:
        """One summary line: PASS/FAIL where the configuration must match theirs, INFO elsewhere."""
        ok = value >= threshold if higher else value <= threshold
        if config is not None and not config.strict:
            status = "INFO"
        else:
            status = "PASS" if ok else "FAIL"
        bound = (">= " if higher else "<= ") + (f"{threshold:g}")
        self.summary.append([config.label if config else "all", check, text, bound, status])


def fmt(x: float) -> str:
    return f"{x:.3e}"


def max_rel(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float, float]:
    """(max |ours - theirs|, max |theirs|, their ratio)."""
    if ours.shape != theirs.shape:
        raise RuntimeError(f"shapes differ: ours {tuple(ours.shape)}, theirs {tuple(theirs.shape)}")
    diff = float((ours.double() - theirs.double()).abs().max())
    ref = float(theirs.double().abs().max())
    return diff, ref, diff / ref if ref > 0 else (0.0 if diff == 0 else float("inf"))


def rel_l2(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """||ours - theirs|| / ||theirs|| (0 when both vanish)."""
    num = float(torch.linalg.vector_norm(ours.double() - theirs.double()))
    den = float(torch.linalg.vector_norm(theirs.double()))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow their prints (a line per DMW-LA warm-up forward, k-means chatter)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield sink


# --------------------------------------------------------------------------------------------
# Stage recording
# --------------------------------------------------------------------------------------------


class Recorder:
    """Forward hooks that keep detached copies of the compared tensors, by stage name."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.handles: list[Any] = []

    def output(self, module: nn.Module, name: str, pick: Callable[[Any], torch.Tensor] = lambda o: o) -> None:
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            self.values[name] = pick(out).detach().clone()

        self.handles.append(module.register_forward_hook(hook))

    def input(self, module: nn.Module, name: str, pick: Callable[[tuple], torch.Tensor] = lambda a: a[0]) -> None:
        def hook(m: nn.Module, args: tuple) -> None:
            self.values[name] = pick(args).detach().clone()

        self.handles.append(module.register_forward_pre_hook(hook))

    def inputs(self, module: nn.Module, names: Sequence[str], pick: Callable[[tuple], Sequence[torch.Tensor]]) -> None:
        def hook(m: nn.Module, args: tuple) -> None:
            for name, value in zip(names, pick(args)):
                self.values[name] = value.detach().clone()

        self.handles.append(module.register_forward_pre_hook(hook))

    def outputs(self, module: nn.Module, names: Sequence[str]) -> None:
        def hook(m: nn.Module, args: tuple, out: Sequence[torch.Tensor]) -> None:
            for name, value in zip(names, out):
                self.values[name] = value.detach().clone()

        self.handles.append(module.register_forward_hook(hook))

    def every_call(self, module: nn.Module, name: str) -> None:
        def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.calls.setdefault(name, []).append((args[0].detach().clone(), out.detach().clone()))

        self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


DECODER_NAMES = ["d4", "d3", "d2", "d1"]
FUSED_NAMES = ["s1", "s2", "s3", "s4"]


def record_ours(model: nn.Module) -> Recorder:
    rec = Recorder()
    for i, inject in enumerate(model.encoder_a.injections):
        rec.output(inject, f"A f{i + 1} (injected)")
    rec.output(model.gate, "gate logits")
    rec.output(model.encoder_b.embeddings[0], "B patch embedding 1")
    for i, inject in enumerate(model.encoder_b.injections):
        rec.output(inject, f"B e{i + 1} (injected)")
    rec.every_call(model.encoder_b.dsgims[0], "dsgim")
    rec.inputs(model.decoder, FUSED_NAMES, lambda a: a[0])
    rec.outputs(model.decoder, DECODER_NAMES)
    for i, head in enumerate(model.heads):
        rec.output(head, f"head {i + 1} ({DECODER_NAMES[i]})")
    return rec


def record_theirs(model: nn.Module) -> Recorder:
    """Their injected f_i is the input of encoder1_{i+1} (f4: of out_head4_in); their e1..e3
    are the inputs of patch_embed2..4; e4 is recomposed from the last DMW-LA block's output and
    out_head2_4_in's output with their own formula."""
    rec = Recorder()
    rec.input(model.encoder1_2, "A f1 (injected)")
    rec.input(model.encoder1_3, "A f2 (injected)")
    rec.input(model.encoder1_4, "A f3 (injected)")
    rec.input(model.out_head4_in, "A f4 (injected)")
    rec.output(model.out_head4_in, "gate logits")

    def tokens_to_map(out: tuple) -> torch.Tensor:
        tokens, h, w = out
        return tokens.permute(0, 2, 1).reshape(tokens.shape[0], -1, h, w)

    rec.output(model.patch_embed1, "B patch embedding 1", tokens_to_map)
    rec.input(model.patch_embed2, "B e1 (injected)")
    rec.input(model.patch_embed3, "B e2 (injected)")
    rec.input(model.patch_embed4, "B e3 (injected)")
    rec.output(model.DMWLA_4[-1], "_e4 block")
    rec.output(model.out_head2_4_in, "_e4 image")
    rec.every_call(model.DSGIM, "dsgim")
    rec.inputs(model.decoder, ["s4", "s3", "s2", "s1"], lambda a: [a[0], *a[1]])
    rec.outputs(model.decoder, DECODER_NAMES)
    for i in range(4):
        rec.output(getattr(model, f"out_head{i + 1}"), f"head {i + 1} ({DECODER_NAMES[i]})")
    return rec


def finish_theirs(rec: Recorder) -> None:
    block, image = rec.values.pop("_e4 block"), rec.values.pop("_e4 image")
    rec.values["B e4 (injected)"] = block + torch.sigmoid(block) * image


STAGE_ORDER = (
    [f"A f{i} (injected)" for i in range(1, 5)]
    + ["gate logits", "B patch embedding 1"]
    + [f"B e{i} (injected)" for i in range(1, 3)]
    + [f"DS-GIM call {c} {io_}" for c in range(1, 7) for io_ in ("in", "out")]
    + ["B e3 (injected)", "B e4 (injected)"]
    + [f"fused {s}" for s in FUSED_NAMES]
    + [f"decoder {d}" for d in DECODER_NAMES]
    + [f"head {i + 1} ({d})" for i, d in enumerate(DECODER_NAMES)]
)


def stage_values(rec: Recorder) -> dict[str, torch.Tensor]:
    values = {}
    for name, value in rec.values.items():
        if name in FUSED_NAMES:
            name = f"fused {name}"
        elif name in DECODER_NAMES:
            name = f"decoder {name}"
        values[name] = value
    for c, (x_in, x_out) in enumerate(rec.calls.get("dsgim", []), start=1):
        values[f"DS-GIM call {c} in"] = x_in
        values[f"DS-GIM call {c} out"] = x_out
    return values


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

EVAL_REL, ARGMAX_PCT, LOSS_REL, GRAD_REL, MEMORY_REL = 1e-5, 100.0, 1e-6, 1e-6, 1e-6


def check_parameters(report: Report, config: RunConfig, ours: nn.Module, theirs: nn.Module, verbose: bool) -> NameMap:
    """Build the name map, list what has no counterpart and reconcile the parameter counts."""
    nmap = name_map(ours, theirs)
    our_params = dict(ours.named_parameters())
    ours_total = sum(p.numel() for p in our_params.values() if p.requires_grad)
    unmapped = [k for k in our_params if k not in nmap.mapping]
    if unmapped:
        raise RuntimeError(f"parameters of ours without counterpart: {unmapped}")
    mapped_ids = {id(theirs.get_parameter(nmap.mapping[k])) for k in our_params}
    theirs_total = sum(p.numel() for p in theirs.parameters())
    extra: dict[str, int] = {}
    for name, p in theirs.named_parameters():  # (named_parameters lists each Parameter once)
        if id(p) not in mapped_ids:
            label = next(lbl for lbl, pattern, _ in THEIR_UNMATCHED if re.fullmatch(pattern, name))
            extra[label] = extra.get(label, 0) + p.numel()
    mapped_total = sum(theirs.get_parameter(nmap.mapping[k]).numel() for k in our_params)
    if mapped_total != ours_total or mapped_total + sum(extra.values()) != theirs_total:
        raise RuntimeError(f"parameter counts do not reconcile: {ours_total}, {theirs_total}, {mapped_total}, {extra}")
    if verbose:
        report.section("Parameters and name map")
        counts: dict[str, list[Any]] = {}
        for key, name in nmap.mapping.items():
            rule = next(p for p, t in NAME_RULES if re.fullmatch(p, key))
            entry = counts.setdefault(rule, [0, key, name])
            entry[0] += 1
        report(f"{len(nmap.mapping)} tensors of ours (weights, biases, BatchNorm statistics) mapped to theirs, "
               f"every pair of equal shape; {nmap.aliases} further names of theirs alias mapped tensors "
               "(backbone1.stem/stages.* are stem_1/encoder1_*).")
        report("")
        report.table(["our pattern", "tensors", "example: ours -> theirs"],
                     [[f"`{rule}`", n, f"`{k}` -> `{v}`"] for rule, (n, k, v) in counts.items()])
        report("Tensors of ours without a weight counterpart:")
        report("")
        report.table(["ours", "blocks", "shapes", "their side"], nmap.ours_unmatched)
        report("Tensors of theirs without a counterpart:")
        report("")
        report.table(["theirs", "names", "shapes", "why"], nmap.theirs_unmatched)
        terms = " + ".join(f"{n:,} ({label})" for label, n in extra.items())
        report(f"Parameters: ours {ours_total:,} trainable, all mapped; theirs "
               f"(`sum(p.numel() for p in model.parameters())`) {theirs_total:,} = {mapped_total:,} mapped + {terms}.")
    counts = f"{ours_total:,} + {theirs_total - ours_total:,} = {theirs_total:,}"
    value = f"{len(nmap.mapping)} tensors, shapes equal, {counts}"
    report.summary.append([config.label, "parameter map", value, "complete", "PASS"])
    return nmap


def compare_stages(
    ours_values: dict[str, torch.Tensor], their_values: dict[str, torch.Tensor], index: int | None
) -> list[list[str]]:
    """Table rows in STAGE_ORDER at batch position ``index`` (None: the whole batch)."""
    rows = []
    for name in STAGE_ORDER:
        if name not in ours_values or name not in their_values:
            continue
        a, b = ours_values[name], their_values[name]
        if index is not None:
            a, b = a[index], b[index]
        diff, ref, rel = max_rel(a, b)
        rows.append([name, "x".join(map(str, a.shape)), fmt(diff), fmt(ref), fmt(rel)])
    return rows


def record_block_inputs(pairs: list[BlockPair]) -> Recorder:
    rec = Recorder()
    for pair in pairs:
        rec.input(pair.ours, pair.label)
    return rec


@torch.no_grad()
def assignment_flips(report: Report, pairs: list[BlockPair], inputs: dict[str, torch.Tensor], index: int | None) -> int:
    """Positions whose memory-read category differs between ours (``memory.assign``) and the
    float64 argmax of the cosine with the prototypes (their computation).  A flip changes the
    memory read of that position, and the context attention then spreads it over the image."""
    rows, total, margin_min = [], 0, float("inf")
    for pair in pairs:
        x = inputs[pair.label] if index is None else inputs[pair.label][index : index + 1]
        memory = pair.ours.memory
        t = F.conv2d(x, pair.ours.theta.weight).flatten(2).transpose(1, 2).reshape(-1, memory.feature_dim)
        cos = F.normalize(t.double(), dim=1) @ F.normalize(memory.prototypes.double(), dim=0)
        top2 = cos.topk(2, dim=1).values
        margin_min = min(margin_min, float((top2[:, 0] - top2[:, 1]).min()))
        flips = int((memory.assign(t) != cos.argmax(1)).sum())
        total += flips
        if flips:
            gap = top2[:, 0] - top2[:, 1]
            rows.append([pair.label, f"{flips} of {t.shape[0]}", fmt(float(gap.min()))])
    report(f"Memory-read categories, ours (`memory.assign`) against the float64 cosine argmax (theirs): "
           f"{total} position(s) differ; smallest top-2 cosine margin over all blocks {fmt(margin_min)}.")
    report("")
    if rows:
        report.table(["block", "positions assigned differently", "smallest margin in block"], rows)
    return total


def check_eval(report: Report, config: RunConfig, ours: nn.Module, theirs: nn.Module, pairs: list[BlockPair],
               phase: str, x: torch.Tensor) -> None:
    """Both networks in eval() on the same batch of two, memory in ``phase``; stage table at
    batch position 1 (their DS-GIM gives position 0 uniform attention)."""
    set_memory(pairs, theirs, phase)  # (their eval forward rewrites their memory: reset first)
    ours.eval()
    theirs.eval()
    rec_o, rec_t, rec_in = record_ours(ours), record_theirs(theirs), record_block_inputs(pairs)
    started = time.perf_counter()
    try:
        with torch.no_grad():
            out_o = ours(x)
            t_ours = time.perf_counter() - started
            with quiet():
                heads = theirs(x)
            out_t = heads[0] + heads[1] + heads[2] + heads[3]
    finally:
        for rec in (rec_o, rec_t, rec_in):
            rec.remove()
    t_theirs = time.perf_counter() - started - t_ours
    finish_theirs(rec_t)
    rows = compare_stages(stage_values(rec_o), stage_values(rec_t), 1)
    diff, ref, rel = max_rel(out_o[1], out_t[1])
    rows.append(["final logits (sum of heads)", "x".join(map(str, out_o[1].shape)), fmt(diff), fmt(ref), fmt(rel)])
    agree = float((out_o[1].argmax(0) == out_t[1].argmax(0)).double().mean()) * 100
    title = "warm-up (counters 0)" if phase == "warmup" else "after warm-up (shared banks, prototypes, keys, K)"
    report.section(f"Eval, memory {title}", 3)
    report(f"Forward times: ours {t_ours:.1f} s, theirs {t_theirs:.1f} s.  Batch position 1; "
           "relative = max |ours - theirs| / max |theirs|.")
    report("")
    report.table(["stage", "shape", "max abs diff", "max abs theirs", "relative"], rows)
    report(f"argmax agreement of the final logits: {agree:.4f} % of {out_o[1][0].numel()} pixels")
    report("")
    if phase == "after":
        assignment_flips(report, pairs, rec_in.values, 1)
    phase_name = "warm-up" if phase == "warmup" else "after warm-up"
    report.verdict(config, f"eval {phase_name}: final logits", rel, EVAL_REL, fmt(rel))
    report.verdict(config, f"eval {phase_name}: argmax agreement", agree, ARGMAX_PCT, f"{agree:.4f} %", higher=True)


def their_loss(authors: Authors, heads: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Their trainer.py loss, re-typed around their DiceLoss and powerset: for every non-empty
    subset of the heads, 0.3 CE + 0.7 Dice of the summed logits."""
    ce = nn.CrossEntropyLoss()
    dice = authors.utils.DiceLoss(N_CLASSES)
    loss: Any = 0.0
    for subset in authors.utils.powerset([0, 1, 2, 3]):
        if subset == []:
            continue
        iout: Any = 0.0
        for idx in subset:
            iout += heads[idx]
        loss += 0.3 * ce(iout, labels.long()) + 0.7 * dice(iout, labels, softmax=True)
    return loss


def check_loss(report: Report, authors: Authors, seed: int, dtype: torch.dtype) -> None:
    """Our DeepSupervisionLoss against their loop on the same four head logits: values and the
    gradients w.r.t. the logits."""
    from simmpnet.training.losses import DeepSupervisionLoss

    generator = torch.Generator().manual_seed(seed)
    shape = (2, N_CLASSES, 64, 64)
    labels_random = torch.randint(0, N_CLASSES, (2, 64, 64), generator=generator)
    random_heads = [2.0 * torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(4)]
    labels_few = torch.randint(0, 3, (2, 64, 64), generator=generator)  # classes 3..8 absent
    onehot = F.one_hot(labels_few, N_CLASSES).permute(0, 3, 1, 2).double()
    confident_heads = [10.0 * onehot + torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(4)]
    rows = []
    for case, heads, labels in (
        ("random logits, all classes present", random_heads, labels_random),
        ("confident logits, classes 3..8 absent from the labels", confident_heads, labels_few),
    ):
        ours_in = [h.to(dtype).requires_grad_() for h in heads]
        theirs_in = [h.to(dtype).requires_grad_() for h in heads]
        loss_o = DeepSupervisionLoss()(ours_in, labels)
        loss_t = their_loss(authors, theirs_in, labels)
        grads_o = torch.autograd.grad(loss_o, ours_in)
        grads_t = torch.autograd.grad(loss_t, theirs_in)
        value_o, value_t = loss_o.item(), loss_t.item()
        rel = abs(value_o - value_t) / abs(value_t)
        grad = rel_l2(torch.cat([g.flatten() for g in grads_o]), torch.cat([g.flatten() for g in grads_t]))
        rows.append([case, f"{value_o:.10f}", f"{value_t:.10f}", fmt(rel), fmt(grad)])
        report.verdict(None, f"loss ({case.split(',')[0]}): value", rel, LOSS_REL, fmt(rel))
        report.verdict(None, f"loss ({case.split(',')[0]}): d loss / d logits", grad, GRAD_REL, fmt(grad))
    report.section("Loss (four heads 2 x 9 x 64 x 64, 15 subsets)")
    report(f"Ours: simmpnet.training.losses.DeepSupervisionLoss(); theirs: their trainer.py loop around "
           f"utils.utils.DiceLoss and powerset; logits in {dtype}.")
    report("")
    report.table(["case", "ours", "theirs", "relative diff", "gradient rel L2"], rows)


def _disable_dropout(model: nn.Module) -> list[str]:
    """Set every active dropout / drop-path to 0; returns the names of those that were active."""
    active = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            module.p = 0.0
            active.append(name)
        if getattr(module, "drop_prob", 0.0):
            module.drop_prob = 0.0
            active.append(name)
    return active


# A parameter gradient is compared relative to its own norm, or to a floor if that is larger.
# Gradients that are zero in theory (a conv bias before a train-mode BatchNorm, a bias added
# before a softmax) come out on both sides as rounding noise whose size depends on the kernels
# (their blocking, vector width, AMX or not), so it cannot be held to a fixed share of the whole
# gradient.  Each gradient entry is a float64 sum over the positions of a feature map, at most
# `terms` of them (batch x height x width of the input: no layer runs above the input's
# resolution), and the rounding error of a sum of n terms is at most n * eps times the sum of
# their magnitudes, for which the whole gradient's norm stands in.  The floor is that bound
# over GRAD_REL, so that a difference within it stays within GRAD_REL:
#     floor = terms * eps(float64) / GRAD_REL * ||whole gradient of theirs||.
# The noise of gradients that are zero in theory is a few to a few hundred eps of the whole
# gradient's norm, far below terms * eps (131072 for the paper's batch of two 256 x 256 images).
GRAD_EPS = torch.finfo(torch.float64).eps


@dataclasses.dataclass(frozen=True)
class GradientRow:
    """One parameter: ``||g_ours - g_theirs|| / max(||g_theirs||, floor)`` and ``||g_theirs||``."""

    name: str
    rel: float
    norm_theirs: float


@dataclasses.dataclass(frozen=True)
class GradientComparison:
    """The rows, worst first; the worst and the median relative difference; the floor and how
    many gradients are below it."""

    rows: list[GradientRow]
    worst: float
    median: float
    floor: float
    below_floor: int


def gradient_floor(total: float, terms: int) -> float:
    """The floor of :func:`compare_gradients` for a whole gradient of norm ``total`` whose
    entries sum at most ``terms`` positions each."""
    return terms * GRAD_EPS / GRAD_REL * total


def compare_gradients(grads: Sequence[tuple[str, torch.Tensor, torch.Tensor]], terms: int) -> GradientComparison:
    """Compare ``(name, g_ours, g_theirs)`` triples parameter by parameter, in float64: each as
    ``||g_ours - g_theirs|| / max(||g_theirs||, floor)`` with the floor of
    :func:`gradient_floor` (``terms``: the positions of the batch, batch x height x width)."""
    if not grads:
        raise ValueError("no gradients to compare")
    norms = [float(torch.linalg.vector_norm(g_t.double())) for _, _, g_t in grads]
    floor = gradient_floor(math.sqrt(sum(n * n for n in norms)), terms)
    rows = []
    for (name, g_o, g_t), norm_t in zip(grads, norms):
        if g_o.shape != g_t.shape:
            raise RuntimeError(f"{name}: gradient shapes differ: ours {tuple(g_o.shape)}, theirs {tuple(g_t.shape)}")
        diff = float(torch.linalg.vector_norm(g_o.double() - g_t.double()))
        bound = max(norm_t, floor)
        rel = 0.0 if diff == 0 else diff / bound if bound > 0 else float("inf")
        rows.append(GradientRow(name, rel, norm_t))
    rows.sort(key=lambda row: row.rel, reverse=True)
    return GradientComparison(
        rows=rows,
        worst=rows[0].rel,
        median=rows[len(rows) // 2].rel,
        floor=floor,
        below_floor=sum(norm < floor for norm in norms),
    )


def check_training_step(report: Report, config: RunConfig, authors: Authors, ours: nn.Module, theirs: nn.Module,
                        nmap: NameMap, pairs: list[BlockPair], x: torch.Tensor, labels: torch.Tensor) -> None:
    """One forward + backward in train() after warm-up: stages, loss, parameter gradients, and
    the memory of every DMW-LA block after its update."""
    from simmpnet.training.losses import DeepSupervisionLoss

    set_memory(pairs, theirs, "after")
    ours.train()
    theirs.train()
    active = collections.Counter(".".join(n.split(".")[-2:]) for n in _disable_dropout(ours) + _disable_dropout(theirs))
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    rec_o, rec_t, rec_in = record_ours(ours), record_theirs(theirs), record_block_inputs(pairs)
    authors.dsgim.KEEP_BATCH0_GAMMA = False
    started = time.perf_counter()
    try:
        loss_o = DeepSupervisionLoss()(ours(x), labels)
        loss_o.backward()
        t_ours = time.perf_counter() - started
        with quiet():
            loss_t = their_loss(authors, theirs(x), labels)
        loss_t.backward()
    finally:
        authors.dsgim.KEEP_BATCH0_GAMMA = True
        for rec in (rec_o, rec_t, rec_in):
            rec.remove()
    t_theirs = time.perf_counter() - started - t_ours
    finish_theirs(rec_t)

    report.section("Training step after warm-up (train(), forward + backward)", 3)
    dropped = ", ".join(f"{n} x {name}" for name, n in active.items()) or "none"
    report(f"Times: ours {t_ours:.1f} s, theirs {t_theirs:.1f} s.  Active dropout / drop-path modules set to 0 "
           f"(both networks): {dropped}.  Their "
           "batch-position-0 DS-GIM lines (`mask[0] = gamm`, `mask_1[0] = gamm`) are neutralised in memory "
           "for this check (KEEP_BATCH0_GAMMA = False), so both samples of the batch count.  Stages over "
           "the whole batch (BatchNorm uses batch statistics):")
    report("")
    report.table(["stage", "shape", "max abs diff", "max abs theirs", "relative"],
                 compare_stages(stage_values(rec_o), stage_values(rec_t), None))
    flips = assignment_flips(report, pairs, rec_in.values, None)
    value_o, value_t = loss_o.item(), loss_t.item()
    rel = abs(value_o - value_t) / abs(value_t)
    report(f"loss: ours {value_o:.10f}, theirs {value_t:.10f}, relative diff {fmt(rel)}")
    report("")
    report.verdict(config, "train step: loss", rel, LOSS_REL, fmt(rel))

    pairs_g = []
    for key, param in ours.named_parameters():
        g_o, g_t = param.grad, theirs.get_parameter(nmap.mapping[key]).grad
        zero = torch.zeros_like(param)
        pairs_g.append((key, zero if g_o is None else g_o, zero if g_t is None else g_t))
    terms = x.shape[0] * x.shape[-2] * x.shape[-1]
    grads = compare_gradients(pairs_g, terms)
    report(f"Gradients of the {len(grads.rows)} mapped parameters: relative L2 difference "
           f"||g_ours - g_theirs|| / max(||g_theirs||, floor), floor = {terms} * eps / {GRAD_REL:g} * "
           f"||whole gradient of theirs|| = {fmt(grads.floor)} (eps = {GRAD_EPS:.3g}, float64; {terms} = batch x "
           "height x width, the most positions summed into one gradient entry: a difference within the float64 "
           f"rounding bound of such a sum stays within {GRAD_REL:g}).  "
           f"{grads.below_floor} parameters have gradients below that floor and are held to it (among them those "
           "that are zero in theory, whose rounding noise would count as relative error: conv biases before a "
           "train-mode BatchNorm, biases added before a softmax); worst 10:")
    report("")
    report.table(["ours", "theirs", "rel L2", "||grad theirs||"],
                 [[row.name, nmap.mapping[row.name], fmt(row.rel), fmt(row.norm_theirs)] for row in grads.rows[:10]])
    report(f"max {fmt(grads.worst)}, median {fmt(grads.median)}")
    report("")
    report.verdict(config, "train step: parameter gradients (max rel L2)", grads.worst, GRAD_REL, fmt(grads.worst))

    ours.commit_memory()
    rows, worst_clean = [], 0.0
    for pair in pairs:
        memory, state = pair.ours.memory, pair.state
        n_k, p = memory.num_k, memory.pool_size
        keys = F.conv2d(rec_in.values[pair.label], state["key"]).flatten(2).transpose(1, 2)
        keys = keys.reshape(-1, memory.feature_dim)
        counts = torch.bincount((keys.double() @ state["prototypes"].double()).argmax(1), minlength=n_k)
        k = int(state["K"])
        replicated = (counts > 0) & (counts < k)
        bank_o = memory.bank.view(-1, n_k, p)
        bank_t = pair.theirs.concept_pool.view(-1, n_k, p)
        clean = ~replicated
        bank_clean = max_rel(bank_o[:, clean], bank_t[:, clean])[2] if clean.any() else None
        bank_rep = max_rel(bank_o[:, replicated], bank_t[:, replicated])[2] if replicated.any() else None
        protos = max_rel(memory.prototypes[:, clean], pair.theirs.concept_proto[:, clean])[2] if clean.any() else None
        key = max_rel(pair.ours.key_weight, pair.theirs.phi_k[0].weight)[2]
        worst_clean = max(worst_clean, bank_clean or 0.0, protos or 0.0, key)
        rows.append([pair.label, " ".join(str(int(c)) for c in counts), int(replicated.sum())]
                    + ["-" if v is None else fmt(v) for v in (bank_clean, protos, bank_rep, key)])
    report(f"Memory after the update (ours after commit_memory(), theirs after their forward), K = {k}.  "
           "Categories with fewer than K positions ('replicated') are compared apart: their code copies each "
           "position K // n + 1 times and cuts to K at random, so differences are expected there only.")
    report("")
    report.table(["block", "positions per category", "replicated categories", "bank rel, other categories",
                  "prototypes rel, other categories", "bank rel, replicated", "momentum key rel"], rows)
    report.verdict(config, "train step: memory of categories without replication (max rel)", worst_clean,
                   MEMORY_REL, fmt(worst_clean))
    if flips:
        report(f"Note: {flips} position(s) got another memory-read category than theirs (table above); "
               "everything downstream of the first such block differs.")
        report("")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _run(cmd: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(path: Path) -> str:
    """HEAD of the git checkout at ``path`` ("unknown" when ``path`` is not its top level)."""
    top = _run(["git", "-C", str(path), "rev-parse", "--show-toplevel"])
    if top is None or Path(top).resolve() != path.resolve():
        return "unknown"
    commit = _run(["git", "-C", str(path), "rev-parse", "HEAD"]) or "unknown"
    dirty = _run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"])
    return commit + (" (with uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    out = _run(["lscpu"]) or ""
    match = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown")


def header(report: Report, args: argparse.Namespace, authors: Authors, runtime_shims: list[str]) -> None:
    report("# Sim-MPNet: this package against the authors' code")
    report("")
    report(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    report(f"- ours: {git_commit(REPO)}")
    report(f"- theirs: {git_commit(authors.root)} ({authors.root}; the shims were written for {AUTHORS_COMMIT})")
    report(f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}, "
           f"CPU {cpu_model()}, {torch.get_num_threads()} threads")
    report(f"- dtype {args.dtype}, seed {args.seed}, command: `{' '.join(sys.argv)}`")
    report("")
    report("Shims applied in memory to their code (nothing on disk changes):")
    report("")
    rows = [[shim.module, f"`{shim.old.strip()[:60]}`", f"`{shim.new.strip()[:60]}`", count, shim.why]
            for shim, count in authors.applied]
    report.table(["module", "text", "becomes", "times", "why"], rows)
    for line in runtime_shims:
        report(f"- runtime: {line}")
    report(f"- stubbed (not installed, never run by the compared code): {', '.join(authors.stubbed) or 'none'}")


def configurations(args: argparse.Namespace) -> list[RunConfig]:
    if args.all_configs:
        return [
            RunConfig("authors masks, gamma 0", "authors", 0.0),
            RunConfig("method masks, gamma 0", "method", 0.0),
            RunConfig("defaults (method masks, gamma ~0.889)", None, None),
        ]
    return [RunConfig(f"{args.dsgim_masks} masks, gamma {args.gamma:g}", args.dsgim_masks, args.gamma)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--authors-repo", required=True, type=Path, help="clone of vpsg-research/Sim-MPNet")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dsgim-masks", choices=("authors", "method"), default="authors",
                        help="our DS-GIM near set and fill: 'authors' reproduces their defect (docs/fidelity.md)")
    parser.add_argument("--gamma", type=float, default=0.0, help="our dsgim_gamma (0: their effective hard masks)")
    parser.add_argument("--all-configs", action="store_true",
                        help="run authors masks + gamma 0, method masks + gamma 0 and our defaults")
    parser.add_argument("--skip-training", action="store_true", help="leave out the training-step check")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    sys.path.insert(0, str(REPO / "src"))  # (the package when run from a plain checkout)
    from simmpnet.errors import InputError

    report = Report()
    authors = import_authors(args.authors_repo)
    theirs = build_theirs(authors)
    runtime_shims = prepare_theirs(theirs, dtype)
    header(report, args, authors, runtime_shims)
    check_loss(report, authors, args.seed + 4, dtype)

    generator = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(2, 1, IMG_A, IMG_A, generator=generator, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, N_CLASSES, (2, IMG_A, IMG_A), generator=generator)
    for index, config in enumerate(configurations(args)):
        report.section(f"Configuration: {config.label}")
        try:
            ours, note = build_ours(config, args.seed)
        except InputError as err:
            report(f"skipped: {err}")
            report.summary.append([config.label, "build", str(err)[:80], "-", "SKIPPED"])
            continue
        ours.to(dtype)
        report(f"ours: SimMPNet.from_variant('paper', n_classes=9, in_channels=1), {note}")
        nmap = check_parameters(report, config, ours, theirs, verbose=index == 0)
        transplant(ours, theirs, nmap.mapping)
        pairs = dmwla_pairs(ours, theirs)
        draw_memory(pairs, args.seed + 2, dtype)
        for phase in ("warmup", "after"):
            check_eval(report, config, ours, theirs, pairs, phase, x)
        if not args.skip_training:
            check_training_step(report, config, authors, ours, theirs, nmap, pairs, x, labels)
        del ours, pairs

    report.section("Summary")
    report(f"PASS/FAIL where our configuration must reproduce theirs (authors masks, gamma 0), INFO elsewhere.")
    report("")
    report.table(["configuration", "check", "value", "threshold", "result"], report.summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(report.lines) + "\n", encoding="utf-8")
        print(f"report written to {args.out}")
    return 1 if any(row[-1] == "FAIL" for row in report.summary) else 0


if __name__ == "__main__":
    sys.exit(main())
