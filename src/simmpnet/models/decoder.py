"""The DMW-LA decoder of Sim-MPNet (docs/method.md): channel and spatial attention on the
skip connections, a DMW-LA block and a conv block per level, deepest level first."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dsgim import ConvBlock

__all__ = ["ChannelAttention", "SpatialAttention", "UpBlock", "MemoryDecoder"]


class ChannelAttention(nn.Module):
    """``sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with a shared 1x1 bottleneck of ratio 16.

    Shapes: ``(B, C, H, W) -> (B, C, 1, 1)``.
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean((2, 3), keepdim=True)
        peak = x.amax((2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialAttention(nn.Module):
    """``sigmoid(conv7x7([mean_c(x), max_c(x)]))``.  Shapes: ``(B, C, H, W) -> (B, 1, H, W)``."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class UpBlock(nn.Module):
    """Nearest upsampling to the skip's size (x2 at paper sizes), then conv3x3-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class MemoryDecoder(nn.Module):
    """Decoder: ``d4 = ConvBlock(DMWLA(conv1x1(s4)))``; for the shallower levels
    ``u = Up(d)``, ``t = CA(u + s) * (u + s)``, ``t = SA(t) * t``, ``d = ConvBlock(DMWLA(u + t))``.

    Args:
        widths: channels of the fused features ``s1..s4`` (shallow to deep).
        make_block: builds a DMW-LA block for a channel count.

    Shapes:
        ``[s1, s2, s3, s4] -> [d4, d3, d2, d1]`` with the shapes of ``s4, s3, s2, s1``.
    """

    def __init__(self, widths: Sequence[int], make_block: Callable[[int], nn.Module]) -> None:
        super().__init__()
        deep_first = list(reversed(widths))
        self.entry = nn.Conv2d(deep_first[0], deep_first[0], 1)
        self.blocks = nn.ModuleList(make_block(c) for c in deep_first)
        self.convs = nn.ModuleList(ConvBlock(c, c, c) for c in deep_first)
        self.ups = nn.ModuleList(UpBlock(i, o) for i, o in zip(deep_first[:-1], deep_first[1:]))
        self.channel_attention = nn.ModuleList(ChannelAttention(c) for c in deep_first[1:])
        self.spatial_attention = SpatialAttention()

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        deep_first = list(reversed(skips))
        d = self.convs[0](self.blocks[0](self.entry(deep_first[0])))
        outputs = [d]
        for level, skip in enumerate(deep_first[1:], start=1):
            u = self.ups[level - 1](d, skip.shape[-2:])
            merged = u + skip
            t = self.channel_attention[level - 1](merged) * merged
            t = self.spatial_attention(t) * t
            d = self.convs[level](self.blocks[level](u + t))
            outputs.append(d)
        return outputs
