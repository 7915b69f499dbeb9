"""What a training epoch draws: the order of the slices in its batches and the augmented
slices, both derived from ``(seed, epoch, slice index)`` alone, so that a resumed run draws
what an uninterrupted one does."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.transforms import RandomAugment

__all__ = ["epoch_batches"]


class _AugmentedSlices(Dataset):
    """Training slices with an augmentation whose draws depend on (seed, epoch, index) only."""

    def __init__(self, slices: Dataset, size: int, seed: int, options: dict[str, float]) -> None:
        self.slices = slices
        self.augment = RandomAugment(size, **options)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.slices[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = item["image"].numpy()  # (C, H, W)
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        image, label = self.augment.apply(image, item["label"].numpy(), rng)
        return {"image": image, "label": label}


def epoch_batches(n_slices: int, batch_size: int, steps_per_epoch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of an epoch, as slice indices (each rank of a distributed run takes its share)."""
    order = torch.randperm(n_slices, generator=torch.Generator().manual_seed(seed + epoch))
    # BatchNorm and the loss behave better without a ragged last batch: it is dropped
    # unless it is the only one (steps_per_epoch)
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)][:steps_per_epoch]
