"""What a trained model is given: one conversion, for every caller, of what a user holds into
the slices the network sees.

``simmpnet predict`` (files), `simmpnet.predict.predict_array` and
`SimMPNet.predict` (arrays, tensors, Pillow images,
paths) all go through `as_input` and `network_slices`, so the same content gives
the same network input whichever way it arrives (docs/prediction.md has the table):

* a **path** is read by `simmpnet.data.io.read_image`, as ``simmpnet predict`` reads it;
* a **Pillow image** is decoded as a picture file of that mode is: 8-bit samples divided by
  255, 16-bit by 65535 (`simmpnet.data.io.PICTURE_FULL_SCALE`), colour modes to RGB;
* an **array or tensor** holding an image (``H x W`` or ``H x W x C``) is taken for the samples
  of a picture: ``uint8`` divided by 255, ``uint16`` by 65535 (what reading the same pixels
  from a PNG or TIFF gives); other dtypes keep their values.  One holding a volume
  (``D x H x W``) keeps its values whatever its dtype, as the volume readers do;
* then every input gets the same intensity normalisation (`normalise_intensity`: the
  model's window, or percentiles for values outside ``[0, 1]``) and channel handling.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .io import intensities, list_inputs, picture_samples, read_image
from .transforms import normalise_percentile

logger = logging.getLogger(__name__)

__all__ = ["ModelInput", "as_input", "network_slices", "normalise_intensity"]

#: The kinds of `simmpnet.data.io.LoadedImage` that hold one 2-D picture.
_PICTURE = "image2d"


@dataclass(frozen=True)
class ModelInput:
    """An input as the model takes it, before normalisation.

    Attributes:
        array: float32 intensities: ``H x W``, ``H x W x C`` (picture) or ``D x H x W`` (volume).
        kind: ``"image2d"`` for a picture, the reader's kind for a file (``"nifti"`` ...),
            ``"volume"`` for a volume given as an array.
        source: how messages name it (the file, or "input array").
    """

    array: np.ndarray
    kind: str
    source: str

    @property
    def is_picture(self) -> bool:
        return self.kind == _PICTURE


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


def _is_pil_image(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


def as_input(image: Any, *, in_channels: int = 1, volume: bool | None = None) -> ModelInput:
    """``image`` as the model takes it (module docstring: what happens to each type).

    Args:
        image: a path (``str`` or ``os.PathLike``: a file, or a folder holding one DICOM
            series), a Pillow image, a numpy array or a torch tensor (``H x W`` grey,
            ``H x W x C`` colour, ``D x H x W`` volume; channels last).
        in_channels: the channels the network takes; decides, with ``volume``, whether a 3-D
            array is a colour picture or a volume.
        volume: for a 3-D array or tensor: True: a ``D x H x W`` volume; False: a picture;
            None: a picture when its last axis has 3 entries (or ``in_channels`` > 1), else a
            volume.  Ignored for paths and Pillow images, which say what they are.

    Raises:
        InputError: a type, dtype or shape that is none of these, or values that are not finite.
    """
    if isinstance(image, (str, os.PathLike)):
        inputs = list_inputs(image)
        if len(inputs) != 1:
            raise InputError(f"{image}: holds {len(inputs)} inputs; predict them one by one (or with predict_paths)")
        loaded = read_image(inputs[0])
        return ModelInput(loaded.array, loaded.kind, str(loaded.path))
    if _is_pil_image(image):
        samples = picture_samples(image, "Pillow image")
        return ModelInput(intensities(samples, "Pillow image", picture=True), _PICTURE, "Pillow image")
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"expected a path, a Pillow image, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    array = image
    if array.dtype.kind not in "biuf":
        raise InputError(f"expected a numeric image array, got dtype {array.dtype}")
    if array.ndim not in (2, 3) or array.size == 0:
        raise InputError(f"expected an (H, W) or (H, W, C) image or a (D, H, W) volume, got shape {array.shape}")
    if volume is None:
        colour = array.ndim == 3 and (array.shape[-1] == 3 or (in_channels > 1 and array.shape[-1] == in_channels))
        volume = array.ndim == 3 and not colour
    elif volume and array.ndim != 3:
        raise InputError(f"volume=True needs a (D, H, W) array, got shape {array.shape}")
    kind = "volume" if volume else _PICTURE
    return ModelInput(intensities(array, "input array", picture=not volume), kind, "input array")


def network_slices(
    item: ModelInput, in_channels: int, window: Sequence[float] | None = None
) -> np.ndarray:
    """The network's view of an input: its intensities normalised (`normalise_intensity`
    with ``window``), as ``(D, H, W)`` or ``(D, H, W, C)`` slices; a picture is one slice.  A
    colour picture becomes grey for a 1-channel network (logged), a grey one is repeated for a
    3-channel network."""
    array = normalise_intensity(item.array, window)
    if item.is_picture:
        if array.ndim == 3 and in_channels == 1:
            if array.shape[-1] != 3:
                raise InputError(f"{item.source}: {array.shape[-1]} channels, the model takes 1")
            logger.warning("%s: colour image converted to grey for a 1-channel model", item.source)
            array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        elif array.ndim == 2 and in_channels == 3:
            array = np.repeat(array[..., None], 3, axis=-1)
        elif array.ndim == 3 and array.shape[-1] != in_channels:
            raise InputError(f"{item.source}: {array.shape[-1]} channels, the model takes {in_channels}")
        return array[None]
    if array.ndim != 3:
        raise InputError(f"{item.source}: expected a volume (D, H, W), got shape {array.shape}")
    if in_channels != 1:
        raise InputError(f"{item.source}: a single-channel volume, but the model takes {in_channels} channels")
    return array
