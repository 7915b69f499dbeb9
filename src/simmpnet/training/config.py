"""The configuration of a training run: `TrainConfig`, its validation, and the settings
derived from it before the network is built (the DMW-LA warm-up of a variant, the accepted
input sides, the resolved mixed precision)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError
from ..evaluation.resample import check_resample
from ..models import VARIANTS
from ..models.factory import MODEL_NAMES
from ..models.nnunet_unet import NNUNET_NAME, nnunet_unet_kwargs
from ..precision import ISLAND_PRECISIONS, bf16_native
from .losses import DICE_DENOMINATORS
from .tensorboard import check_tensorboard

__all__ = ["COMPILE_MODES", "TrainConfig"]

#: Values of the ``compile`` key: none; inductor's modes; a backend that traces without compiling.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "aot_eager")
#: The slice side of the peer networks when ``input_size`` is left out.
DEFAULT_PEER_SIZE = 128


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML files hold the same keys.

    Data: ``data_root`` in the dataset ``layout`` (default "synapse": ``train_npz/``,
    ``test_vol_h5/``, ``lists/``; see `simmpnet.data.layouts`) with its ``layout_options``
    (e.g. ``{seed: 7}`` or ``{split_file: splits.json}``), ``train_list`` /
    ``val_list`` split names (``val_list`` None: no validation), ``n_classes`` with background, ``class_names`` (background first).
    Model: ``model`` ("simmpnet", "unet": MONAI's U-Net, or "nnunet": nnU-Net's 2d U-Net,
    `simmpnet.models.nnunet_unet`), ``variant``, ``model_overrides`` (config keys of the
    network), ``pretrained``, ``input_size`` (slice side, a multiple of 32 for Sim-MPNet, of 16
    for the U-Net, of the product of nnU-Net's strides for its U-Net; Sim-MPNet's encoders then
    run at ``input_size`` and 7/8 of it unless ``model_overrides`` sets ``img_size_a`` /
    ``img_size_b``; default the variant's encoder-A size, 128 for the peers), ``warmup_iters``
    (DMW-LA warm-up).
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
    banks, their k-means and their update stay in fp32.  ``amp_islands`` "bf16" (the DMW-LA
    global reads in bf16 under bf16 autocast, their logits and softmax in fp32) or "fp32" (all
    of Sim-MPNet's fp32 islands in fp32; `simmpnet.precision`).
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
    amp_islands: str = "bf16"
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
        if self.amp_islands not in ISLAND_PRECISIONS:
            raise InputError(f"amp_islands must be one of {', '.join(ISLAND_PRECISIONS)}, got {self.amp_islands!r}")
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
        if self.model == NNUNET_NAME:
            # nnU-Net's topology follows the slice size: it checks the side and the overrides.
            overrides = self.model_overrides_sized()
            nnunet_unet_kwargs(self.n_classes, self.in_channels, **overrides)
            return
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
        if self.model == NNUNET_NAME:
            overrides["patch_size"] = self.input_size or DEFAULT_PEER_SIZE
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
