"""Training augmentation and evaluation resize."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simmpnet.data.transforms import RandomAugment, Resize, resize_slice
from simmpnet.errors import InputError


def _pattern(h: int = 40, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric smooth image (no dihedral symmetry) and label = image > 0.5."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((h, w), np.float32)
    image[5:15, 4:25] = 0.9  # a bar in the upper part
    image[20:35, 20:28] = 0.8  # a block lower right
    image[30:36, 3:8] = 0.7  # a small block lower left
    image += 0.05 * (xx / w) + 0.02 * (yy / h)  # a gradient breaks remaining symmetry
    return image, (image > 0.5).astype(np.int64)


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    return [np.flip(np.rot90(a, k), axis) for k in range(4) for axis in (0, 1)]


@pytest.mark.parametrize("size", [(40, 32), (17, 23), (64, 64)])
@pytest.mark.parametrize("out", [24, (30, 20)])
def test_output_shapes_and_dtypes(size: tuple[int, int], out: int | tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    aug = RandomAugment(out, rng=rng)
    expected = (out, out) if isinstance(out, int) else out
    for _ in range(8):
        image = rng.random(size).astype(np.float64)
        label = rng.integers(0, 4, size).astype(np.uint8)
        img, lab = aug(image, label)
        assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and img.shape == (1, *expected)
        assert isinstance(lab, torch.Tensor) and lab.dtype == torch.int64 and lab.shape == expected


def test_labels_stay_in_input_set() -> None:
    rng = np.random.default_rng(2)
    label = np.zeros((50, 44), np.int64)
    label[5:20, 5:30] = 3
    label[25:45, 10:40] = 7
    label[30:35, 2:9] = 11
    aug = RandomAugment((37, 61), rng=rng)
    for _ in range(40):
        _, lab = aug(rng.random(label.shape), label)
        assert set(np.unique(lab.numpy())) <= {0, 3, 7, 11}


def test_rotation_fill_is_background_only() -> None:
    label = np.full((30, 30), 5, np.int64)  # no 0 in the input
    aug = RandomAugment(30, rng=3, p_rot_flip=0.0, p_rotate=1.0)
    _, lab = aug(np.ones((30, 30)), label)
    assert set(np.unique(lab.numpy())) <= {0, 5}


def test_same_seed_same_output_and_seeds_differ() -> None:
    image, label = _pattern()
    runs = []
    for seed in (7, 7, 8):
        aug = RandomAugment(24, rng=seed)
        runs.append([aug(image, label) for _ in range(6)])
    for (a_img, a_lab), (b_img, b_lab) in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert any(not torch.equal(a[0], c[0]) for a, c in zip(runs[0], runs[2], strict=True))


def test_generator_passed_in_is_used() -> None:
    image, label = _pattern()
    a = RandomAugment(24, rng=np.random.default_rng(11))(image, label)
    b = RandomAugment(24, rng=np.random.default_rng(11))(image, label)
    assert torch.equal(a[0], b[0])


def test_rot90_flip_keeps_alignment_and_is_dihedral() -> None:
    image, label = _pattern(40, 40)  # square: an odd number of quarter turns keeps the shape
    aug = RandomAugment(image.shape, rng=4, p_rot_flip=1.0)  # same size: no resize
    seen = set()
    for _ in range(40):
        img, lab = aug(image, label)
        img2d, lab2d = img[0].numpy(), lab.numpy()
        np.testing.assert_array_equal(lab2d, (img2d > 0.5).astype(np.int64))
        matches = [i for i, d in enumerate(_dihedral(image)) if d.shape == img2d.shape and np.array_equal(d, img2d)]
        assert matches, "output is one of the 8 rotations/flips of the input"
        seen.add(matches[0])
    # rot90(k) followed by a flip always mirrors: the branch reaches the 4 reflections of the
    # dihedral group (flip0 o rot_k == flip1 o rot_(k+2)), never a pure rotation. All 4 occur.
    assert len(seen) == 4


def test_rot90_flip_then_resize_stays_aligned() -> None:
    image, label = _pattern(48, 48)
    aug = RandomAugment(96, rng=5, p_rot_flip=1.0)
    for _ in range(10):
        img, lab = aug(image, label)
        agree = (lab.numpy() == (img[0].numpy() > 0.5)).mean()
        assert agree > 0.97


def test_free_rotation_keeps_alignment() -> None:
    image, label = _pattern(64, 64)
    aug = RandomAugment(64, rng=6, p_rot_flip=0.0, p_rotate=1.0, image_order=1)
    changed = 0
    for _ in range(10):
        img, lab = aug(image, label)
        agree = (lab.numpy() == (img[0].numpy() > 0.5)).mean()
        assert agree > 0.97
        changed += not np.array_equal(lab.numpy(), label)
    assert changed >= 8


def test_no_augmentation_branch_is_plain_resize() -> None:
    image, label = _pattern()
    img, lab = RandomAugment((20, 16), rng=0, p_rot_flip=0.0, p_rotate=0.0)(image, label)
    ref_img, ref_lab = Resize((20, 16))(image, label)
    assert torch.equal(img, ref_img) and torch.equal(lab, ref_lab)


def test_resize_slice() -> None:
    label = np.kron(np.array([[1, 2], [3, 0]]), np.ones((5, 5), np.int64))
    out = resize_slice(label, (20, 20), order=0)
    assert out.shape == (20, 20) and out.dtype == label.dtype
    np.testing.assert_array_equal(out, np.kron(np.array([[1, 2], [3, 0]]), np.ones((10, 10), np.int64)))
    const = resize_slice(np.full((7, 9), 0.25, np.float32), (13, 5))
    assert const.shape == (13, 5) and np.allclose(const, 0.25, atol=1e-5)
    same = resize_slice(label, label.shape, order=0)
    assert np.array_equal(same, label) and same is not label
    for odd in [(256, 256), (229, 251), (1, 3)]:
        assert resize_slice(np.random.default_rng(0).random((217, 181)), odd).shape == odd


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        RandomAugment(0)
    with pytest.raises(InputError):
        RandomAugment(16, p_rot_flip=1.5)
    with pytest.raises(InputError, match="an H x W label"):
        RandomAugment(16, rng=0)(np.zeros((4, 4)), np.zeros((4, 5), np.int64))


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, aug: RandomAugment) -> None:
        self.aug = aug
        self.image, self.label = _pattern()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.aug(self.image, self.label)[0]


def test_dataloader_workers_differ_and_are_reproducible() -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(_Repeat(RandomAugment(24, rng=9)), batch_size=1, num_workers=2)
        return torch.cat(list(loader))

    first, second = run(), run()
    assert torch.equal(first, second)
    # Worker 0 serves items 0, 2, 4, ...; worker 1 items 1, 3, 5, ...: they must not repeat each other.
    assert not torch.equal(first[0::2], first[1::2])


def test_colour_images_are_augmented_channel_by_channel_with_their_label():
    rng = np.random.default_rng(0)
    grey = rng.random((20, 30)).astype(np.float32)
    label = (grey > 0.5).astype(np.int64)
    colour = np.stack([grey, grey * 0.5, 1.0 - grey], axis=-1)
    augment = RandomAugment(16, p_rot_flip=1.0)
    image_c, label_c = augment.apply(colour, label, np.random.default_rng(3))
    image_g, label_g = augment.apply(grey, label, np.random.default_rng(3))
    assert image_c.shape == (3, 16, 16) and image_g.shape == (1, 16, 16)
    assert torch.equal(label_c, label_g)
    torch.testing.assert_close(image_c[0], image_g[0])
    torch.testing.assert_close(image_c[1], image_g[0] * 0.5, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(217, 181), (181, 217), (512, 512), (100, 37)])
def test_nearest_resize_keeps_the_last_row_and_column(shape):
    """Upsizing a label map must not turn its last row or column into background."""
    labels = np.full((64, 64), 3, np.uint8)
    out = resize_slice(labels, shape, order=0)
    assert out.shape == shape and (out == 3).all()
