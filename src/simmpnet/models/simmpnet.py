"""Sim-MPNet: assembly of the two encoders, the fusion, the decoder and the four heads, and its
named variants (docs/method.md)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import MODEL_FORMAT as CHECKPOINT_FORMAT
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import CheckpointError, InputError
from ..precision import race_free_attention
from ..pretrained import (
    Preprocessing,
    load_pretrained,
    model_from_checkpoint,
    preprocessing_of_payload,
    save_pretrained,
)
from .decoder import MemoryDecoder
from .dmwla import DMWLA, Gather, NonLocalAttention
from .dsgim import DSGIM, decay_coefficient
from .encoders import MaxViTEncoder, MemoryEncoder, backbone_channels, resize

logger = logging.getLogger(__name__)

__all__ = ["ATTENTION_KINDS", "MemoryConfig", "SimMPNetConfig", "SimMPNet", "VARIANTS"]


#: What the attention blocks of encoder B or of the decoder are (``encoder_attention``,
#: ``decoder_attention``): DMW-LA with its prototype memory, the same block without the memory
#: (non-local attention), or no attention (the block's residual alone: an identity).
ATTENTION_KINDS = ("memory", "plain", "none")


@dataclass(frozen=True)
class MemoryConfig:
    """Hyper-parameters of the DMW-LA blocks of one part of the network (docs/method.md, "DMW-LA")."""

    num_k: int = 9
    feature_dim: int = 256
    pool_size: int = 100
    warmup_iters: int = 2000
    memory_momentum: float = 0.3
    key_momentum: float = 0.95
    update_count: int = 50


@dataclass(frozen=True)
class SimMPNetConfig:
    """Architecture of a Sim-MPNet.  Widths of encoder B follow those of the backbone.

    Attributes:
        backbone: timm MaxViT name of encoder A.
        img_size_a: input side of encoder A (paper 256).
        img_size_b: input side of encoder B (paper 224).
        depths: DMW-LA blocks per stage of encoder B.
        encoder_memory: DMW-LA settings of encoder B (the per-dataset n_k and d).
        decoder_memory: DMW-LA settings of the decoder (n_k 10, d 128).
        attention_scale: factor of the global-read logits (the authors use 1: no scaling).
        dsgim_window, dsgim_top_windows, dsgim_gamma: DS-GIM window side, coherent windows, decay.
        dsgim_masks: ``"method"`` or ``"authors"`` (their code's near set and -100 fill, to
            measure what that bug does; see `simmpnet.models.dsgim`).
        share_dsgim: one DS-GIM for all blocks of stage 3 (the authors' code) or one per block.

    Ablation switches (docs/method.md, "Ablation switches"); the defaults are the paper's network:
        dsgim: ``False`` removes DS-GIM: the blocks of encoder B's third stage follow one
            another directly.
        encoder_attention, decoder_attention: the attention blocks of encoder B and of the
            decoder, one of `ATTENTION_KINDS`: ``"memory"`` (DMW-LA), ``"plain"``
            (non-local attention at the part's ``feature_dim``, no prototype memory, no W-LD)
            or ``"none"`` (no attention block: its input passes on unchanged).
        encoder_a: ``False`` removes encoder A and its gate: encoder B alone sees the image
            (un-gated) and its features reach the decoder without encoder A's added.
    """

    backbone: str = "maxxvit_rmlp_small_rw_256"
    img_size_a: int = 256
    img_size_b: int = 224
    depths: tuple[int, ...] = (2, 2, 6, 2)
    encoder_memory: MemoryConfig = field(default_factory=lambda: MemoryConfig(num_k=9, feature_dim=256))
    decoder_memory: MemoryConfig = field(default_factory=lambda: MemoryConfig(num_k=10, feature_dim=128))
    attention_scale: float = 1.0
    dsgim_window: int = 7
    dsgim_top_windows: int = 2
    dsgim_gamma: float = decay_coefficient()
    dsgim_masks: str = "method"
    share_dsgim: bool = True
    dsgim: bool = True
    encoder_attention: str = "memory"
    decoder_attention: str = "memory"
    encoder_a: bool = True

    def __post_init__(self) -> None:
        for key in ("dsgim", "encoder_a"):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise InputError(f"Sim-MPNet config key {key} must be true or false, got {value!r}")
        for key in ("encoder_attention", "decoder_attention"):
            value = getattr(self, key)
            if value not in ATTENTION_KINDS:
                raise InputError(
                    f"Sim-MPNet config key {key} must be one of {', '.join(ATTENTION_KINDS)}, got {value!r}"
                )

    @property
    def memory_parts(self) -> tuple[str, ...]:
        """The parts (``"encoder"``, ``"decoder"``) whose blocks are DMW-LA with a memory."""
        return tuple(
            part
            for part, kind in (("encoder", self.encoder_attention), ("decoder", self.decoder_attention))
            if kind == "memory"
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["depths"] = list(self.depths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimMPNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown Sim-MPNet config keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("encoder_memory", "decoder_memory"):
            if key in values and isinstance(values[key], dict):
                values[key] = _memory_config(values[key])
        if "depths" in values:
            values["depths"] = tuple(int(d) for d in values["depths"])
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> SimMPNetConfig:
        """A copy with fields replaced.  Besides the fields of this class, memory settings may
        be given as ``encoder_<name>`` / ``decoder_<name>`` (e.g. ``encoder_num_k=4``) or as a
        bare `MemoryConfig` name (e.g. ``warmup_iters=50``), which sets both parts."""
        memory_fields = {f.name for f in dataclasses.fields(MemoryConfig)}
        top: dict[str, Any] = {}
        part: dict[str, dict[str, Any]] = {"encoder_memory": {}, "decoder_memory": {}}
        for key, value in overrides.items():
            if key in ("encoder_memory", "decoder_memory") and isinstance(value, dict):
                part[key].update(value)
            elif key in memory_fields:
                part["encoder_memory"][key] = value
                part["decoder_memory"][key] = value
            elif key.startswith(("encoder_", "decoder_")) and key.split("_", 1)[1] in memory_fields:
                side, name = key.split("_", 1)
                part[f"{side}_memory"][name] = value
            else:
                top[key] = value
        config = SimMPNetConfig.from_dict({**self.to_dict(), **top})
        for key, changes in part.items():
            if changes:
                merged = {**dataclasses.asdict(getattr(config, key)), **changes}
                config = dataclasses.replace(config, **{key: _memory_config(merged)})
        return config


def _memory_config(values: dict[str, Any]) -> MemoryConfig:
    known = {f.name for f in dataclasses.fields(MemoryConfig)}
    unknown = set(values) - known
    if unknown:
        raise InputError(f"unknown memory config keys: {sorted(unknown)}")
    return MemoryConfig(**values)


VARIANTS: dict[str, SimMPNetConfig] = {
    # The paper's network (docs/method.md): 256/224 inputs, MaxxViT-small, 96..768.
    "paper": SimMPNetConfig(),
    # For CPUs: the smallest timm MaxViT (pico, 32..256 channels), one DMW-LA block per stage
    # (two in stage 3), narrower memories and 128 px inputs.
    "tiny": SimMPNetConfig(
        backbone="maxvit_rmlp_pico_rw_256",
        img_size_a=128,
        img_size_b=112,
        depths=(1, 1, 2, 1),
        encoder_memory=MemoryConfig(num_k=9, feature_dim=64),
        decoder_memory=MemoryConfig(num_k=10, feature_dim=32),
    ),
}


class SimMPNet(nn.Module):
    """Sim-MPNet for 2D (slice-wise) segmentation.

    Args:
        n_classes: output classes, background included (>= 2).
        in_channels: image channels; anything but 3 first goes through conv1x1(->3)+BN+ReLU.
        config: the architecture (see `VARIANTS`).
        pretrained: backbone weights: ``False``, ``True`` (timm's, needs network) or a path to
            a local timm checkpoint of the backbone.

    Shapes:
        input ``(B, in_channels, H, W)``, any ``H, W`` (it is resized to the encoders' sizes).
        ``train()`` mode: a tuple of four ``(B, n_classes, H, W)`` head logits (deepest head
        first).  ``eval()`` mode: their sum, one ``(B, n_classes, H, W)`` tensor.

    Trained models: `save_pretrained` / `from_pretrained` (``config.json`` +
    ``model.safetensors``; ``from_pretrained`` also reads the ``last.pt`` / ``best.pt`` of
    ``simmpnet train``) and `predict` (raw images or volumes to label maps, with the
    `preprocessing` the model was trained with).

    Training: a ``train()`` forward only records the memory changes of the DMW-LA blocks;
    call `commit_memory` after each optimisation step (``loss.backward();
    optimizer.step(); model.commit_memory()``), as `simmpnet.training.Trainer` does.

    Examples:
        >>> model = SimMPNet.from_variant("tiny", n_classes=9)
        >>> model.eval()(torch.randn(1, 1, 128, 128)).shape
        torch.Size([1, 9, 128, 128])
    """

    #: The architecture's config class (``config.json`` of `save_pretrained` holds one).
    config_class = SimMPNetConfig

    def __init__(
        self,
        n_classes: int,
        in_channels: int = 1,
        config: SimMPNetConfig | None = None,
        pretrained: bool | str | os.PathLike = False,
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise InputError(f"n_classes must be at least 2 (background and one class), got {n_classes}")
        if in_channels < 1:
            raise InputError(f"in_channels must be positive, got {in_channels}")
        self.config = config = config or SimMPNetConfig()
        if len(config.depths) != 4:
            raise InputError(f"depths needs four stages, got {config.depths}")
        size_b = config.img_size_b
        if isinstance(size_b, bool) or not isinstance(size_b, int) or size_b < 1:
            raise InputError(f"encoder B's img_size_b must be a positive integer, got {size_b!r}")
        if not config.encoder_a:
            size_a = config.img_size_a
            if isinstance(size_a, bool) or not isinstance(size_a, int) or size_a < 1:
                raise InputError(f"the input side img_size_a must be a positive integer, got {size_a!r}")
            if pretrained:
                raise InputError(
                    "pretrained weights are encoder A's backbone weights, and encoder_a is false (no encoder A)"
                )
        self.n_classes = n_classes
        self.in_channels = in_channels
        self.stem = (
            None
            if in_channels == 3
            else nn.Sequential(nn.Conv2d(in_channels, 3, 1), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
        )
        self.encoder_a: MaxViTEncoder | None = None
        self.gate: nn.Conv2d | None = None
        if config.encoder_a:
            self.encoder_a = MaxViTEncoder(config.backbone, config.img_size_a, pretrained)
            widths = self.encoder_a.channels
            self.gate = nn.Conv2d(widths[-1], 1, 1)
            # Zero-initialised, so that the gate starts at p = 0.5 for every pixel and learns
            # from there.  With PyTorch's default initialisation the large stage-4 features put
            # the gate logits where the sigmoid is flat, and a gate trained from scratch can
            # close for good: encoder B then receives no image at all (docs/method.md, "The gate").
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        else:
            widths = backbone_channels(config.backbone)

        def make_block(attention: str, memory: MemoryConfig, channels: int) -> nn.Module:
            if attention == "memory":
                return DMWLA(channels, scale=config.attention_scale, **dataclasses.asdict(memory))
            if attention == "plain":
                return NonLocalAttention(channels, memory.feature_dim, scale=config.attention_scale)
            # The block is x + o(read): without its attention only the residual x is left.
            return nn.Identity()

        self.encoder_b = MemoryEncoder(
            widths,
            config.depths,
            make_block=partial(make_block, config.encoder_attention, config.encoder_memory),
            make_dsgim=partial(
                DSGIM,
                window=config.dsgim_window,
                top_windows=config.dsgim_top_windows,
                gamma=config.dsgim_gamma,
                masks=config.dsgim_masks,
            )
            if config.dsgim
            else None,
            share_dsgim=config.share_dsgim,
        )
        self.decoder = MemoryDecoder(
            widths, make_block=partial(make_block, config.decoder_attention, config.decoder_memory)
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, n_classes, 1) for c in reversed(widths))
        #: What `predict` does to an input (see `simmpnet.Preprocessing`); a new
        #: network: its encoder-A size, percentile normalisation, no class names, "labels".
        self.preprocessing = Preprocessing(input_size=config.img_size_a, in_channels=in_channels)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_variant(
        cls,
        name: str,
        n_classes: int,
        in_channels: int = 1,
        pretrained: bool | str | os.PathLike = False,
        **overrides: Any,
    ) -> SimMPNet:
        """Build a named variant (``"paper"`` or ``"tiny"``), optionally with config overrides
        (see `SimMPNetConfig.with_overrides`).

        The ablation switches are overrides too (docs/method.md, "Ablation switches"); each
        removes or replaces a module, so the parameters and the output change:

        * ``dsgim=False``: no DS-GIM; the blocks of encoder B's third stage follow one another.
        * ``encoder_attention`` / ``decoder_attention``: ``"memory"`` (default, DMW-LA with its
          prototype memory), ``"plain"`` (the same block as non-local attention: no memory, no
          warm-up, no W-LD) or ``"none"`` (no attention block: its input passes on unchanged;
          the decoder keeps its conv blocks and skip attention).
        * ``encoder_a=False``: no encoder A, no gate: encoder B alone encodes the (un-gated)
          image, and the decoder receives encoder B's features only.

        Shapes: the network maps ``(B, in_channels, H, W)`` to ``(B, n_classes, H, W)`` logits
        (four heads in ``train()`` mode) whatever the switches.

        Raises:
            InputError: an unknown variant, config key or switch value (naming the allowed ones).

        Examples:
            >>> model = SimMPNet.from_variant("tiny", n_classes=3, dsgim=False, decoder_attention="plain")
            >>> len(model.dmwla_blocks("decoder")), len(model.encoder_b.dsgims)
            (0, 0)
        """
        if name not in VARIANTS:
            raise InputError(f"unknown Sim-MPNet variant {name!r}; choose one of {sorted(VARIANTS)}")
        config = VARIANTS[name].with_overrides(**overrides) if overrides else VARIANTS[name]
        return cls(n_classes, in_channels, config, pretrained)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if x.ndim != 4:
            raise InputError(f"Sim-MPNet expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(
                f"Sim-MPNet was built for {self.in_channels} input channel(s), got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise InputError(f"Sim-MPNet expects a floating-point image, got {x.dtype}")
        with race_free_attention(x):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out_size = x.shape[-2:]
        if self.stem is not None:
            x = self.stem(x)
        size_a, size_b = self.config.img_size_a, self.config.img_size_b
        image = resize(x, (size_a, size_a))
        if self.encoder_a is None or self.gate is None:
            # encoder B alone: nothing gates its image, nothing is added to its features
            fused = self.encoder_b(resize(image, (size_b, size_b)), image)
        else:
            features_a = self.encoder_a(image)
            gated = image * resize(torch.sigmoid(self.gate(features_a[-1])), (size_a, size_a))
            features_b = self.encoder_b(resize(gated, (size_b, size_b)), gated)
            fused = [e + resize(f, e.shape[-2:]) for e, f in zip(features_b, features_a)]
        logits = tuple(resize(head(d), out_size) for head, d in zip(self.heads, self.decoder(fused)))
        if self.training:
            return logits
        return functools.reduce(torch.add, logits)  # no stacked copy of the heads

    # ----------------------------------------------------------------- memory
    def dmwla_blocks(self, part: str = "all") -> list[DMWLA]:
        """The DMW-LA blocks of ``"encoder"`` (encoder B, shallow to deep), ``"decoder"``
        (deep to shallow) or ``"all"`` (both, in that order).  A part whose attention is
        ``"plain"`` or ``"none"`` (see `SimMPNetConfig`) has no memory: it has none."""
        encoder = [block for stage in self.encoder_b.stages for block in stage if isinstance(block, DMWLA)]
        decoder = [block for block in self.decoder.blocks if isinstance(block, DMWLA)]
        parts = {"encoder": encoder, "decoder": decoder, "all": encoder + decoder}
        if part not in parts:
            raise ValueError(f"part must be one of {sorted(parts)}, got {part!r}")
        return parts[part]

    @property
    def in_warmup(self) -> bool:
        """True while any DMW-LA block is still in warm-up."""
        return any(block.in_warmup for block in self.dmwla_blocks())

    def end_warmup(self) -> None:
        """Run the k-means start of every block that is still in warm-up."""
        for block in self.dmwla_blocks():
            if block.in_warmup:
                block.end_warmup()

    def commit_memory(self, gather: Gather | None = None) -> int:
        """Apply the memory changes recorded by the last training forward (warm-up writes,
        k-means start, bank updates, momentum keys); returns how many blocks processed a change
        (see `DMWLA.commit_memory` for the changes dropped for non-finite candidates).

        A training forward never writes the memory banks itself: training code calls this
        after each optimisation step whose loss was finite (the trainer does), so that a NaN
        or Inf step never reaches the banks.  ``gather`` (distributed training) concatenates
        a tensor of every process in rank order, see `simmpnet.training.distributed`.
        Blocks are committed in the order the forward ran them.
        """
        return sum(block.commit_memory(gather) for block in self.dmwla_blocks())

    def take_dropped_memory_changes(self) -> int:
        """Memory changes dropped since the last call for non-finite candidate features, over
        all blocks (each logs its own warning).  One read from the device: call it at logging
        intervals."""
        blocks = self.dmwla_blocks()
        if not blocks:
            return 0
        if int(torch.stack([block.dropped_changes for block in blocks]).sum()) == 0:
            return 0
        return sum(block.take_dropped_changes() for block in blocks)

    def discard_memory(self) -> None:
        """Drop the memory changes recorded by the last training forward (a skipped step)."""
        for block in self.dmwla_blocks():
            block.discard_memory()

    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable-parameter counts per part (input stem and gate count with encoder A; with
        ``encoder_a`` false that entry is the stem alone)."""

        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        dsgim = count(self.encoder_b.dsgims)
        return {
            "encoder_a": count(self.stem, self.encoder_a, self.gate),
            "encoder_b": count(self.encoder_b) - dsgim,
            "dsgim": dsgim,
            "decoder": count(self.decoder),
            "heads": count(self.heads),
        }

    # ----------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write config, preprocessing and weights (memory banks included) to ``path``
        atomically, as one ``torch.save`` file (`save_pretrained` writes the folder form)."""
        payload = self.checkpoint_payload()
        payload["preprocessing"] = self.preprocessing.to_dict()
        return save_checkpoint(payload, path)

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "n_classes": self.n_classes,
            "in_channels": self.in_channels,
            "config": self.config.to_dict(),
            "state_dict": self.state_dict(),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str = "checkpoint") -> SimMPNet:
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: not a Sim-MPNet model checkpoint")
        try:
            config = SimMPNetConfig.from_dict(payload["config"])
            model = cls(int(payload["n_classes"]), int(payload["in_channels"]), config)
        except (KeyError, TypeError, InputError) as err:
            raise CheckpointError(f"{source}: malformed Sim-MPNet checkpoint ({err})") from err
        model.load_weights(payload["state_dict"], source)
        model.preprocessing = preprocessing_of_payload(payload, model, source)
        return model

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> SimMPNet:
        """Rebuild a model written by `save`, or the model of a ``last.pt`` / ``best.pt``
        of ``simmpnet train`` (its preprocessing from the training config).  The model is
        returned in ``train()`` mode, as a new module is; `from_pretrained` reads every
        form (folders and Hub ids too) and returns it in ``eval()`` mode."""
        return model_from_checkpoint(load_checkpoint(path, map_location), str(path), cls)

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        training_config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Path:
        """Write ``directory/config.json`` (architecture and `preprocessing`),
        ``directory/model.safetensors`` (weights and buffers, memory banks included; no
        optimiser) and the model card ``directory/README.md`` (intended use; the training
        config and the ``metrics.json`` of an evaluation when given), the Hugging Face Hub
        layout; returns the folder.  See `simmpnet.pretrained`."""
        return save_pretrained(self, directory, training=training_config, metrics=metrics)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> SimMPNet:
        """A trained model, in ``eval()`` mode on ``device``, with its `preprocessing`.

        ``source``: a folder of `save_pretrained` (or its ``config.json`` /
        ``.safetensors``), a ``last.pt`` / ``best.pt`` of ``simmpnet train``, a file of
        `save`, or a Hugging Face Hub id (``"user/repo"``; needs a network or the Hub
        cache; the other keyword arguments go to ``huggingface_hub.snapshot_download``).

        Raises:
            CheckpointError: naming what ``source`` is when it is not one of these (a
                TorchScript archive, an ONNX model, another model's files, a run folder), or
                why a Hub id could not be downloaded.

        Examples:
            >>> model = SimMPNet.from_pretrained("runs/brain/last.pt")  # doctest: +SKIP
            >>> labels = model.predict(volume)  # (D, H, W) raw intensities  # doctest: +SKIP
        """
        return load_pretrained(
            source,
            device=device,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            cls=cls,
        )

    def predict(
        self,
        image: Any,
        probabilities: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        *,
        intensity_window: tuple[float, float] | None = None,
        resample: str | None = None,
        volume: bool | None = None,
        inference: str = "resize",
        overlap: float = 0.5,
        precision: str = "fp32",
    ) -> Any:
        """Label map of a raw image or volume, as ``simmpnet predict`` computes it.

        See `simmpnet.predict.predict_array` (which this calls with
        `preprocessing`): ``image`` is a numpy ``(H, W)`` or ``(H, W, C)`` image or a
        ``(D, H, W)`` volume in raw intensities; returns ``uint8`` labels of the input's
        spatial shape, and with ``probabilities=True`` ``(labels, probabilities)``, the
        softmax probabilities class-first (``(C, H, W)`` or ``(C, D, H, W)``, float32).
        ``inference="sliding-window"`` predicts tiles of the input size at the image's own
        resolution (neighbours sharing ``overlap`` of a tile) instead of the paper's resize.
        ``precision="bf16"`` predicts under bf16 autocast with the global reads in bf16, ``"auto"``
        where the device has bf16 units (`simmpnet.precision`; default ``"fp32"``).
        The model is left as it was (mode, device, weights, memory banks, island precision).
        """
        from .inference import predict_array

        return predict_array(
            self,
            image,
            probabilities=probabilities,
            device=device,
            batch_size=batch_size,
            intensity_window=intensity_window,
            resample=resample,
            volume=volume,
            inference=inference,
            overlap=overlap,
            precision=precision,
        )

    def load_weights(self, state_dict: dict[str, torch.Tensor], source: str = "state_dict") -> None:
        """``load_state_dict`` (strict) with a clear error when the weights belong to another
        configuration."""
        try:
            self.load_state_dict(state_dict, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise CheckpointError(
                f"{source}: the weights were written for another configuration ({' '.join(first[:3])[:400]})"
            ) from err
