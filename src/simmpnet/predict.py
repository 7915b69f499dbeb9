"""Prediction on files a user has: 2D images (PNG, JPEG, TIFF, BMP), volumes (NIfTI, NRRD,
MHA, npz, h5, DICOM series), one file or a folder.  Label maps are written in the input's own
geometry; for a DICOM series optionally also as a DICOM-SEG object."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.dicom import DicomSeries
from .data.dicom_seg import default_seg_path, require_highdicom, write_dicom_seg
from .data.io import default_label_path, file_extension, list_inputs, read_image, write_label_map
from .data.network_input import ModelInput, as_input, network_slices, normalise_intensity
from .errors import CheckpointError, InputError
from .evaluation.inference import predict_slices
from .evaluation.resample import check_inference, resolve_resample
from .pretrained import check_sliding_window
from .training.trainer import load_trained_model, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["predict_paths", "predict_array", "normalise_intensity"]


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
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict one image or volume, exactly as :func:`predict_paths` predicts a file holding the
    same content (the same conversion of the input, normalisation, channel handling, resizing
    or sliding window, and resampling: :mod:`simmpnet.data.network_input`).

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
        preprocessing: a :class:`simmpnet.Preprocessing` (default ``model.preprocessing``).
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
            :func:`simmpnet.evaluation.inference.predict_slices`.
        overlap: fraction of a tile its neighbours share with the sliding window, in
            ``[0, 1)`` (as ``predict --overlap``).

    Returns:
        uint8 labels of the input's spatial shape (``(H, W)`` or ``(D, H, W)``); with
        ``probabilities``, ``(labels, probabilities)`` where the probabilities are float32 and
        class-first: ``(n_classes, H, W)`` or ``(n_classes, D, H, W)``.

    The model is left as it was: its train/eval mode is restored, inference runs in
    ``eval()`` mode under ``torch.no_grad()`` (no memory bank update), and it returns to its
    device.
    """
    from .pretrained import Preprocessing

    check_inference(inference, overlap, resample)
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
            inference=inference, overlap=overlap, preprocessing=prep,
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


def predict_paths(
    checkpoint: str | os.PathLike,
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    device: str = "auto",
    overlay: bool = False,
    intensity_window: tuple[float, float] | None = None,
    resample: str | None = None,
    inference: str = "resize",
    overlap: float = 0.5,
    dicom_seg: bool = False,
) -> list[Path]:
    """Predict every supported file at ``input_path`` (a file or a folder) into ``output_dir``.

    ``input_path`` may also be a DICOM file, a folder holding DICOM series, or a sequence of
    DICOM files: each series is predicted as one volume and its label map written as
    ``<name>.nii.gz`` in the series' geometry (see :func:`simmpnet.data.io.list_inputs` and
    :mod:`simmpnet.data.dicom`).  With ``dicom_seg``, every input must be a DICOM series, and
    a DICOM-SEG object referencing it is written next to its label map as
    ``<name>_seg.dcm`` (:mod:`simmpnet.data.dicom_seg`; needs ``pip install "simmpnet[dicom]"``).

    ``intensity_window`` (low, high) replaces the window the model was trained with (e.g. a HU
    window for CT); None keeps the training one, or percentile normalisation when it had none.
    ``resample`` is how predictions return to the input's size: ``"labels"`` (the paper's
    nearest resize) or ``"logits"`` (see :mod:`simmpnet.evaluation.inference`); None takes
    the training config's, "labels" unless it was set.  ``inference`` is ``"resize"`` (the
    paper's: every slice resized to the input size) or ``"sliding-window"`` (tiles of the input
    size at the image's own resolution, neighbours sharing ``overlap`` of a tile; ``resample``
    does not apply).

    Returns the label maps written.  Files are read, predicted and written one at a time, so
    memory stays flat over long folders.  The inputs are listed (and DICOM series checked)
    before the model is loaded, so bad inputs fail before any work.
    """
    check_inference(inference, overlap, resample)
    inputs = list_inputs(input_path)
    if dicom_seg:
        other = next((item for item in inputs if not isinstance(item, DicomSeries)), None)
        if other is not None:
            raise InputError(f"{other}: DICOM-SEG output needs DICOM series as input, and this is not one")
        require_highdicom()
    dev = resolve_device(device)
    model, input_size, config = load_trained_model(checkpoint, dev)
    if inference == "sliding-window":
        check_sliding_window(getattr(model, "preprocessing", None), str(checkpoint))
    resample = resolve_resample(resample, config)
    in_channels = int(getattr(model, "in_channels", config.get("in_channels", 1)))
    names = config.get("class_names")
    window = intensity_window if intensity_window is not None else config.get("intensity_window")
    if dicom_seg:
        n_classes = getattr(model, "n_classes", None) or config.get("n_classes")
        if not n_classes:
            raise CheckpointError(f"{checkpoint}: the checkpoint does not record its number of classes")
        segment_names = list(names or ["background", *(f"class_{i}" for i in range(1, n_classes))])
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in inputs:
        loaded = read_image(path)
        slices = network_slices(ModelInput(loaded.array, loaded.kind, str(path)), in_channels, window)
        with torch.no_grad():
            labels = predict_slices(
                model, slices, input_size, dev, resample=resample, inference=inference, overlap=overlap,
                preprocessing=getattr(model, "preprocessing", None),
            )
        if loaded.kind == "image2d":
            labels = labels[0]
        target = write_label_map(labels, loaded, default_label_path(loaded, out_dir))
        written.append(target)
        if dicom_seg:
            write_dicom_seg(labels, loaded, default_seg_path(loaded, out_dir), segment_names)
        if overlay:
            from .evaluation.report import save_overlay

            index = 0 if loaded.kind == "image2d" else int(np.argmax((labels > 0).sum((1, 2))))
            image = slices[index]
            shown = labels if loaded.kind == "image2d" else labels[index]
            grey = image if image.ndim == 2 else image.mean(-1)
            stem = target.name[: len(target.name) - len(file_extension(target))]  # a series UID holds dots
            save_overlay(grey, None, shown, out_dir / f"{stem}_overlay.png", class_names=names)
        logger.info("%s -> %s", path, target)
    return written
