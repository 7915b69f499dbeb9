"""Slice-wise prediction of volumes and images with the paper's resizing (SPEC section 5):
each slice is resized to the network's input size (cubic), predicted, and the label map is
resized back (nearest)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.transforms import resize_image, resize_slice
from ..errors import InputError

__all__ = ["predict_slices"]


@torch.no_grad()
def predict_slices(
    model: nn.Module,
    slices: np.ndarray,
    input_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """Predict a stack of 2D slices.

    Args:
        model: a network in any mode; it is put in ``eval()`` mode (never changed).
        slices: ``(D, H, W)`` single-channel or ``(D, H, W, C)`` multi-channel float array.
        input_size: side of the square the network expects.
        device: where the network runs (the model must already be there).
        batch_size: slices per forward.

    Returns:
        ``(D, H, W)`` uint8 label map.
    """
    if slices.ndim not in (3, 4) or slices.shape[0] == 0:
        raise InputError(f"expected (D, H, W) or (D, H, W, C) slices, got shape {slices.shape}")
    if not np.isfinite(slices).all():
        raise InputError("the image holds NaN or Inf values")
    model.eval()
    depth, height, width = slices.shape[:3]
    labels = np.empty((depth, height, width), dtype=np.uint8)
    for start in range(0, depth, batch_size):
        chunk = slices[start : start + batch_size].astype(np.float32, copy=False)
        resized = np.stack([resize_image(s, (input_size, input_size)) for s in chunk])  # (b, S, S[, C])
        resized = resized[:, None] if resized.ndim == 3 else np.moveaxis(resized, -1, 1)  # (b, C, S, S)
        logits = model(torch.from_numpy(resized).to(device))  # eval mode: one tensor
        small = logits.argmax(1).to(torch.uint8).cpu().numpy()
        for offset, label in enumerate(small):
            labels[start + offset] = resize_slice(label, (height, width), order=0)
    return labels
