"""The two encoders of Sim-MPNet and the image injection they share (docs/method.md).

Encoder A is a timm MaxViT whose stem and stages run one after the other with the image
re-injected after each stage, in line: the injected feature of stage i is the input of stage
i + 1.  Its last stage also produces a gate that re-weights the image for encoder B.  Encoder B
is built from overlapping patch embeddings and DMW-LA blocks, with DS-GIM after each block of
its third stage, and the same in-line injection.  Without encoder A (an ablation),
`backbone_channels` gives encoder B the widths encoder A would have had.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ..errors import CheckpointError, InputError

__all__ = ["ImageInjection", "MaxViTEncoder", "MemoryEncoder", "backbone_channels"]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def backbone_channels(backbone: str) -> list[int]:
    """The channels of the four stages of the timm model ``backbone`` (the widths of
    `MaxViTEncoder`), read from a copy built on the meta device: no weights are
    allocated or initialised.

    Raises:
        CheckpointError: timm cannot build ``backbone``.
    """
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    except (RuntimeError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot build backbone {backbone!r}: {err}") from err
    return list(model.feature_info.channels())


class ImageInjection(nn.Module):
    """``f + sigmoid(f) * conv1x1(resize(image, size(f)))``: re-inject the image into a feature map."""

    def __init__(self, image_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(image_channels, channels, 1)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return features + torch.sigmoid(features) * self.proj(resize(image, features.shape[-2:]))


class MaxViTEncoder(nn.Module):
    """Encoder A: a timm MaxViT backbone with image injection after each of its four stages.

    timm builds the backbone (``features_only``, so its weights load as timm's and no
    classifier head is kept), but this module runs the stem and the stages itself: the
    injected output of stage i feeds stage i + 1, as in the authors' network.  timm's own
    ``features_only`` forward would pass the un-injected stage output on, a different function.

    Args:
        backbone: timm model name (e.g. ``maxxvit_rmlp_small_rw_256``).
        img_size: input side the backbone is built for: a positive multiple of 32, because
            MaxViT cuts every stage into windows (and grids) of ``img_size / 32`` pixels.
        pretrained: ``False``, ``True`` (timm's weights, needs network access) or a path to a
            local timm checkpoint of that backbone.

    Shapes:
        ``(B, 3, S, S) -> [(B, C_i, S / 2^(i+1), S / 2^(i+1)) for i = 1..4]``.
    """

    def __init__(self, backbone: str, img_size: int, pretrained: bool | str | Path = False) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 32:
            # timm would only fail at the first forward, deep inside a window partition
            raise InputError(
                f"encoder A's img_size must be a positive multiple of 32 (MaxViT cuts each stage "
                f"into windows of img_size / 32 pixels), got {img_size}; e.g. 96, 128, 160 or 256"
            )
        kwargs: dict = {"features_only": True, "out_indices": (1, 2, 3, 4), "img_size": img_size}
        if isinstance(pretrained, (str, Path)):
            path = Path(pretrained)
            if not path.is_file():
                raise CheckpointError(f"{path}: pretrained backbone weights not found")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        try:
            self.backbone = timm.create_model(backbone, pretrained=bool(pretrained), **kwargs)
        except (RuntimeError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot build backbone {backbone!r} (pretrained={pretrained}): {err}") from err
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        self.injections = nn.ModuleList(ImageInjection(3, c) for c in self.channels)
        # The backbone's modules in order (stem, stages); the ones whose outputs timm would
        # return are each followed by an injection.
        self._tapped = [(name, name in self.backbone.return_layers) for name in self.backbone]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        x = image
        for name, tapped in self._tapped:
            x = self.backbone[name](x)
            if tapped:
                x = self.injections[len(features)](x, image)
                features.append(x)
        return features


class PatchEmbedding(nn.Module):
    """Overlapping patch embedding: strided conv, then LayerNorm over channels with eps 1e-5
    (``torch.nn.LayerNorm``'s default, which the authors use; timm's ``LayerNorm2d`` defaults
    to 1e-6)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
        self.norm = LayerNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class MemoryEncoder(nn.Module):
    """Encoder B: patch embedding, DMW-LA blocks (with DS-GIM in stage 3) and image injection.

    Args:
        widths: channels of the four stages.
        depths: DMW-LA blocks per stage.
        make_block: builds a DMW-LA block (or the block that replaces it) for a channel count.
        dsgim_stage: index of the stage whose blocks are each followed by DS-GIM (2).
        make_dsgim: builds a DS-GIM for a given channel count; ``None``: no DS-GIM, the blocks
            of that stage follow one another directly.
        share_dsgim: one DS-GIM instance for all blocks of that stage (the authors' choice).

    Shapes:
        ``(B, 3, S, S) -> [(B, widths[i], ~S / 2^(i+2), ...) for i = 0..3]``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        make_block: Callable[[int], nn.Module],
        make_dsgim: Callable[[int], nn.Module] | None,
        dsgim_stage: int = 2,
        share_dsgim: bool = True,
    ) -> None:
        super().__init__()
        kernels, strides = (7, 3, 3, 3), (4, 2, 2, 2)
        in_channels = [3, *widths[:-1]]
        self.embeddings = nn.ModuleList(
            PatchEmbedding(i, o, k, s) for i, o, k, s in zip(in_channels, widths, kernels, strides)
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(make_block(width) for _ in range(depth)) for width, depth in zip(widths, depths)
        )
        self.dsgim_stage = dsgim_stage
        n_dsgim = 0 if make_dsgim is None else 1 if share_dsgim else depths[dsgim_stage]
        self.dsgims = nn.ModuleList(make_dsgim(widths[dsgim_stage]) for _ in range(n_dsgim))
        self.injections = nn.ModuleList(ImageInjection(3, w) for w in widths)

    def forward(self, image: torch.Tensor, injected: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Args: ``image`` the input of the first patch embedding; ``injected`` the image that
        is re-injected after each stage (defaults to ``image``; Sim-MPNet passes the gated image
        at encoder A's size, as the authors do)."""
        injected = image if injected is None else injected
        features = []
        x = image
        for index, (embed, blocks, inject) in enumerate(zip(self.embeddings, self.stages, self.injections)):
            x = embed(x)
            for depth, block in enumerate(blocks):
                x = block(x)
                if index == self.dsgim_stage and len(self.dsgims):
                    x = self.dsgims[depth % len(self.dsgims)](x)
            x = inject(x, injected)
            features.append(x)
        return features

