"""Prediction on files a user has: 2D images (PNG, JPEG, TIFF, BMP), volumes (NIfTI, NRRD,
MHA, npz, h5, DICOM series), one file or a folder.  Label maps are written in the input's own
geometry; for a DICOM series optionally also as a DICOM-SEG object."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.dicom import DicomSeries
from .data.dicom_seg import default_seg_path, require_highdicom, write_dicom_seg
from .data.io import default_label_path, file_extension, list_inputs, read_image, write_label_map
from .data.transforms import normalise_percentile
from .errors import CheckpointError, InputError
from .evaluation.inference import predict_slices
from .evaluation.resample import check_inference, resolve_resample
from .training.trainer import load_trained_model, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["predict_paths", "predict_array", "normalise_intensity"]

def normalise_intensity(array: np.ndarray, window: Sequence[float] | None = None) -> np.ndarray:
    """Map raw intensities to the ``[0, 1]`` range the networks are trained on.

    With a ``window`` (e.g. ``(-125, 275)`` HU for the Synapse CT): clip to it and scale.
    Without one: images already in ``[0, 1]`` stay as they are (the training data of every
    layout here are); anything else is clipped to its 0.5-99.5 percentiles and scaled.
    """
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise InputError(f"intensity window must be (low, high) with low < high, got {list(window)}")
        return ((np.clip(array, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    return normalise_percentile(array)


def _as_slices(array: np.ndarray, kind: str, in_channels: int, source: Path) -> np.ndarray:
    """The network's view of an input: ``(D, H, W)`` or ``(D, H, W, C)``."""
    if kind == "image2d":
        if array.ndim == 3 and in_channels == 1:
            if array.shape[-1] != 3:
                raise InputError(f"{source}: {array.shape[-1]} channels, the model takes 1")
            logger.warning("%s: colour image converted to grey for a 1-channel model", source)
            array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif array.ndim == 2 and in_channels == 3:
            array = np.repeat(array[..., None], 3, axis=-1)
        elif array.ndim == 3 and array.shape[-1] != in_channels:
            raise InputError(f"{source}: {array.shape[-1]} channels, the model takes {in_channels}")
        return array[None]
    if array.ndim != 3:
        raise InputError(f"{source}: expected a volume (D, H, W), got shape {array.shape}")
    if in_channels != 1:
        raise InputError(f"{source}: a single-channel volume, but the model takes {in_channels} channels")
    return array


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
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
    """Predict one image or volume given as an array, exactly as :func:`predict_paths` does a
    file (same normalisation, channel handling, resizing or sliding window, and resampling).

    Args:
        model: a Sim-MPNet (``model.preprocessing`` is used unless ``preprocessing`` is given).
        image: raw intensities: ``(H, W)`` grey or ``(H, W, C)`` colour image, or ``(D, H, W)``
            volume (axial slices along the first axis).  A 3-D array is taken for a colour
            image when its last axis has 3 entries or ``in_channels`` (> 1) entries, otherwise
            for a volume; ``volume`` overrides that guess.
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
            ``"sliding-window"`` (tiles of the input size at the image's own resolution), as
            ``predict --inference``; see :func:`simmpnet.evaluation.inference.predict_slices`.
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
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise InputError(f"expected a numeric image array, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)  # as read_image gives it
    if array.ndim not in (2, 3) or array.size == 0:
        raise InputError(f"expected an (H, W) or (H, W, C) image or a (D, H, W) volume, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("the image holds NaN or Inf values")
    in_channels = int(getattr(model, "in_channels", prep.in_channels))
    if volume is None:
        colour = array.ndim == 3 and (array.shape[-1] == 3 or (in_channels > 1 and array.shape[-1] == in_channels))
        volume = array.ndim == 3 and not colour
    elif volume and array.ndim != 3:
        raise InputError(f"volume=True needs a (D, H, W) array, got shape {array.shape}")
    kind = "volume" if volume else "image2d"
    window = intensity_window if intensity_window is not None else prep.intensity_window
    mode = resample or prep.resample
    normalised = normalise_intensity(array, window)
    slices = _as_slices(normalised, kind, in_channels, "input array")
    was_training = model.training
    home = next(model.parameters()).device
    target = home if device is None else resolve_device(device) if isinstance(device, str) else torch.device(device)
    moved = target != home
    try:
        if moved:
            model.to(target)
        result = predict_slices(
            model, slices, prep.input_size, target, batch_size=batch_size, resample=mode, probabilities=probabilities,
            inference=inference, overlap=overlap,
        )
    finally:
        model.train(was_training)
        if moved:
            model.to(home)
    labels, probs = result if probabilities else (result, None)
    if kind == "image2d":
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
        image = normalise_intensity(loaded.array, window)
        slices = _as_slices(image, loaded.kind, in_channels, path)
        with torch.no_grad():
            labels = predict_slices(
                model, slices, input_size, dev, resample=resample, inference=inference, overlap=overlap
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
