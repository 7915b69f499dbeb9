"""``model.predict``: a trained network in memory applied to what a user holds (arrays,
tensors, Pillow images, paths), exactly as ``simmpnet predict`` applies it to files."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.network_input import as_input, network_slices
from ..device import resolve_device
from ..errors import InputError
from ..evaluation.inference import predict_slices
from ..evaluation.resample import check_inference, check_sliding_window
from ..precision import check_precision
from ..pretrained import Preprocessing

__all__ = ["predict_array"]


def predict_array(
    model: torch.nn.Module,
    image: Any,
    *,
    preprocessing: object | None = None,
    probabilities: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    intensity_window: Sequence[float] | None = None,
    resample: str | None = None,
    volume: bool | None = None,
    inference: str = "resize",
    overlap: float = 0.5,
    precision: str = "fp32",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict one image or volume, exactly as `predict_paths` predicts a file holding the
    same content (the same conversion of the input, normalisation, channel handling, resizing
    or sliding window, and resampling: `simmpnet.data.network_input`).

    Args:
        model: a Sim-MPNet (``model.preprocessing`` is used unless ``preprocessing`` is given).
        image: what the user holds (docs/prediction.md has the table): a path (a file, or a
            folder of one DICOM series), read as ``simmpnet predict`` reads it; a Pillow image,
            decoded as a picture file of its mode; a numpy array or torch tensor, ``(H, W)``
            grey or ``(H, W, C)`` colour picture (``uint8`` samples are divided by 255,
            ``uint16`` by 65535, as reading them from a PNG does; other dtypes are raw
            intensities) or ``(D, H, W)`` volume of raw intensities (axial slices along the
            first axis).  A 3-D array is taken for a colour image when its last axis has 3
            entries or ``in_channels`` (> 1) entries, otherwise for a volume; ``volume``
            overrides that guess.
        preprocessing: a `simmpnet.Preprocessing` (default ``model.preprocessing``).
        probabilities: also return the softmax probabilities.
        device: where to run (``"auto"``, ``"cpu"``, ``"cuda"`` ...); None: where the model is.
            The model is moved there for the call and back afterwards (for many calls, move
            the model once and leave this None).
        batch_size: slices per forward (tiles per forward with the sliding window).
        intensity_window: replaces the preprocessing's window (as ``predict --window``).
        resample: replaces the preprocessing's ``resample`` (as ``predict --resample``); only
            with ``inference="resize"``.
        volume: True: ``image`` is a ``(D, H, W)`` volume; False: an image; None: guess.
        inference: ``"resize"`` (the paper's: every slice resized to the input size) or
            ``"sliding-window"`` (tiles of the input size at the image's own resolution, for
            a model trained on native-resolution crops), as ``predict --inference``; see
            `simmpnet.evaluation.inference.predict_slices`.
        overlap: fraction of a tile its neighbours share with the sliding window, in
            ``[0, 1)`` (as ``predict --overlap``).
        precision: ``"fp32"`` (default), ``"bf16"`` (bf16 autocast with the network's global
            reads in bf16; softmax and argmax of the fp32-upcast logits) or ``"auto"`` (bf16 where the
            device has bf16 units, else fp32), as ``predict --precision``; see
            `simmpnet.precision` and docs/prediction.md for how far bf16 labels agree with fp32.

    Returns:
        uint8 labels of the input's spatial shape (``(H, W)`` or ``(D, H, W)``); with
        ``probabilities``, ``(labels, probabilities)`` where the probabilities are float32 and
        class-first: ``(n_classes, H, W)`` or ``(n_classes, D, H, W)``.

    The model is left as it was: its train/eval mode is restored, inference runs in
    ``eval()`` mode under ``torch.no_grad()`` (no memory bank update), and it returns to its
    device.
    """
    check_inference(inference, overlap, resample)
    check_precision(precision)
    prep = preprocessing if preprocessing is not None else getattr(model, "preprocessing", None)
    if not isinstance(prep, Preprocessing):
        raise InputError("the model has no preprocessing; pass preprocessing=simmpnet.Preprocessing(...)")
    if inference == "sliding-window":
        check_sliding_window(prep)
    in_channels = int(getattr(model, "in_channels", prep.in_channels))
    item = as_input(image, in_channels=in_channels, volume=volume)
    window = intensity_window if intensity_window is not None else prep.intensity_window
    mode = resample or prep.resample
    slices = network_slices(item, in_channels, window)
    was_training = model.training
    home = next(model.parameters()).device
    target = home if device is None else resolve_device(device) if isinstance(device, str) else torch.device(device)
    moved = target != home
    try:
        if moved:
            model.to(target)
        result = predict_slices(
            model, slices, prep.input_size, target, batch_size=batch_size, resample=mode, probabilities=probabilities,
            inference=inference, overlap=overlap, preprocessing=prep, precision=precision,
        )
    finally:
        model.train(was_training)
        if moved:
            model.to(home)
    labels, probs = result if probabilities else (result, None)
    if item.is_picture:
        labels = labels[0]
        probs = None if probs is None else probs[:, 0]
    return (labels, probs) if probabilities else labels
