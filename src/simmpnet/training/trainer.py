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

The run's settings are `simmpnet.training.config`; the run folder, the checkpoint's RNG state
and identity check and the log rewind `simmpnet.training.checkpointing`; the batches and
augmentation draws of an epoch `simmpnet.training.samples`.
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
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import TRAIN_FORMAT, save_checkpoint
from ..device import resolve_device
from ..data.layouts import open_layout
from ..errors import InputError, SimMPNetError
from ..evaluation.evaluate import evaluate_volumes
from ..files import atomic_write
from ..models import SimMPNet, WLDSchedule
from ..models.factory import build_model, model_from_payload, model_payload
from ..precision import set_island_precision
from . import distributed
from .checkpointing import (
    RUN_FILES,
    _plain,
    check_run_folder,
    read_training_checkpoint,
    restore_rng_state,
    rewind_log,
    rng_state,
)
from .config import DEFAULT_PEER_SIZE, TrainConfig, _memory_parts, _resolve_amp, _variant_warmup
from .losses import DeepSupervisionLoss
from .plan import plan_run
from .samples import _AugmentedSlices, epoch_batches
from .tensorboard import TensorBoardLog

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "Trainer", "TrainingError"]


class TrainingError(SimMPNetError):
    """Training cannot go on (e.g. the loss keeps being NaN)."""


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
            self.input_size = DEFAULT_PEER_SIZE
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
        set_island_precision(self.model, config.amp_islands)
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
        return {
            "format": TRAIN_FORMAT,
            "version": 1,
            "model": model_payload(self.model, self.input_size),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "wld": self.wld.state_dict() if self.wld else None,
            "state": dict(self.state),
            "rng": rng_state(self.device, self.dist.enabled),
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
        payload = read_training_checkpoint(path, self.config.model_identity())
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
        restore_rng_state(payload["rng"], self.device, self.dist.enabled)
        if self.dist.is_main and path.resolve().parent == self.output_dir.resolve():
            rewind_log(self.output_dir / "log.jsonl", self.state["global_step"], self.state["epoch"])
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

    # ------------------------------------------------------------------ loop
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
            batches = epoch_batches(len(self.train_set), cfg.batch_size, self.steps_per_epoch, cfg.seed, epoch)
            batches = batches[self.state["batch_in_epoch"] :]
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
        amp = {None: "fp32", torch.bfloat16: f"bf16 autocast ({cfg.amp_islands} islands)", torch.float16: "fp16 autocast"}[self.amp_dtype]
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
        from ..evaluation.figures import plot_curves

        plot_curves(log, self.output_dir / "curves.png")
