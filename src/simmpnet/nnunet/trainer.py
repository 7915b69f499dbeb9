"""nnU-Net v2 trainers whose network is Sim-MPNet (nnU-Net's ``2d`` configuration).

Everything but the network and what the network needs from the training loop is nnU-Net's:
planning, preprocessing, patch sampling, augmentation, folds, online validation, the final
sliding-window validation, checkpoints and logs.  What these trainers change (docs/nnunet.md):

* **Network**: `SimMPNet` of a variant (``paper`` or ``tiny``) with
  encoder A at the planned patch's longer side rounded up to a multiple of 32 (MaxViT cuts each
  stage into windows of ``side / 32``) and encoder B at 7/8 of it, as ``simmpnet train`` does.
  Sim-MPNet resizes its input to that square and its logits back to the patch, so every
  planned patch works; a patch whose sides are not both that multiple of 32 is interpolated
  on the way in and out (logged once).
* **Deep supervision**: Sim-MPNet's four heads are all at the patch's resolution, while
  nnU-Net's deep supervision compares outputs at 1, 1/2, 1/4 ... of it with downsampled
  targets.  nnU-Net's multi-scale targets are therefore off (``enable_deep_supervision =
  False``: the loader yields the full-resolution target only), and the paper's loss structure
  is kept: nnU-Net's own loss (Dice + CE) is applied to the summed logits of each of the 15
  non-empty subsets of the heads, and averaged (the paper sums; the mean keeps the loss on the
  scale nnU-Net's learning rate is tuned for).  In ``eval()`` mode the network returns the sum
  of the heads, which online validation, the final validation and prediction use.
* **Memory**: `SimMPNet.commit_memory` after every optimiser step that was taken, and
  `SimMPNet.discard_memory` after a skipped one (a non-finite loss, or a step the fp16
  gradient scaler dropped), so the DMW-LA warm-up counts optimiser steps.  The warm-up is the
  variant's (2000 steps) but at most a third of the run's steps, as in ``simmpnet train``.
* **W-LD**: ``K`` of encoder B's blocks follows the mean training loss of each epoch, from a
  third of the run on (the paper: epoch 100 of 300).
* **Optimiser**: nnU-Net's SGD (lr 1e-2, Nesterov, poly decay) by default; the ``_AdamW``
  trainers use the paper's AdamW (lr 1e-4, weight decay 1e-4, constant).  Both keep nnU-Net's
  gradient clipping at norm 12.
* ``torch.compile`` is off: nnU-Net compiles on CUDA only, and this trainer's loop compiled
  (training and validation through one module) has not run on a GPU; ``simmpnet train`` has a
  ``compile`` key.

nnU-Net rebuilds the network of a trained model from its trainer class and the plans alone;
that network computes the trained function, because whether each DMW-LA block has left its
warm-up is saved with the weights.  The exact architecture also travels inside every checkpoint
(``init_args["simmpnet_network"]``), so a model folder exported to a zip and installed elsewhere
loads with `load_simmpnet`; ``simmpnet_network.json`` next to the checkpoints repeats it
for people to read.

Short runs: every trainer has nnU-Net's short-run variants (``nnUNetTrainerSimMPNetTiny_1epoch``,
``_5epochs`` ... `SHORT_RUN_EPOCHS`), as ``nnunetv2`` has ``nnUNetTrainer_1epoch`` ...
Plans that do not fit (a 3D configuration, plans made for another network such as ResEnc or
Primus) are refused in the constructor, before nnU-Net creates any folder.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from ..errors import CheckpointError, InputError
from ..models import VARIANTS, SimMPNet, SimMPNetConfig, WLDSchedule
from ..pretrained import Preprocessing
from ..training.distributed import gather_cat, mean_over_ranks
from ..training.losses import DeepSupervisionLoss
from ..training.plan import scaled_warmup, scaled_wld_start

logger = logging.getLogger(__name__)

__all__ = [
    "NETWORK_FILE",
    "SHORT_RUN_EPOCHS",
    "TRAINERS",
    "HeadSubsetLoss",
    "check_plans",
    "encoder_side",
    "load_simmpnet",
    "network_from_description",
    "network_of_checkpoint",
    "nnUNetTrainerSimMPNet",
    "nnUNetTrainerSimMPNetTiny",
    "nnUNetTrainerSimMPNet_AdamW",
    "nnUNetTrainerSimMPNetTiny_AdamW",
]

#: The architecture of the network of a fold, next to its checkpoints.
NETWORK_FILE = "simmpnet_network.json"
NETWORK_FORMAT = "simmpnet-nnunet-network"
#: MaxViT cuts every stage into windows of ``side / 32`` pixels.
SIDE_STEP = 32
#: The network nnU-Net's default plans (``nnUNetPlans``) are made for; plans made for another
#: network (ResEnc, Primus) size their batch and patch for it, not for Sim-MPNet.
PLANNED_NETWORK = "PlainConvUNet"
#: nnU-Net's short-run trainers (``nnUNetTrainer_Xepochs``): each Sim-MPNet trainer has a
#: variant per entry, named as nnU-Net names its own (``_1epoch``, ``_5epochs`` ...).
SHORT_RUN_EPOCHS = (1, 5, 10, 20, 50, 100, 250, 500, 750, 2000, 4000, 8000)


def check_plans(plans: dict, configuration: str) -> None:
    """Refuse, before any work, plans that Sim-MPNet cannot train on: a configuration that is
    not there, a 3D one, or one planned for another network than nnU-Net's default U-Net."""
    manager = PlansManager(plans)
    name = plans.get("plans_name", "the plans")
    try:
        config = manager.get_configuration(configuration)
    except RuntimeError as err:
        raise InputError(f"{name}: no configuration {configuration!r} (has {sorted(plans.get('configurations', {}))})") from err
    if len(config.patch_size) != 2:
        raise InputError(
            f"{name} {configuration}: a 3D configuration (patch {tuple(config.patch_size)}); Sim-MPNet is a 2D "
            "network: train the 2d configuration"
        )
    network = str(config.network_arch_class_name)
    if network.rsplit(".", 1)[-1] != PLANNED_NETWORK:
        raise InputError(
            f"{name} {configuration}: planned for {network.rsplit('.', 1)[-1]}, whose batch and patch sizes do not "
            f"suit Sim-MPNet; train on nnU-Net's default plans (-p nnUNetPlans, made for {PLANNED_NETWORK})"
        )


