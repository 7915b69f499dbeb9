"""The training loop: AdamW, the paper's deep-supervision loss and augmentation, the DMW-LA
warm-up and W-LD schedule, validation, atomic checkpoints and an exact resume.

Exact resume: the order of the slices in an epoch and every augmentation draw derive from
``(seed, epoch, slice index)`` alone, and the checkpoint stores the model (memory banks
included), the optimiser, the W-LD state, the position in the epoch and the torch RNG state.
A run killed at any moment and resumed from its last checkpoint therefore takes the same
steps as one that never stopped.

A step whose loss is NaN or Inf is skipped before it reaches the weights, the optimiser or the
DMW-LA memory banks (the forward only records the memory change, committed after the
optimiser step); ``max_nonfinite_losses`` such steps are tolerated.

Distributed data-parallel training (``torchrun --nproc-per-node N -m simmpnet train ...``):
see `simmpnet.training.distributed`.  ``batch_size`` is the global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import TRAIN_FORMAT, load_checkpoint, save_checkpoint
from ..device import resolve_device
from ..data.layouts import open_layout
from ..data.transforms import RandomAugment
from ..errors import CheckpointError, InputError, SimMPNetError
from ..evaluation.evaluate import evaluate_volumes
from ..evaluation.resample import check_resample
from ..files import atomic_write
from ..models import VARIANTS, SimMPNet, WLDSchedule
from ..models.factory import MODEL_NAMES, build_model, model_from_payload, model_payload
from ..precision import bf16_native
from . import distributed
from .losses import DICE_DENOMINATORS, DeepSupervisionLoss
from .plan import plan_run
from .tensorboard import TensorBoardLog, check_tensorboard

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "TrainingError"]

#: Values of the ``compile`` key: none; inductor's modes; a backend that traces without compiling.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "aot_eager")


class TrainingError(SimMPNetError):
    """Training cannot go on (e.g. the loss keeps being NaN)."""


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files hold the same keys.

    Data: ``data_root`` in the dataset ``layout`` (default "synapse": ``train_npz/``,
    ``test_vol_h5/``, ``lists/``; see `simmpnet.data.layouts`) with its ``layout_options``
    (e.g. ``{seed: 7}`` or ``{split_file: splits.json}``), ``train_list`` /
    ``val_list`` split names (``val_list`` None: no validation), ``n_classes`` with background, ``class_names`` (background first).
    Model: ``model`` ("simmpnet" or "unet"), ``variant``, ``model_overrides`` (config keys of
    the network), ``pretrained``, ``input_size`` (slice side, a multiple of 32 for Sim-MPNet
    and of 16 for the U-Net; Sim-MPNet's encoders then run at ``input_size`` and 7/8 of it
    unless ``model_overrides`` sets ``img_size_a`` / ``img_size_b``; default the variant's
    encoder-A size, 128 for the U-Net), ``warmup_iters`` (DMW-LA warm-up).
    Left unset, ``eval_start_epoch``, ``wld_start_epoch`` and ``warmup_iters`` scale with the run
    (a third of it, as the paper's 100 of 300 epochs; the warm-up at most the variant's 2000);
    set beyond the run's ``epochs`` they are refused (`simmpnet.training.plan`).
    Optimisation (paper: AdamW 1e-4 constant, wd 1e-4, batch 20, seed 2222): ``epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``lr_schedule`` ("constant" or "poly":
    ``lr (1 - progress)^0.9``, progress the larger of the step and time-budget fractions),
    ``augment`` (options of `simmpnet.data.transforms.RandomAugment`: p_rot_flip,
    p_rotate, max_angle; default the paper's 0.5 / 0.5 / 20), ``dice_denominator`` ("squared",
    the paper's soft Dice, or "linear"), ``seed``, ``wld_start_epoch`` (the epoch, from 0, whose losses
    W-LD records first; ``K`` follows the rule from the next epoch on), ``wld_blocks`` ("encoder" as the
    authors, "decoder", "all" or "none"), ``eval_start_epoch`` (the first epoch, from 1, after
    which ``val_list`` is evaluated), ``eval_every``, ``resample``
    (how validation predictions return to the slice size: "labels", the paper's, or "logits";
    see `simmpnet.evaluation.inference`; ``evaluate`` and ``predict`` default to it).
    Budget: ``time_budget_s`` (wall clock of the whole run, across resumes), ``max_steps``.
    Mixed precision: ``amp`` "none", "bf16" (CPU or CUDA), "fp16" (CUDA, with gradient
    scaling) or "auto" (bf16 where the hardware computes it natively, else none); the memory
    banks, their k-means and their update stay in fp32.
    Robustness: ``max_nonfinite_losses`` skipped steps before training stops; ``check_data``
    reads and checks every file once before training starts, so that a bad file stops the run
    before anything is written.
    Runtime: ``device`` ("auto", "cpu", "cuda"), ``threads``, ``num_workers``, ``output_dir``,
    ``log_every``, ``progress``, ``tensorboard`` (also write TensorBoard event files to
    ``output_dir/tensorboard``: the log's scalars and validation overlays; needs the
    ``tensorboard`` extra); ``channels_last`` (the network and its input in channels-last
    memory), ``compile`` ("none"; "default", "reduce-overhead" (CUDA graphs) or "max-autotune":
    the training forward and backward through ``torch.compile`` with inductor in that mode;
    "aot_eager": traced but not compiled, for checking).  Validation runs the plain network.
    Distributed (under ``torchrun``): ``batch_size`` is the *global* batch and must be divisible
    by the number of processes; ``sync_batchnorm`` (default true) synchronises the BatchNorm
    statistics over the processes, so that a run matches one process with the same batch.
    """

    data_root: str = ""
    layout: str = "synapse"
    layout_options: dict[str, Any] = field(default_factory=dict)
    train_list: str = "train"
    val_list: str | None = "test_vol"
    n_classes: int = 9
    class_names: list[str] | None = None
    in_channels: int = 1
    intensity_window: list[float] | None = None
    model: str = "simmpnet"
    variant: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: bool | str = False
    input_size: int | None = None
    warmup_iters: int | None = None
    epochs: int = 300
    batch_size: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    augment: dict[str, float] = field(default_factory=dict)
    dice_denominator: str = "squared"
    seed: int = 2222
    wld_start_epoch: int | None = None
    wld_blocks: str = "encoder"
    eval_start_epoch: int | None = None
    eval_every: int = 1
    resample: str = "labels"
    time_budget_s: float | None = None
    max_steps: int | None = None
    amp: str = "none"
    max_nonfinite_losses: int = 5
    check_data: bool = True
    device: str = "auto"
    threads: int | None = None
    num_workers: int = 0
    output_dir: str = "runs/train"
    log_every: int = 10
    progress: bool = True
    sync_batchnorm: bool = True
    tensorboard: bool = False
    channels_last: bool = False
    compile: str = "none"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown training config keys: {unknown}; known keys: {sorted(known)}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(values, dict):
            raise InputError(f"{path}: expected a mapping of config keys")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InputError(f"model must be one of {list(MODEL_NAMES)}, got {self.model!r}")
        if self.model == "simmpnet" and self.variant not in VARIANTS:
            raise InputError(f"unknown Sim-MPNet variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.n_classes < 2:
            raise InputError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise InputError(f"class_names has {len(self.class_names)} names for {self.n_classes} classes")
        for name in ("epochs", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, least in (("eval_start_epoch", 1), ("wld_start_epoch", 0), ("warmup_iters", 0), ("max_steps", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise InputError(f"{name} must be an integer of at least {least} (or left out), got {value!r}")
        if self.amp not in ("none", "bf16", "fp16", "auto"):
            raise InputError(f"amp must be none, bf16, fp16 or auto, got {self.amp!r}")
        if self.lr_schedule not in ("constant", "poly"):
            raise InputError(f"lr_schedule must be constant or poly, got {self.lr_schedule!r}")
        if self.wld_blocks not in ("encoder", "decoder", "all", "none"):
            raise InputError(f"wld_blocks must be encoder, decoder, all or none, got {self.wld_blocks!r}")
        if self.dice_denominator not in DICE_DENOMINATORS:
            raise InputError(
                f"dice_denominator must be one of {list(DICE_DENOMINATORS)}, got {self.dice_denominator!r}"
            )
        check_resample(self.resample)
        if self.compile not in COMPILE_MODES:
            raise InputError(f"compile must be one of {list(COMPILE_MODES)}, got {self.compile!r}")
        self._check_input_size()
        self._check_network()
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.tensorboard:
            check_tensorboard()

    def _check_input_size(self) -> None:
        if self.input_size is None:
            return
        step = _size_step(self.model, self.model_overrides)
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size < step or size % step:
            raise InputError(
                f"input_size must be a positive multiple of {step} for {self.model} "
                f"(e.g. {', '.join(str(step * k) for k in (2, 3, 4, 8))}), got {self.input_size!r}"
            )
        size_a = self.model_overrides.get("img_size_a")
        if self.model == "simmpnet" and size_a is not None and size_a != self.input_size:
            raise InputError(
                f"input_size {self.input_size} and model_overrides.img_size_a {size_a} disagree: the slices "
                f"are resized to input_size and encoder A runs at img_size_a; set one of them"
            )

    def _check_network(self) -> None:
        """Sim-MPNet's ``model_overrides`` (keys, ablation switches) are checked here, before any
        data is read, rather than when the network is built."""
        if self.model != "simmpnet":
            return
        if not isinstance(self.model_overrides, dict):
            raise InputError(f"model_overrides must be a mapping of network settings, got {self.model_overrides!r}")
        network = VARIANTS[self.variant].with_overrides(**self.model_overrides)
        if self.pretrained and not network.encoder_a:
            raise InputError(
                "pretrained loads encoder A's backbone weights, and model_overrides sets encoder_a: false "
                "(no encoder A); set pretrained: false"
            )

    def model_overrides_sized(self) -> dict[str, Any]:
        """``model_overrides`` with Sim-MPNet's encoder sizes following ``input_size``: encoder A
        at ``input_size``, encoder B at 7/8 of it (the paper's 224 for 256) unless set."""
        overrides = dict(self.model_overrides)
        if self.model == "simmpnet" and self.input_size is not None:
            overrides.setdefault("img_size_a", self.input_size)
            overrides.setdefault("img_size_b", self.input_size * 7 // 8)
        return overrides

    def model_identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share with this config to be resumed."""
        keys = ("model", "variant", "model_overrides", "n_classes", "in_channels", "input_size", "warmup_iters")
        return {k: getattr(self, k) for k in keys}

    @property
    def names(self) -> list[str]:
        return list(self.class_names or ["background", *(f"class_{i}" for i in range(1, self.n_classes))])


def _memory_parts(config: TrainConfig, overrides: dict[str, Any]) -> tuple[str, ...]:
    """The parts of the network (``"encoder"``, ``"decoder"``) whose blocks hold a DMW-LA
    memory: none for the U-Net, or where the ablation switches of ``model_overrides`` replace it."""
    if config.model != "simmpnet":
        return ()
    return VARIANTS[config.variant].with_overrides(**overrides).memory_parts


def _variant_warmup(config: TrainConfig, overrides: dict[str, Any]) -> int | None:
    """The DMW-LA warm-up the network has without ``warmup_iters``; None for a network without
    memory, or when ``model_overrides`` sets the warm-up itself (it is then left as given)."""
    if config.model != "simmpnet" or any("warmup_iters" in str(key) for key in _keys(overrides)):
        return None
    network = VARIANTS[config.variant].with_overrides(**overrides)
    if not network.memory_parts:
        return None
    return getattr(network, f"{network.memory_parts[0]}_memory").warmup_iters


def _keys(mapping: dict[str, Any]) -> list[str]:
    """The keys of a nested mapping, at every level."""
    found = []
    for key, value in mapping.items():
        found.append(str(key))
        if isinstance(value, dict):
            found.extend(_keys(value))
    return found


def _size_step(model: str, overrides: dict[str, Any]) -> int:
    """The input sides a model accepts are the multiples of this: 32 for Sim-MPNet (encoder A's
    MaxViT windows), the product of the strides for the U-Net (16 by default)."""
    if model == "simmpnet":
        return 32
    return math.prod(int(s) for s in overrides.get("strides", (2, 2, 2, 2)))


def _resolve_amp(amp: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware has native bf16 arithmetic (emulated bf16 is slower
    than fp32), else none."""
    if amp != "auto":
        return amp
    return "bf16" if bf16_native(device) else "none"




class _AugmentedSlices(Dataset):
    """Training slices with an augmentation whose draws depend on (seed, epoch, index) only."""

    def __init__(self, slices: Dataset, size: int, seed: int, options: dict[str, float]) -> None:
        self.slices = slices
        self.augment = RandomAugment(size, **options)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.slices[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = item["image"].numpy()  # (C, H, W)
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        image, label = self.augment.apply(image, item["label"].numpy(), rng)
        return {"image": image, "label": label}


#: The files by which an output folder holds a training run.
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "resolved_config.yaml")


def check_run_folder(output_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """The run files already in ``output_dir``; an `InputError` if there are any and
    ``overwrite`` is false, so that a new run never mixes its checkpoints and log with another's."""
    found = [name for name in RUN_FILES if (Path(output_dir) / name).exists()]
    if found and not overwrite:
        raise InputError(
            f"{output_dir}: holds a training run ({', '.join(found)}); continue it with --resume, "
            f"replace it with --overwrite, or choose another --output"
        )
    return found


class Trainer:
    """Trains one model as `TrainConfig` says and writes into ``output_dir``:
    ``last.pt`` (every epoch and when the budget ends), ``best.pt`` (best validation DSC),
    ``log.jsonl`` and ``curves.png``.

    A folder that already holds a run is refused when `fit` starts, unless the run is
    continued (`resume`) or ``overwrite`` is true, which removes that run's files first.
    """

    def __init__(self, config: TrainConfig, overwrite: bool = False) -> None:
        config.validate()
        self.config = config
        self.overwrite = overwrite
        self._claimed = False  # the output folder holds this run's files (or none yet)
        self._interrupted = False  # a Ctrl-C asked the run to stop at the next step boundary
        world = distributed.environment_world_size()
        if config.batch_size % world:
            raise InputError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                f"{world} processes of this distributed run"
            )
        self.dist, self.device = distributed.setup(resolve_device(config.device))
        self._threads_before = torch.get_num_threads()  # restored by close()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.output_dir = Path(config.output_dir)
        root = Path(config.data_root)
        if not root.is_dir():
            raise InputError(f"{root}: data folder not found")
        self.layout = open_layout(config.layout, root, config.n_classes, config.in_channels, **config.layout_options)
        if config.check_data:
            problems = self.layout.verify()
            if problems:
                more = f" (and {len(problems) - 1} more problem(s); `simmpnet verify` lists them)" if len(problems) > 1 else ""
                raise InputError(problems[0] + more)
        self.train_set = self.layout.slices(config.train_list)
        if len(self.train_set) == 0:
            raise InputError(f"{root}: the training split {config.train_list!r} holds no slices")
        if self.dist.enabled and len(self.train_set) < config.batch_size:
            raise InputError(
                f"{root}: the training split {config.train_list!r} holds {len(self.train_set)} slices, fewer "
                f"than one global batch ({config.batch_size}) for distributed training"
            )
        self.val_set = self.layout.cases(config.val_list) if config.val_list else None
        overrides = config.model_overrides_sized()
        memory_parts = _memory_parts(config, overrides)
        self.plan = plan_run(config, len(self.train_set), _variant_warmup(config, overrides), memory_parts)
        if config.model == "simmpnet" and config.wld_blocks != "none" and self.plan.wld_start_epoch is None:
            logger.info(
                "W-LD drives no block: wld_blocks %s names no DMW-LA memory (model_overrides: encoder_attention "
                "or decoder_attention is not memory)",
                config.wld_blocks,
            )
        torch.manual_seed(config.seed)
        if self.plan.warmup_iters is not None:
            overrides["warmup_iters"] = self.plan.warmup_iters
        self.model = build_model(
            config.model, config.n_classes, config.in_channels, config.variant, overrides, config.pretrained
        ).to(self.device)
        # (before the DDP wrapper, whose gradient buckets follow the parameters' strides)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model  # what the training forward runs (the DDP wrapper)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if config.sync_batchnorm:
                self.model = distributed.convert_sync_batchnorm(self.model, self.device)
            # Buffers (memory banks included) are kept identical by construction; only plain
            # BatchNorm statistics need rank 0's copy broadcast at each forward.
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=not config.sync_batchnorm,
            )
        if config.compile == "aot_eager":
            self.net = torch.compile(self.net, backend="aot_eager", dynamic=False)
        elif config.compile != "none":  # (every training batch has the same shape: static)
            self.net = torch.compile(self.net, mode=config.compile, dynamic=False)
        if config.input_size is not None:
            self.input_size = config.input_size
        elif isinstance(self.model, SimMPNet):
            self.input_size = self.model.config.img_size_a
        else:
            self.input_size = 128
        self._norm_buffers = [
            buffer
            for module in self.model.modules()
            if isinstance(module, nn.modules.batchnorm._NormBase)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
            if buffer is not None
        ]
        # The fused kernel updates every parameter in one pass, much faster on the CPU than
        # the default loop over the hundreds of parameter tensors; the same update rule.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        amp = _resolve_amp(config.amp, self.device)
        if amp == "fp16" and self.device.type != "cuda":
            raise InputError("amp fp16 needs CUDA; use bf16 on the CPU")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.criterion = DeepSupervisionLoss(
            reduce=distributed.all_reduce_sum if self.dist.enabled else None, dice_denominator=config.dice_denominator
        )
        self.wld = (
            WLDSchedule(self.model.dmwla_blocks(config.wld_blocks), start_epoch=self.plan.wld_start_epoch)
            if isinstance(self.model, SimMPNet) and self.plan.wld_start_epoch is not None
            else None
        )
        allowed = {"p_rot_flip", "p_rotate", "max_angle"}
        if set(config.augment) - allowed:
            raise InputError(f"unknown augment options {sorted(set(config.augment) - allowed)}; known: {sorted(allowed)}")
        self.samples = _AugmentedSlices(self.train_set, self.input_size, config.seed, config.augment)
        self.steps_per_epoch = self.plan.steps_per_epoch
        self._started: float | None = None
        self.tensorboard: TensorBoardLog | None = None  # opened by fit (rank 0)
        self.state: dict[str, Any] = {
            "epoch": 0,
            "batch_in_epoch": 0,
            "global_step": 0,
            "epoch_loss_sum": 0.0,
            "epoch_loss_count": 0,
            "best_dsc": None,
            "elapsed_s": 0.0,
            "nonfinite_losses": 0,
            # Sim-MPNet: each block's prototypes at the last epoch record (the drift's reference;
            # in the checkpoint, so that a resumed run logs what an uninterrupted one does)
            "prototypes": {},
        }

    # ------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        # The RNG state is the same on every rank (same seed, same draws).
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda_device"] = torch.cuda.get_rng_state(self.device)
        if torch.cuda.is_available() and not self.dist.enabled:
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": TRAIN_FORMAT,
            "version": 1,
            "model": model_payload(self.model, self.input_size),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "wld": self.wld.state_dict() if self.wld else None,
            "state": dict(self.state),
            "rng": rng,
            "identity": _plain(self.config.model_identity()),
            "plan": self.plan.to_dict(),
            "config": _plain(dataclasses.asdict(self.config)),
        }

    def save(self, name: str = "last.pt") -> Path:
        return save_checkpoint(self._payload(), self.output_dir / name)

    def resume(self, path: str | os.PathLike | None = None) -> None:
        """Continue from a checkpoint (default ``output_dir/last.pt``).  Every rank of a
        distributed run reads it; it may come from a run with another number of processes.
        Resuming this run's own checkpoint also drops the log records written after it."""
        path = Path(path) if path else self.output_dir / "last.pt"
        payload = load_checkpoint(path, map_location="cpu")
        if payload.get("format") != TRAIN_FORMAT:
            raise CheckpointError(f"{path}: not a simmpnet training checkpoint")
        mine = _plain(self.config.model_identity())
        theirs = payload.get("identity")
        if theirs != mine:
            theirs = theirs if isinstance(theirs, dict) else {}
            differ = ", ".join(
                f"{key} {theirs.get(key)!r} in the checkpoint, {mine.get(key)!r} now"
                for key in sorted(set(mine) | set(theirs)) if theirs.get(key) != mine.get(key)
            )
            raise CheckpointError(
                f"{path}: written for another model configuration ({differ}); resume with the run's own config "
                f"(simmpnet train --output {path.parent} --resume, which reads {path.parent / 'resolved_config.yaml'})"
            )
        restored = model_from_payload(payload["model"], str(path))
        self._claimed = True
        self.model.load_state_dict(restored.state_dict())
        self._keep_plan(payload.get("plan"), restored)
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        if self.wld and payload.get("wld"):
            self.wld.load_state_dict(payload["wld"])
        self.state.update(payload["state"])
        torch.set_rng_state(payload["rng"]["torch"])
        if self.device.type == "cuda" and "cuda_device" in payload["rng"]:
            torch.cuda.set_rng_state(payload["rng"]["cuda_device"], self.device)
        elif "cuda" in payload["rng"] and torch.cuda.is_available() and not self.dist.enabled:
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        if self.dist.is_main and path.resolve().parent == self.output_dir.resolve():
            self._rewind_log()
        logger.info("resumed from %s at epoch %d, step %d", path, self.state["epoch"], self.state["global_step"])

    def _keep_plan(self, saved: dict[str, Any] | None, restored: nn.Module) -> None:
        """A resumed run keeps the schedule it started with, even where a changed ``epochs``
        or ``max_steps`` would scale the unset keys differently: a warm-up that grew past
        the memory's count would send a clustered memory back into warm-up."""
        if not saved:
            return
        keys = ("eval_start_epoch", "wld_start_epoch", "warmup_iters")
        kept = {key: saved.get(key) for key in keys}
        if kept == {key: getattr(self.plan, key) for key in keys}:
            return
        logger.info("the resumed run keeps its schedule: %s", kept)
        self.plan = dataclasses.replace(self.plan, **kept)
        if self.wld is not None and kept["wld_start_epoch"] is not None:
            self.wld.start_epoch = kept["wld_start_epoch"]
        if isinstance(self.model, SimMPNet) and isinstance(restored, SimMPNet):
            self.model.config = restored.config
            for mine, theirs in zip(self.model.dmwla_blocks("all"), restored.dmwla_blocks("all"), strict=True):
                mine.memory.warmup_iters = theirs.memory.warmup_iters

    def _rewind_log(self) -> None:
        """Drop the log records written after the checkpoint being resumed (the steps a killed
        run did not save, a line cut off by the kill), so that the resumed run logs those
        steps once, as an uninterrupted run would.  The end record goes too: the resumed run
        writes its own when it stops (a run killed after its end record, before it exited,
        would otherwise end twice)."""
        log = self.output_dir / "log.jsonl"
        if not log.is_file():
            return
        step, epoch = self.state["global_step"], self.state["epoch"]
        kept: list[str] = []
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or record.get("event") == "end":
                continue
            at_step, at_epoch = record.get("step"), record.get("epoch", 0)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (at_step, at_epoch))
            if numbers and at_step <= step and at_epoch <= epoch:
                kept.append(line)
        atomic_write(log, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8"))

    # ------------------------------------------------------------------ loop
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch (each rank of a distributed run takes its share)."""
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        size = self.config.batch_size
        # BatchNorm and the loss behave better without a ragged last batch: it is dropped
        # unless it is the only one (steps_per_epoch)
        return [order[i : i + size].tolist() for i in range(0, len(order), size)][: self.steps_per_epoch]

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.record(record)

    def _out_of_budget(self) -> str | None:
        cfg = self.config
        if self._interrupted:
            return "interrupted"
        if cfg.max_steps is not None and self.state["global_step"] >= cfg.max_steps:
            return "max_steps"
        if cfg.time_budget_s is not None:
            over = self._elapsed() >= cfg.time_budget_s
            if self.dist.enabled:  # the clocks of the ranks differ: stop together
                over = distributed.any_rank(over, self.device)
            if over:
                return "time_budget"
        return None

    def train_step(self, image: torch.Tensor, label: torch.Tensor, epoch: int) -> float | None:
        """One optimisation step on this rank's share of the batch; returns the loss of the
        (global) batch, or None when it was not finite: the step is then skipped and leaves
        the weights, the optimiser, the memory banks and W-LD untouched."""
        self.net.train()
        # BatchNorm running statistics change during the forward: kept to undo a skipped step.
        norm_state = [(b, b.clone()) for b in self._norm_buffers]
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            heads = self.net(image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format))
            loss = self.criterion(heads, label.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        # The backward is queued before the loss is read: the one host sync of the step then
        # waits for the backward too, and a GPU does not idle while the host launches it.  The
        # gradients of a non-finite loss are dropped below, unused.
        self.scaler.scale(loss).backward()
        value = float(loss.detach())
        if self.dist.enabled:  # 0.3 mean CE + 0.7 global Dice: the loss of the global batch
            value = distributed.mean_over_ranks(value, self.device)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            if isinstance(self.model, SimMPNet):
                self.model.discard_memory()
            with torch.no_grad():
                for buffer, saved in norm_state:
                    buffer.copy_(saved)
            del heads, loss
            self.state["nonfinite_losses"] += 1
            logger.warning("non-finite loss at step %d: skipped", self.state["global_step"])
            if self.state["nonfinite_losses"] > self.config.max_nonfinite_losses:
                raise TrainingError(
                    f"the loss was NaN or Inf {self.state['nonfinite_losses']} times (more than "
                    f"max_nonfinite_losses={self.config.max_nonfinite_losses}); stopping "
                    "(check the data for NaN values or lower the learning rate)"
                )
            return None
        if self.config.lr_schedule == "poly":
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr * (1.0 - self._progress()) ** 0.9
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if isinstance(self.model, SimMPNet):
            # The memory change of this forward, from the candidate features of every rank.
            self.model.commit_memory(distributed.gather_cat if self.dist.enabled else None)
        if self.wld is not None:
            self.wld.step(value, epoch)
        return value

    def _elapsed(self) -> float:
        """Seconds of this run so far, resumed runs included."""
        return self.state["elapsed_s"] + time.monotonic() - self._started

    def _progress(self) -> float:
        """Fraction of the run done, by steps and (when budgeted) by time, whichever is larger."""
        cfg = self.config
        total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        progress = self.state["global_step"] / max(total_steps, 1)
        if cfg.time_budget_s is not None and self._started is not None:
            elapsed = self._elapsed()
            if self.dist.enabled:  # one learning rate on every rank
                elapsed = distributed.max_over_ranks(elapsed, self.device)
            progress = max(progress, elapsed / cfg.time_budget_s)
        return min(progress, 1.0)

    def validate(self) -> dict[str, Any] | None:
        """Validation summary (run by rank 0 alone in distributed training)."""
        if self.val_set is None:
            return None
        return evaluate_volumes(
            self.model, self.val_set, self.input_size, self.config.n_classes, self.config.names, self.device,
            resample=self.config.resample, on_case=self.tensorboard.keep_case if self.tensorboard else None,
        )

    def fit(self) -> dict[str, Any]:
        """Train until the epochs, the step limit or the time budget run out, or a Ctrl-C.
        Returns a summary: stop reason (``"epochs"``, ``"max_steps"``, ``"time_budget"``,
        ``"interrupted"``), epochs, steps, elapsed seconds, last and best validation DSC.
        ``last.pt`` is written at every stop, so `resume` continues any of them.

        Distributed: every rank calls it; rank 0 alone validates and writes checkpoints, the
        log and the curves."""
        cfg = self.config
        main = self.dist.is_main
        if not self._claimed:
            # Every rank sees the same files: with overwrite false all of them refuse alike.
            found = check_run_folder(self.output_dir, self.overwrite)
            if found and main:
                logger.info("%s: replacing the run that was there (%s)", self.output_dir, ", ".join(found))
                for name in (*RUN_FILES, "curves.png"):
                    (self.output_dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.output_dir / "tensorboard", ignore_errors=True)
            self._claimed = True
            if self.dist.enabled:  # every rank has looked before rank 0 writes the first file
                distributed.barrier(self.device)
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_resolved_config()
            self._log_start()
            if cfg.tensorboard:
                # A resumed run writes nothing at its checkpoint's step: the events up to it stay.
                self.tensorboard = TensorBoardLog(self.output_dir / "tensorboard", purge_step=self.state["global_step"] + 1)
        self._started = time.monotonic()
        with self._stop_on_interrupt():
            return self._fit(main)

    @contextlib.contextmanager
    def _stop_on_interrupt(self) -> Iterator[None]:
        """A first Ctrl-C (SIGINT) ends the run at the next step boundary, with ``last.pt``
        written as at any other stop (``stop`` is ``"interrupted"``); a second one interrupts at
        once.  Only for a single-process run in the main thread: the ranks of a distributed run
        could see the signal at different steps, and wait for each other for ever."""
        if self.dist.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupted(signum: int, frame: Any) -> None:
            self._interrupted = True
            signal.signal(signal.SIGINT, previous)
            logger.warning("interrupted: stopping after this step and saving last.pt (Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _fit(self, main: bool) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.config
        stop = self._out_of_budget()
        last_val: float | None = None
        steps_per_epoch = self.steps_per_epoch
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        done = self.state["epoch"] * steps_per_epoch + self.state["batch_in_epoch"]
        # Under a time budget the bar counts seconds, so that its ETA is the budget left.
        budgeted = cfg.time_budget_s is not None
        bar = tqdm(
            total=round(cfg.time_budget_s) if budgeted else total,
            initial=round(self.state["elapsed_s"]) if budgeted else done,
            unit="s" if budgeted else "step",
            disable=not (cfg.progress and main),
            dynamic_ncols=True,
        )
        while stop is None and self.state["epoch"] < cfg.epochs:
            epoch = self.state["epoch"]
            self.samples.epoch = epoch
            batches = self._epoch_batches(epoch)[self.state["batch_in_epoch"] :]
            if self.dist.enabled:
                batches = distributed.shard_batches(batches, self.dist.rank, self.dist.world_size)
            loader = DataLoader(
                self.samples,
                batch_sampler=batches,
                num_workers=cfg.num_workers,
                generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
            )
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            for batch in loader:
                value = self.train_step(batch["image"], batch["label"], epoch)
                self.state["batch_in_epoch"] += 1
                if budgeted:
                    bar.update(max(0, min(round(self._elapsed()), bar.total) - bar.n))
                else:
                    bar.update(1)
                if value is not None:
                    self.state["global_step"] += 1
                    self.state["epoch_loss_sum"] += value
                    self.state["epoch_loss_count"] += 1
                    k = self.wld.current_k if self.wld else None
                    bar.set_postfix(step=self.state["global_step"], loss=f"{value:.4f}", K=k)
                    if self.state["global_step"] % cfg.log_every == 0:
                        lr = self.optimizer.param_groups[0]["lr"]
                        self._log({"event": "step", "epoch": epoch, "step": self.state["global_step"], "loss": value, "k": k, "lr": lr})
                stop = self._out_of_budget()
                if stop:
                    break
            if stop and self.state["batch_in_epoch"] < self.steps_per_epoch:
                break  # mid-epoch; a budget that ends with the epoch still validates and logs it
            record: dict[str, Any] = {
                "event": "epoch",
                "epoch": epoch + 1,
                "step": self.state["global_step"],
                "train_loss": self.state["epoch_loss_sum"] / max(self.state["epoch_loss_count"], 1),
            }
            self.state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
            start = self.plan.eval_start_epoch
            if start is not None and epoch + 1 >= start and (epoch + 1 - start) % cfg.eval_every == 0:
                summary = self.validate() if main else None
                if self.dist.enabled:  # the others wait for rank 0's validation
                    summary = distributed.broadcast_object(summary and {"mean": {"dsc": summary["mean"]["dsc"]}})
                if summary is not None:
                    last_val = record["val_dsc"] = summary["mean"]["dsc"]
                    if self.tensorboard is not None:
                        self.tensorboard.overlays(self.state["global_step"])
                    best = self.state["best_dsc"]
                    if last_val is not None and (best is None or last_val > best):
                        self.state["best_dsc"] = last_val
                        self._checkpoint("best.pt")
            if isinstance(self.model, SimMPNet):  # one read from the device an epoch
                dropped = self.model.take_dropped_memory_changes()
                if dropped:
                    record["dropped_memory_changes"] = dropped
            record["elapsed_s"] = self._elapsed()
            if isinstance(self.model, SimMPNet):
                record["memory"] = self._memory_drift()
            self._log(record)
            self._checkpoint("last.pt")
            # With a progress bar on screen the epoch lines go to the log file only.
            level = logging.DEBUG if cfg.progress else logging.INFO
            shown = f"train loss {record['train_loss']:.4f}"
            if record.get("val_dsc") is not None:
                shown += f", validation DSC {100 * record['val_dsc']:.2f} %"
            logger.log(level, "epoch %d (step %d): %s", epoch + 1, record["step"], shown)
        bar.close()
        stop = stop or "epochs"
        self._checkpoint("last.pt")
        self._plot_curves()
        elapsed = self._elapsed()
        missing = self._why_no_best(stop)
        result = {
            "stop": stop,
            "epochs": self.state["epoch"],
            "steps": self.state["global_step"],
            "elapsed_s": elapsed,
            "last_val_dsc": last_val,
            "best_val_dsc": self.state["best_dsc"],
            "best_checkpoint": None if missing else str(self.output_dir / "best.pt"),
            "no_best_reason": missing,
        }
        if missing and main:
            logger.warning("no best.pt: %s; last.pt is the model of this run", missing)
        self._log({"event": "end", **result})
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        return result

    @torch.no_grad()
    def _memory_drift(self) -> dict[str, dict[str, Any]]:
        """Per DMW-LA block past its warm-up: ``drift``, each category's ``1 - cos`` between its
        prototype now and at the last epoch record (None where there is no such prototype:
        the first epoch after the warm-up), for the report's memory panel."""
        from ..evaluation.memory_maps import block_names

        drift: dict[str, dict[str, Any]] = {}
        for name, block in zip(block_names(self.model), self.model.dmwla_blocks()):
            if block.in_warmup:
                continue
            now = block.memory.prototypes.detach().float().cpu()  # (d, num_k)
            before = self.state["prototypes"].get(name)
            cosine = torch.nn.functional.cosine_similarity(now, before, dim=0) if before is not None else None
            drift[name] = {"drift": None if cosine is None else [1.0 - c for c in cosine.tolist()]}
            self.state["prototypes"][name] = now.clone()
        return drift

    def _why_no_best(self, stop: str) -> str | None:
        """Why the run holds no ``best.pt`` (None when it does)."""
        if self.state["best_dsc"] is not None:
            return None
        if self.plan.eval_start_epoch is None:
            return "no validation split (val_list: null)"
        if self.state["epoch"] < self.plan.eval_start_epoch:
            return (
                f"validation starts after epoch {self.plan.eval_start_epoch} (eval_start_epoch) and the run "
                f"stopped ({stop}) after {self.state['epoch']} complete epoch(s)"
            )
        return f"the validation split {self.config.val_list!r} gave no Dice score (no foreground in its labels?)"

    def resolved_config(self) -> dict[str, Any]:
        """The config as this run uses it: every key of `TrainConfig`, with the input
        size and the scaled schedule keys filled in.  ``simmpnet train --config`` reads it."""
        values = _plain(dataclasses.asdict(self.config))
        values["input_size"] = self.input_size
        for key in ("eval_start_epoch", "wld_start_epoch", "warmup_iters"):
            if getattr(self.plan, key) is not None:
                values[key] = getattr(self.plan, key)
        return values

    def _write_resolved_config(self) -> None:
        from .. import __version__

        params = sum(p.numel() for p in self.model.parameters())
        header = (
            f"# The configuration of this run as resolved by simmpnet {__version__} (torch {torch.__version__}) "
            f"on {self.device.type}.\n# {params:,} parameters; {len(self.train_set)} training slices "
            f"({self.config.train_list!r}), {self.plan.steps} steps of batch {self.config.batch_size}.\n"
            "# Keys left unset were filled in; `simmpnet train --config` takes this file as it is.\n"
        )
        text = header + yaml.safe_dump(self.resolved_config(), sort_keys=False)
        atomic_write(self.output_dir / "resolved_config.yaml", lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _log_start(self) -> None:
        """What the run is about to do, in a few lines, before the first step."""
        cfg, plan = self.config, self.plan
        params = sum(p.numel() for p in self.model.parameters())
        network = f"{cfg.model} {cfg.variant}" if cfg.model == "simmpnet" else cfg.model
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        procs = f", {self.dist.world_size} processes" if self.dist.enabled else ""
        logger.info(
            "run: %s, %.2f M parameters, %d px input, %d channel(s), %d classes; %s on %s, %d torch thread(s)%s",
            network, params / 1e6, self.input_size, cfg.in_channels, cfg.n_classes, amp, self.device,
            torch.get_num_threads(), procs,
        )
        validation = (
            f"validation on {cfg.val_list!r} ({len(self.val_set)} cases) after epoch {plan.eval_start_epoch}, "
            f"then every {cfg.eval_every}"
            if self.val_set is not None else "no validation (val_list: null)"
        )
        logger.info(
            "data: %s layout at %s: training on %r (%d slices), %s",
            cfg.layout, cfg.data_root, cfg.train_list, len(self.train_set), validation,
        )
        schedule = [f"{plan.steps} steps ({plan.epochs} epoch(s) of {plan.steps_per_epoch}, batch {cfg.batch_size})"]
        if cfg.time_budget_s is not None:
            schedule.append(f"at most {cfg.time_budget_s:.0f} s")
        if plan.wld_start_epoch is not None:
            schedule.append(f"W-LD from epoch {plan.wld_start_epoch}")
        if plan.warmup_iters is not None:
            schedule.append(f"DMW-LA warm-up {plan.warmup_iters} forwards")
        scaled = f" ({', '.join(plan.scaled)} scaled to the run)" if plan.scaled else ""
        logger.info("plan: %s%s", ", ".join(schedule), scaled)
        for warning in plan.warnings:
            logger.warning("%s", warning)
        logger.info("output: %s (resolved_config.yaml, checkpoints, log.jsonl)", self.output_dir)

    def _checkpoint(self, name: str) -> None:
        """Rank 0 writes the checkpoint; in distributed training the others wait for it."""
        if self.dist.is_main:
            # The elapsed time is carried in the checkpoint so that a resumed run keeps the budget.
            saved = self.state["elapsed_s"]
            self.state["elapsed_s"] = self._elapsed()
            try:
                self.save(name)
            finally:
                self.state["elapsed_s"] = saved
        if self.dist.enabled:
            distributed.barrier(self.device)

    def close(self) -> None:
        """Leave the process group of a distributed run (if this trainer started it) and give
        the process back the torch thread count it had before the ``threads`` option."""
        distributed.cleanup(self.dist)
        torch.set_num_threads(self._threads_before)
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _plot_curves(self) -> None:
        if not self.dist.is_main:
            return
        log = self.output_dir / "log.jsonl"
        if not log.is_file():
            return
        from ..evaluation.report import plot_curves

        plot_curves(log, self.output_dir / "curves.png")


def _plain(value: Any) -> Any:
    """Containers of plain Python values only (checkpoints are read with weights_only)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


