"""Slice transforms: the paper's training augmentation and the evaluation resize.

Training (as in the TransUNet lineage the paper follows; docs/training.md): with probability
0.5 a random 90-degree rotation (k in 0..3) followed by a flip along axis 0 or 1 (so this
branch always yields one of the 4 mirror images of the slice; on non-square slices an odd k
swaps H and W before the resize); otherwise,
with probability 0.5, a rotation by a random angle in [-20, 20] degrees (image spline order
3 by default, label nearest, both about the slice centre with the output size kept and the
corners filled with 0); then a resize to the network's input size (image cubic, label
nearest).
"""
from __future__ import annotations

import numpy as np
import torch

from simmpnet.errors import InputError


def _size2(output_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise InputError(f"output_size must be a positive int or (H, W), got {output_size!r}")
    return int(size[0]), int(size[1])


def resize_slice(array: np.ndarray, output_size: int | tuple[int, int], order: int = 3) -> np.ndarray:
    """Resize a 2-D slice with `scipy.ndimage.zoom`.

    Args:
        array: H x W array.
        output_size: target (H', W') or a single int for a square.
        order: spline order: 3 (cubic) for images, 0 (nearest) for label maps.

    Returns:
        H' x W' array of the input dtype (a copy when the size is unchanged).
    """
    from scipy import ndimage

    oh, ow = _size2(output_size)
    if array.ndim != 2:
        raise InputError(f"resize_slice expects an H x W array, got shape {array.shape}")
    h, w = array.shape
    if (h, w) == (oh, ow):
        return array.copy()
    # Nearest: a coordinate that rounding puts a hair past the last pixel takes that pixel
    # (scipy's default "constant" mode made the whole last row or column 0, background, for
    # some sizes, e.g. 64 -> 217).  Inside the image every mode gives the same values.
    out = ndimage.zoom(array, (oh / h, ow / w), order=order, mode="nearest" if order == 0 else "constant")
    if out.shape != (oh, ow):  # guard against rounding of the zoom factors
        out = out[:oh, :ow]
        out = np.pad(out, ((0, oh - out.shape[0]), (0, ow - out.shape[1])), mode="edge")
    return out


def _check_pair(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim not in (2, 3) or image.shape[:2] != label.shape or label.ndim != 2:
        raise InputError(
            "transform expects an H x W (or H x W x C) image and an H x W label, "
            f"got {image.shape} and {label.shape}"
        )
    if label.dtype.kind not in "biu":
        label = label.astype(np.int64)
    return image.astype(np.float32, copy=False), label


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.ndim == 2:
        return resize_slice(image, size, order=3)
    return np.stack([resize_slice(image[..., c], size, order=3) for c in range(image.shape[-1])], axis=-1)


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(H x W [x C] image, H x W label) -> (float32 C x H x W, int64 H x W) tensors."""
    image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    lab = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64, copy=False))
    return img, lab


def normalise_percentile(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Scale one volume to ``[0, 1]``, as prediction inputs are.

    Args:
        volume: any float array (e.g. ``D x H x W``), finite.
        low: the percentile mapped to 0 (values below it are clipped).
        high: the percentile mapped to 1 (values above it are clipped).

    Returns:
        float32 array of the same shape: ``volume`` itself when it already lies in ``[0, 1]``,
        else ``(clip(volume, p_low, p_high) - p_low) / (p_high - p_low)``; zeros when the two
        percentiles coincide.
    """
    lo_val, hi_val = float(volume.min()), float(volume.max())
    if lo_val >= 0.0 and hi_val <= 1.0:
        return volume.astype(np.float32, copy=False)
    p_lo, p_hi = np.percentile(volume, [low, high])
    if p_hi <= p_lo:
        return np.zeros(volume.shape, dtype=np.float32)
    return ((np.clip(volume, p_lo, p_hi) - p_lo) / (p_hi - p_lo)).astype(np.float32)


class RandomAugment:
    """The paper's training augmentation, reproducible through a numpy Generator.

    Call with ``(image H x W float, label H x W int)``; returns ``(image float32 tensor
    1 x H' x W', label int64 tensor H' x W')`` where ``(H', W') = output_size``.

    Args:
        output_size: network input size (H', W') or an int for a square (paper: 256).
        rng: a `numpy.random.Generator` (used as is) or a seed; None seeds from the OS.
        p_rot_flip: probability of the 90-degree rotation + flip branch.
        p_rotate: probability of the free rotation, given the first branch was not taken.
        max_angle: free rotation angle range, degrees: uniform in [-max_angle, max_angle].
        image_order: spline order for rotating the image (3 cubic, 1 linear).

    In DataLoader worker processes every worker holds a copy of the same Generator; so that
    workers do not repeat each other's augmentations, the first call inside a worker derives
    a fresh Generator from this one and the worker's torch seed (reproducible when torch is
    seeded).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        rng: np.random.Generator | int | None = None,
        p_rot_flip: float = 0.5,
        p_rotate: float = 0.5,
        max_angle: float = 20.0,
        image_order: int = 3,
    ) -> None:
        self.output_size = _size2(output_size)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        for name, p in (("p_rot_flip", p_rot_flip), ("p_rotate", p_rotate)):
            if not 0.0 <= p <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {p}")
        if image_order not in (0, 1, 2, 3, 4, 5):
            raise InputError(f"image_order must be a spline order 0..5, got {image_order}")
        self.p_rot_flip = float(p_rot_flip)
        self.p_rotate = float(p_rotate)
        self.max_angle = float(max_angle)
        self.image_order = int(image_order)
        self._worker_seed: int | None = None

    def _worker_rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng([int(self.rng.integers(2**63)), info.seed % 2**63])
        return self.rng

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(image, label, self._worker_rng())

    def apply(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment with an explicit generator (the trainer derives one per epoch and sample,
        which makes a resumed run draw exactly what an uninterrupted one draws)."""
        from scipy import ndimage

        image, label = _check_pair(image, label)
        if rng.random() < self.p_rot_flip:
            k = int(rng.integers(0, 4))
            axis = int(rng.integers(0, 2))
            image = np.flip(np.rot90(image, k), axis=axis)
            label = np.flip(np.rot90(label, k), axis=axis)
        elif rng.random() < self.p_rotate:
            angle = float(rng.uniform(-self.max_angle, self.max_angle))
            image = ndimage.rotate(image, angle, order=self.image_order, reshape=False, mode="constant", cval=0.0)
            label = ndimage.rotate(label, angle, order=0, reshape=False, mode="constant", cval=0)
        image = resize_image(np.ascontiguousarray(image), self.output_size)
        label = resize_slice(np.ascontiguousarray(label), self.output_size, order=0)
        return to_tensors(image, label)


class Resize:
    """Evaluation-time transform: resize only (image cubic, label nearest).

    Call with ``(image H x W, label H x W)``; returns ``(float32 tensor 1 x H' x W', int64
    tensor H' x W')``.

    Args:
        output_size: target (H', W') or an int for a square.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        self.output_size = _size2(output_size)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = _check_pair(image, label)
        return to_tensors(resize_image(image, self.output_size), resize_slice(label, self.output_size, order=0))
