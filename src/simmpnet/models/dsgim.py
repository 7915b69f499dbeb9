"""DS-GIM: Double-Similarity Global Internal Enhancement Module (docs/method.md).

Cosine part: the ``r`` windows whose tokens are most alike (sum of pairwise cosine
similarities) are found; queries come from the image with those windows damped by ``gamma``,
keys from the image with the other windows damped.  Euclidean part: each row of the attention
scores is split at the median distance between the rows' mean scores into a far and a near
set, and the attention weights are the sum of one softmax per set.

Unlike the authors' version this works for any size (windows are padded), any channel count
and any batch size, and every sample of a batch is treated alike.

``masks="authors"`` reproduces, for measuring what it does, how the authors' code builds the
two softmaxes: their near set compares the 0/1 far mask (not the distances) with the row's
split point, so wherever that point is at least 1 the near set is the whole row; and masked
scores are filled with -100 rather than excluded, so an empty set still contributes a uniform
softmax, and a set whose scores all lie below -100 hands its weight to the masked entries.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["DSGIM", "DSGIM_MASKS", "decay_coefficient", "coherent_window_mask", "euclidean_split_weights"]

#: How the far and near softmaxes are masked: the method's, or the authors' code's.
DSGIM_MASKS = ("method", "authors")


def decay_coefficient(layer: int = 1, layers: int = 12) -> float:
    """Retention-style decay ``exp(-(0.25 - 2^(-2.5 - 5 i / layers)))``; the authors use ``i = 1``
    of 12 layers (about 0.889)."""
    return math.exp(-(0.25 - 2.0 ** (-2.5 - 5.0 * layer / layers)))


def coherent_window_mask(x: torch.Tensor, window: int, top: int) -> torch.Tensor:
    """Positions inside the ``top`` windows of highest internal cosine similarity.

    Args:
        x: ``(B, C, H, W)``.
        window: window side ``w``; the map is zero-padded to multiples of ``w``.
        top: number ``r`` of windows to select (at most the number of windows).

    Returns:
        ``(B, H, W)`` bool mask.
    """
    b, c, h, w = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    # In at least fp32 whatever the network's precision (the bf16 islands of
    # `simmpnet.precision` included): windows of alike tokens have close scores, and unit
    # vectors rounded to bf16 reorder them (docs/method.md, "Mixed precision").
    padded = F.pad(x.detach().to(torch.promote_types(x.dtype, torch.float32)), (0, pad_w, 0, pad_h))
    rows, cols = (h + pad_h) // window, (w + pad_w) // window
    tokens = padded.view(b, c, rows, window, cols, window).permute(0, 2, 4, 3, 5, 1)
    unit = F.normalize(tokens.reshape(b, rows * cols, window * window, c), dim=-1, eps=1e-8)
    # Sum over the upper triangle (diagonal included) of the cosine Gram matrix of a window,
    # without forming it: (sum of all entries + trace) / 2, and sum of all = |sum of units|^2.
    total = unit.sum(2).square().sum(-1)
    trace = unit.square().sum((-1, -2))
    score = (total + trace) / 2
    chosen = score.topk(min(top, rows * cols), dim=1).indices
    # A tensor source (not the scalar True) keeps torch.jit.trace / the ONNX exporter happy.
    selected = torch.zeros_like(score, dtype=torch.bool).scatter(1, chosen, torch.ones_like(chosen, dtype=torch.bool))
    grid = selected.view(b, rows, cols).repeat_interleave(window, 1).repeat_interleave(window, 2)
    return grid[:, :h, :w]


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # A finite fill keeps fully masked rows free of NaN (their weights are zeroed after).
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


def _authors_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Their code multiplies by the 0/1 mask and sets every resulting zero (a masked entry, or a
    # score that is exactly 0) to -100 before a softmax over the whole row.
    kept = scores * mask
    return torch.softmax(kept.masked_fill(kept == 0, -100.0), dim=-1)


def euclidean_split_weights(scores: torch.Tensor, masks: str = "method") -> torch.Tensor:
    """The Euclidean part of DS-GIM: attention weights from the scores ``A`` ``(B, N, N)``.

    ``s_i = mean_j A_ij`` and ``D_ij = |s_i - s_j|``; row ``i`` is split at its ``(N // 2)``-th
    largest distance into a far set (``D_ij`` at least that, plus the diagonal) and a near set
    (the rest); the weights are the softmax of ``A`` over the far set plus the softmax over the
    near set (an empty set adds nothing).  ``masks="authors"``: their code's sets and fill, see
    the module docstring.
    """
    n = scores.shape[-1]
    with torch.no_grad():
        row_mean = scores.mean(-1)
        distance = (row_mean[:, :, None] - row_mean[:, None, :]).abs()
        kth = n - max(n // 2, 1) + 1
        threshold = distance.kthvalue(kth, dim=-1, keepdim=True).values
        eye = torch.eye(n, dtype=torch.bool, device=scores.device)
        if masks == "method":
            far = (distance >= threshold) | eye
            near = ~far
        else:
            # their diagonal joins the far set by adding 10000 to its distance of 0
            far = distance + 10000.0 * eye >= threshold
            near = ~far | (threshold >= 1)
    if masks == "method":
        return _masked_softmax(scores, far) + _masked_softmax(scores, near)
    return _authors_softmax(scores, far) + _authors_softmax(scores, near)


class ConvBlock(nn.Module):
    """conv3x3-BN-ReLU twice: ``in -> mid -> out`` channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DSGIM(nn.Module):
    """Double-Similarity Global Internal Enhancement Module.

    Args:
        channels: ``C`` of input and output.
        window: window side for the cosine part (7).
        top_windows: number ``r`` of coherent windows (2).
        gamma: decay of the damped positions; 0 gives the authors' hard 0/1 masks.
        masks: ``"method"`` (docs/method.md) or ``"authors"``, their code's near set and -100
            fill (see the module docstring), for comparison only.

    Shapes:
        input and output ``(B, C, H, W)``; any ``H, W``.  There is no residual connection
        (as in the authors' network).
    """

    def __init__(
        self,
        channels: int,
        window: int = 7,
        top_windows: int = 2,
        gamma: float = decay_coefficient(),
        masks: str = "method",
    ) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"DSGIM needs at least 4 channels, got {channels}")
        if masks not in DSGIM_MASKS:
            raise ValueError(f"masks must be one of {list(DSGIM_MASKS)}, got {masks!r}")
        self.masks = masks
        self.channels = channels
        self.window = window
        self.top_windows = top_windows
        self.gamma = gamma
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Linear(channels, channels)
        self.refine = ConvBlock(channels, channels // 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise InputError(f"DSGIM expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        coherent = coherent_window_mask(x, self.window, self.top_windows).unsqueeze(1)
        damped = torch.tensor(self.gamma, dtype=x.dtype, device=x.device)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        query_weight = torch.where(coherent, damped, one)
        key_weight = torch.where(coherent, one, damped)
        q = self.query(x * query_weight).flatten(2).transpose(1, 2)  # (B, N, C)
        k = self.key(x * key_weight).flatten(2)  # (B, C, N)
        v = self.value(x).flatten(2).transpose(1, 2)
        weights = euclidean_split_weights(q @ k, self.masks)  # (B, N, N)
        out = self.proj(weights @ v)
        return self.refine(out.transpose(1, 2).reshape(b, c, h, w))
