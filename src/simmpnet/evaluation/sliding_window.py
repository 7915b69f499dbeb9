"""Sliding-window prediction of 2D slices at their own resolution.

The alternative to the paper's resize (`simmpnet.evaluation.inference`) for images larger
than the network's input size, when the network was trained on crops at the data's native
resolution (nnU-Net-style data): nothing is resized, the network sees the pixels at the scale
it learnt.  MONAI's `monai.inferers.sliding_window_inference` does the tiling:

- tiles of ``input_size x input_size``, neighbours sharing ``overlap`` of a tile (0.5 by
  default, as nnU-Net and MONAI); the step is ``int(input_size * (1 - overlap))`` and the last
  tile of a row or column is moved back to end at the slice's border, so every tile lies inside;
- every tile's logits are weighted by a Gaussian centred on the tile (sigma an eighth of the
  tile, nnU-Net's ``compute_gaussian`` and MONAI's ``mode="gaussian"``; weights below 1e-3 of
  the centre's are raised to it), summed, and divided by the summed weights.  The logits are
  averaged, not the softmax probabilities, as nnU-Net does; the probabilities are the softmax
  of the averaged logits, so that their argmax is the label map;
- a slice smaller than a tile in a dimension is padded on both sides with
  `PAD_VALUE` (0: the bottom of the normalised ``[0, 1]`` intensity range, the
  background of the training images) and the prediction cropped back.

The logits of each forward are upcast to fp32 (those of bf16 inference come out in bf16) before
they are weighted and blended.

The tiles of consecutive slices share forward batches, so that small slices still fill them.
The Gaussian weights are computed once on the CPU and moved to the device, and the tiles are
summed in a fixed order, so one device gives the same result on every run and devices differ
only by what their network arithmetic does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from torch import nn

__all__ = ["PAD_VALUE", "SIGMA_SCALE", "gaussian_weights", "sliding_window_slices"]

#: Standard deviation of the Gaussian tile weight as a fraction of the tile side (nnU-Net's
#: 1/8, MONAI's default ``sigma_scale``).
SIGMA_SCALE = 0.125

#: Intensity of the padding around slices smaller than a tile: the background of the
#: normalised images.
PAD_VALUE = 0.0


def gaussian_weights(tile: int) -> torch.Tensor:
    """``(tile, tile)`` float32 CPU weights of a tile's logits: a Gaussian peaking at the centre, sigma
    ``SIGMA_SCALE * tile``, no weight below 1e-3 (MONAI's ``compute_importance_map``)."""
    return compute_importance_map((tile, tile), mode="gaussian", sigma_scale=SIGMA_SCALE, device="cpu")


def _windows_per_slice(height: int, width: int, tile: int, overlap: float) -> int:
    """How many tiles MONAI's tiling lays on a ``(height, width)`` slice."""
    step = max(1, int(tile * (1 - overlap)))
    return math.prod(1 if size <= tile else math.ceil((size - tile) / step) + 1 for size in (height, width))


@torch.no_grad()
def sliding_window_slices(
    model: nn.Module,
    slices: np.ndarray,
    tile: int,
    device: torch.device | str,
    batch_size: int,
    overlap: float,
    probabilities: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Label maps (and probabilities) of slices predicted tile by tile at their own resolution.

    The caller checks the arguments and puts the model in ``eval()`` mode
    (`simmpnet.evaluation.inference.predict_slices` does both).

    Args:
        model: a network in ``eval()`` mode on ``device``, taking ``(b, C, tile, tile)`` and
            returning ``(b, n_classes, tile, tile)`` logits.
        slices: ``(D, H, W)`` or ``(D, H, W, C)`` float intensities.
        tile: side of the square tiles (the network's input size).
        device: where the network runs; the averaged logits are accumulated there.
        batch_size: tiles per forward.
        overlap: fraction of a tile its neighbours share, in ``[0, 1)``.
        probabilities: also return the softmax of the averaged logits.

    Returns:
        ``(labels, probabilities)``: ``(D, H, W)`` uint8 argmax of the averaged logits, and
        float32 ``(n_classes, D, H, W)`` probabilities, or None without ``probabilities``.
    """
    depth, height, width = slices.shape[:3]
    weights = gaussian_weights(tile).to(device)
    # As many slices per call as fill a forward batch with their tiles (one slice at least),
    # so that the averaged logits held at once stay those of about one batch.
    per_call = max(1, batch_size // _windows_per_slice(height, width, tile, overlap))
    labels = np.empty((depth, height, width), dtype=np.uint8)
    probs: np.ndarray | None = None
    for start in range(0, depth, per_call):
        chunk = slices[start : start + per_call].astype(np.float32, copy=False)
        chunk = chunk[:, None] if chunk.ndim == 3 else np.moveaxis(chunk, -1, 1)  # (b, C, H, W)
        logits = sliding_window_inference(
            torch.from_numpy(np.ascontiguousarray(chunk)).to(device),
            roi_size=(tile, tile),
            sw_batch_size=batch_size,
            predictor=lambda tiles: model(tiles).float(),  # bf16 logits of bf16 inference upcast
            overlap=overlap,
            mode="gaussian",
            sigma_scale=SIGMA_SCALE,
            padding_mode="constant",
            cval=PAD_VALUE,
            roi_weight_map=weights,
        )  # (b, n_classes, H, W)
        # the argmax over a contiguous class-last copy: over the strided class axis it is slow
        best = logits.permute(0, 2, 3, 1).contiguous().argmax(-1)
        labels[start : start + len(chunk)] = best.to(torch.uint8).cpu().numpy()
        if probabilities:
            if probs is None:
                probs = np.empty((logits.shape[1], depth, height, width), dtype=np.float32)
            probs[:, start : start + len(chunk)] = torch.softmax(logits, 1).cpu().numpy().swapaxes(0, 1)
    return labels, probs
