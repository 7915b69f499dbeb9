"""Slice-wise prediction of volumes and images.

With ``inference="resize"`` (the paper's protocol), each slice is resized to the network's
input size (cubic) and predicted.  The prediction goes back to the slice's own size in one of
the two ways of `simmpnet.evaluation.resample`:

- ``"labels"`` (the paper's evaluation, docs/evaluation.md): the label map at the network's
  size is resized back with nearest-neighbour interpolation;
- ``"logits"``: the logits are interpolated bilinearly to the slice's size and the label
  is their argmax there, as nnU-Net does with its class scores.  A network trained below the
  data's resolution then gives smooth boundaries instead of blocks of the network's pixels.

Both map pixel centres the way the input resize does (corners aligned, as
`scipy.ndimage.zoom` does), so neither shifts the prediction against the image.

With ``inference="sliding-window"``, overlapping tiles of the input size are predicted at the
slice's own resolution and their logits blended (`simmpnet.evaluation.sliding_window`).

``precision="bf16"`` runs the forwards under bf16 autocast with the network's global reads in bf16
(`simmpnet.precision.inference_precision`); the logits are upcast to fp32 before anything
else (interpolation, softmax, argmax), so only the forward changes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import resize_image, resize_slice
from ..errors import InputError
from ..precision import inference_precision, resolve_precision
from .resample import check_inference, check_resample, check_sliding_window

__all__ = ["predict_slices"]

@torch.no_grad()
def predict_slices(
    model: nn.Module,
    slices: np.ndarray,
    input_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    resample: str = "labels",
    probabilities: bool = False,
    inference: str = "resize",
    overlap: float = 0.5,
    preprocessing: Any = None,
    precision: str = "fp32",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict a stack of 2D slices.

    Args:
        model: a network in any mode; it is put in ``eval()`` mode (never changed).
        slices: ``(D, H, W)`` single-channel or ``(D, H, W, C)`` multi-channel float array.
        input_size: side of the square the network expects (the tile side of the sliding
            window).
        device: where the network runs (the model must already be there).
        batch_size: slices per forward (tiles per forward with the sliding window).
        resample: ``"labels"`` (the paper's nearest resize of the label map) or ``"logits"``
            (bilinear interpolation of the logits, then the argmax); with the sliding window
            there is nothing to resample and it is not used.
        probabilities: also return the softmax probabilities at the slices' size, returned
            the way the labels are: ``"labels"``: the network-size probabilities resized
            with the nearest-neighbour resize of the label map; ``"logits"``: the softmax of
            the interpolated logits; sliding window: the softmax of the blended logits.
            Their argmax is the label map in every case (up to exact ties).
        inference: ``"resize"`` (the paper's: every slice resized to ``input_size``) or
            ``"sliding-window"`` (Gaussian-weighted tiles of ``input_size`` at the slice's
            own resolution, see `simmpnet.evaluation.sliding_window`).
        overlap: fraction of a tile its neighbours share with the sliding window, in
            ``[0, 1)``; not used by ``"resize"``.
        preprocessing: the `simmpnet.Preprocessing` the model was trained with
            (default: ``model.preprocessing``, when it has one); the sliding window is refused
            for a model trained on resized slices (`simmpnet.evaluation.resample.check_sliding_window`).
        precision: ``"fp32"`` (default), ``"bf16"`` (bf16 autocast, the global reads in bf16) or
            ``"auto"`` (bf16 where ``device`` has bf16 units), see `simmpnet.precision`.

    Returns:
        ``(D, H, W)`` uint8 label map; with ``probabilities``, ``(labels, probabilities)``
        with float32 ``(n_classes, D, H, W)`` probabilities.
    """
    check_resample(resample)
    check_inference(inference, overlap)
    precision = resolve_precision(precision, device)
    if slices.ndim not in (3, 4) or slices.shape[0] == 0:
        raise InputError(f"expected (D, H, W) or (D, H, W, C) slices, got shape {slices.shape}")
    if not np.isfinite(slices).all():
        raise InputError("the image holds NaN or Inf values")
    if inference == "sliding-window":
        # (the callers that load models warn once about a model that does not record it)
        check_sliding_window(
            preprocessing if preprocessing is not None else getattr(model, "preprocessing", None), warn=False
        )
    model.eval()
    if inference == "sliding-window":
        # imported here: MONAI takes seconds to import, and the resize does not need it
        from .sliding_window import sliding_window_slices

        with inference_precision(model, device, precision):
            labels, probs = sliding_window_slices(model, slices, input_size, device, batch_size, overlap, probabilities)
        return (labels, probs) if probabilities else labels
    depth, height, width = slices.shape[:3]
    labels = np.empty((depth, height, width), dtype=np.uint8)
    probs: np.ndarray | None = None
    for start in range(0, depth, batch_size):
        chunk = slices[start : start + batch_size].astype(np.float32, copy=False)
        resized = np.stack([resize_image(s, (input_size, input_size)) for s in chunk])  # (b, S, S[, C])
        resized = resized[:, None] if resized.ndim == 3 else np.moveaxis(resized, -1, 1)  # (b, C, S, S)
        with inference_precision(model, device, precision):
            logits = model(torch.from_numpy(resized).to(device)).float()  # eval mode: one tensor
        if probabilities and probs is None:
            probs = np.empty((logits.shape[1], depth, height, width), dtype=np.float32)
        if resample == "logits":
            # One slice at a time: the full-size logits of a whole batch can be large.  The
            # argmax runs over a contiguous (H, W, classes) copy: over the strided class axis of
            # a (classes, H, W) tensor it costs several times the interpolation itself.
            for offset, slice_logits in enumerate(logits):
                small = slice_logits[None].contiguous()
                full = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=True)[0]
                best = full.permute(1, 2, 0).contiguous().argmax(-1)
                labels[start + offset] = best.to(torch.uint8).cpu().numpy()
                if probs is not None:
                    probs[:, start + offset] = torch.softmax(full, 0).cpu().numpy()
        else:
            small = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for offset, label in enumerate(small):
                labels[start + offset] = resize_slice(label, (height, width), order=0)
            if probs is not None:
                # the same nearest resize per class: each pixel takes the probabilities of
                # the network pixel its label comes from
                soft = torch.softmax(logits, 1).cpu().numpy()
                for offset, slice_probs in enumerate(soft):
                    for c, plane in enumerate(slice_probs):
                        probs[c, start + offset] = resize_slice(plane, (height, width), order=0)
    if probabilities:
        return labels, probs
    return labels