def resize_note(patch_size: tuple[int, ...] | list[int]) -> str | None:
    """What Sim-MPNet does with a planned patch whose sides are not both encoder A's side
    (None when they are)."""
    patch = tuple(int(s) for s in patch_size)
    side = encoder_side(patch)
    if all(s == side for s in patch):
        return None
    return (
        f"patch {patch}: Sim-MPNet's encoder A runs at {side} x {side} (the longer side rounded up to a multiple of "
        f"{SIDE_STEP}); each patch is resized to it and the logits back"
    )


def encoder_side(patch_size: tuple[int, ...] | list[int]) -> int:
    """Encoder A's input side for a 2D patch ``(H, W)``: the longer side, rounded up to a
    multiple of 32."""
    if len(patch_size) != 2:
        raise InputError(
            f"Sim-MPNet is a 2D network: nnU-Net's 2d configuration plans (H, W) patches, got {tuple(patch_size)} "
            "(train the 2d configuration)"
        )
    longest = max(int(s) for s in patch_size)
    return SIDE_STEP * math.ceil(longest / SIDE_STEP)


class HeadSubsetLoss(nn.Module):
    """nnU-Net's loss over Sim-MPNet's heads: the mean, over the 15 non-empty subsets of the
    four heads, of ``criterion`` on the subset's summed logits (the paper's deep supervision,
    `DeepSupervisionLoss`, divided by the number of subsets).

    Args:
        criterion: nnU-Net's loss for one output, e.g. ``DC_and_CE_loss``.

    Shapes:
        ``heads``: a tuple of ``(B, C, H, W)`` logits (train mode) or one ``(B, C, H, W)``
        tensor (eval mode: the sum of the heads, scored as is); ``target``: ``(B, 1, H, W)``
        class ids, nnU-Net's layout.
    """

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        self.subsets = DeepSupervisionLoss(criterion=criterion)

    def forward(self, heads: tuple[torch.Tensor, ...] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(target, (list, tuple)):  # nnU-Net's multi-scale targets: the trainer turns them off
            raise InputError("HeadSubsetLoss takes the full-resolution target only (enable_deep_supervision = False)")
        if isinstance(heads, torch.Tensor):
            return self.subsets(heads, target)
        return self.subsets(heads, target) / (2 ** len(heads) - 1)


def network_from_description(description: dict[str, Any], source: str) -> SimMPNet:
    """A new (untrained) Sim-MPNet from the content of a ``simmpnet_network.json``."""
    if description.get("format") != NETWORK_FORMAT:
        raise CheckpointError(f"{source}: not a {NETWORK_FILE} of simmpnet's nnU-Net trainer")
    try:
        config = SimMPNetConfig.from_dict(description["config"])
        return SimMPNet(int(description["n_classes"]), int(description["in_channels"]), config)
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise CheckpointError(f"{source}: malformed {NETWORK_FILE} ({err})") from err


def network_of_checkpoint(payload: dict, fold_dir: Path, source: str) -> SimMPNet:
    """The (untrained) Sim-MPNet of an nnU-Net checkpoint of these trainers: from the
    description inside it, else from ``simmpnet_network.json`` next to it (checkpoints written
    before the description moved inside)."""
    description = (payload.get("init_args") or {}).get("simmpnet_network")
    if description is not None:
        return network_from_description(description, source)
    description_file = fold_dir / NETWORK_FILE
    if description_file.is_file():
        return network_from_description(json.loads(description_file.read_text()), str(description_file))
    raise CheckpointError(
        f"{source}: holds no Sim-MPNet description and has no {NETWORK_FILE} next to it: not written by simmpnet's "
        "nnU-Net trainer (for nnU-Net's own networks use nnU-Net's predictor)"
    )


def load_simmpnet(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> SimMPNet:
    """The Sim-MPNet of a checkpoint written by one of these trainers (``fold_N/checkpoint_final.pth``,
    ``checkpoint_best.pth`` or ``checkpoint_latest.pth``), memory banks included, in ``eval()``
    mode on ``device``.

    The network expects nnU-Net's preprocessing (the plans' normalisation and spacing) and
    the patch size it was trained on; ``simmpnet nnunet predict`` applies both.  Its
    `save_pretrained` folder loads with `SimMPNet.from_pretrained`.

    Raises:
        CheckpointError: the file is not such a checkpoint (no description of the network
            inside it or next to it), or the description does not fit its weights.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "network_weights" not in payload:
        raise CheckpointError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    model = network_of_checkpoint(payload, path.parent, str(path))
    model.load_weights(payload["network_weights"], str(path))
    # nnU-Net trains on patches at the plans' spacing, not on resized slices
    model.preprocessing = Preprocessing(model.config.img_size_a, model.in_channels, trained_on="native-crops")
    return model.to(device).eval()


class nnUNetTrainerSimMPNet(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming of trainers
    """nnU-Net's trainer with Sim-MPNet ``paper`` as the network and nnU-Net's SGD schedule
    (module docstring: what differs from ``nnUNetTrainer``).

    Knobs, as class attributes (nnU-Net's way: one subclass per setting, so that the results
    folder, named after the class, tells runs apart): `variant`, `paper_optimizer`.
    ``num_epochs`` and ``num_iterations_per_epoch`` may be set on an instance before
    `initialize` (``simmpnet nnunet train --epochs --iterations``).
    """

    #: Sim-MPNet variant (`simmpnet.models.VARIANTS`).
    variant: str = "paper"
    #: The paper's AdamW (lr 1e-4, weight decay 1e-4, constant) instead of nnU-Net's SGD.
    paper_optimizer: bool = False
    #: ``num_epochs`` of a short-run variant (None: nnU-Net's 1000).
    run_epochs: int | None = None

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ) -> None:
        check_plans(plans, configuration)  # before nnU-Net creates the fold's folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.run_epochs is not None:
            self.num_epochs = self.run_epochs
        if self.label_manager.has_regions:
            raise InputError(
                "dataset.json defines regions (overlapping, sigmoid outputs); Sim-MPNet's heads are softmax classes: "
                "train it on a dataset with plain labels"
            )
        encoder_side(self.configuration_manager.patch_size)  # a 2D configuration, checked before any work
        # The loader yields the full-resolution target only; the four heads are mapped onto
        # nnU-Net's loss by HeadSubsetLoss.
        self.enable_deep_supervision = False
        if self.paper_optimizer:
            self.initial_lr = 1e-4
            self.weight_decay = 1e-4
        self.warmup_iters: int | None = None  # -> initialize
        self.wld: WLDSchedule | None = None  # -> initialize
        self._finite_losses: list[float] = []

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
        warmup_iters: int | None = None,
    ) -> nn.Module:
        """Sim-MPNet of `variant` for the planned patch.  ``enable_deep_supervision`` is
        ignored: the four heads are returned in ``train()`` mode, their sum in ``eval()``
        mode.  ``warmup_iters``: the DMW-LA warm-up (default: the variant's)."""
        patch = tuple(configuration_manager.patch_size)
        side = encoder_side(patch)
        note = resize_note(patch)
        if note:
            logger.info("%s", note)
        overrides: dict[str, Any] = {"img_size_a": side, "img_size_b": side * 7 // 8}
        if warmup_iters is not None:
            overrides["warmup_iters"] = warmup_iters
        return SimMPNet.from_variant(cls.variant, num_output_channels, num_input_channels, **overrides)

    def run_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return int(self.num_epochs) * int(self.num_iterations_per_epoch)

    def initialize(self) -> None:
        if not self.was_initialized:
            variant_warmup = VARIANTS[self.variant].encoder_memory.warmup_iters
            self.warmup_iters = scaled_warmup(variant_warmup, self.run_steps())
            # nnU-Net calls build_network_architecture with the plans only; the warm-up
            # depends on the run's length.
            self.build_network_architecture = functools.partial(
                type(self).build_network_architecture, warmup_iters=self.warmup_iters
            )
        super().initialize()
        # In every checkpoint: nnU-Net saves init_args, and a zipped model folder keeps nothing else.
        self.my_init_kwargs["simmpnet_network"] = self.network_description()
        if self.wld is None:
            self.wld = WLDSchedule(self.simmpnet.dmwla_blocks("encoder"), start_epoch=scaled_wld_start(self.num_epochs))
            self.print_to_log_file(
                f"Sim-MPNet {self.variant}: DMW-LA warm-up {self.warmup_iters} optimiser steps, W-LD from epoch "
                f"{self.wld.start_epoch}, {'AdamW (paper)' if self.paper_optimizer else 'SGD (nnU-Net)'}"
            )
            note = resize_note(self.configuration_manager.patch_size)
            if note:
                self.print_to_log_file(note)

    def network_description(self) -> dict[str, Any]:
        """The exact architecture of the network (what ``simmpnet_network.json`` holds)."""
        return {
            "format": NETWORK_FORMAT,
            "version": 1,
            "trainer": type(self).__name__,
            "variant": self.variant,
            "n_classes": self.simmpnet.n_classes,
            "in_channels": self.simmpnet.in_channels,
            "config": self.simmpnet.config.to_dict(),
        }

    @property
    def simmpnet(self) -> SimMPNet:
        """The Sim-MPNet inside nnU-Net's DDP wrapper (nothing compiles it: `_do_i_compile`)."""
        return self.network.module if self.is_ddp else self.network

    def _do_i_compile(self) -> bool:
        return False

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Nothing to switch: Sim-MPNet returns its heads in ``train()`` and their sum in
        ``eval()`` mode."""

    def _build_loss(self) -> nn.Module:
        # With enable_deep_supervision False, nnU-Net's loss for one full-resolution output.
        return HeadSubsetLoss(super()._build_loss())

    def configure_optimizers(self):
        if not self.paper_optimizer:
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        # nnU-Net steps its scheduler every epoch; exponent 0 keeps the rate constant.
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.local_rank == 0:
            description = self.network_description()
            target = Path(self.output_folder) / NETWORK_FILE
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(description, indent=2) + "\n")
            tmp.replace(target)

    # ----------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._finite_losses = []

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        # BatchNorm statistics change in the forward itself: kept to undo a skipped step.
        norm_state = [(buffer, buffer.clone()) for buffer in self._norm_buffers]
        amp = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()
        with amp:
            loss = self.loss(self.network(data), target)
        # The backward is queued before the loss is read, so that the device does not idle
        # while the host launches it; a skipped step drops its gradients unused.
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        value = float(loss.detach())
        # Every process skips or steps together (a lone skip would leave the others waiting
        # in the memory commit's collective).
        finite = math.isfinite(mean_over_ranks(value, self.device) if self.is_ddp else value)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.simmpnet.discard_memory()
            with torch.no_grad():
                for buffer, saved in norm_state:
                    buffer.copy_(saved)
            self.print_to_log_file(f"non-finite loss ({value}): step skipped, weights and memory unchanged")
            return {"loss": np.array(value)}
        if self.grad_scaler is not None:
            scale = self.grad_scaler.get_scale()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
            # The scaler lowers its scale exactly when it skipped the step (inf/NaN gradients).
            stepped = self.grad_scaler.get_scale() >= scale
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
            stepped = True
        if stepped:
            self.simmpnet.commit_memory(gather_cat if self.is_ddp else None)
            self._finite_losses.append(value)
        else:
            self.simmpnet.discard_memory()
        return {"loss": np.array(value)}

    @functools.cached_property
    def _norm_buffers(self) -> list[torch.Tensor]:
        """The BatchNorm statistics of the network (found once: the network is built once)."""
        return [
            buffer
            for module in self.simmpnet.modules()
            if isinstance(module, nn.modules.batchnorm._NormBase)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
            if buffer is not None
        ]

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        if self.wld is None:
            return
        losses = self._finite_losses
        if self.is_ddp:
            import torch.distributed as dist

            gathered: list[list[float]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, losses)
            losses = [v for rank in gathered for v in rank]
        if losses:
            k = self.wld.step(float(np.mean(losses)), self.current_epoch)
            self.print_to_log_file(f"W-LD: K = {k}")

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # K is a buffer of the blocks (restored with the weights); W-LD's previous loss is the
        # last epoch's training loss, which nnU-Net's logger restored.
        losses = self.logger.get_value("train_losses", step=None)
        if self.wld is not None and losses and math.isfinite(float(losses[-1])):
            self.wld.previous_loss = float(losses[-1])
            self.wld.current_k = int(self.wld.blocks[0].update_count) if self.wld.blocks else self.wld.default


class nnUNetTrainerSimMPNetTiny(nnUNetTrainerSimMPNet):  # noqa: N801
    """Sim-MPNet ``tiny`` (for CPUs) with nnU-Net's SGD schedule."""

    variant = "tiny"


class nnUNetTrainerSimMPNet_AdamW(nnUNetTrainerSimMPNet):  # noqa: N801
    """Sim-MPNet ``paper`` with the paper's optimiser (AdamW 1e-4, weight decay 1e-4, constant)."""

    paper_optimizer = True


class nnUNetTrainerSimMPNetTiny_AdamW(nnUNetTrainerSimMPNet):  # noqa: N801
    """Sim-MPNet ``tiny`` with the paper's optimiser."""

    variant = "tiny"
    paper_optimizer = True


def _short_run(base: type[nnUNetTrainerSimMPNet], epochs: int) -> type[nnUNetTrainerSimMPNet]:
    name = f"{base.__name__}_{'1epoch' if epochs == 1 else f'{epochs}epochs'}"
    doc = f"{base.__doc__.splitlines()[0]} ({epochs} epoch{'s' if epochs > 1 else ''}, as nnU-Net's own short runs)"
    return type(name, (base,), {"run_epochs": epochs, "__doc__": doc, "__module__": __name__, "__qualname__": name})


_BASES = (nnUNetTrainerSimMPNet, nnUNetTrainerSimMPNetTiny, nnUNetTrainerSimMPNet_AdamW, nnUNetTrainerSimMPNetTiny_AdamW)
#: The trainers by name, as ``-tr`` / ``--trainer`` take them: the four, and the short-run
#: variants of each (`SHORT_RUN_EPOCHS`).
TRAINERS: dict[str, type[nnUNetTrainerSimMPNet]] = {
    cls.__name__: cls for base in _BASES for cls in (base, *(_short_run(base, n) for n in SHORT_RUN_EPOCHS))
}
# The generated variants are module attributes too, so that they import and pickle by name.
globals().update(TRAINERS)
