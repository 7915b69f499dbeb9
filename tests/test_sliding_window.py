"""Sliding-window prediction (``inference="sliding-window"``): Gaussian-weighted tiles of the
network's input size at the image's own resolution, checked against a tile loop written here
from the definition (nnU-Net's and MONAI's), independently of the MONAI call the package makes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from simmpnet import Preprocessing, SimMPNet
from simmpnet.cli import main
from simmpnet.errors import InputError
from simmpnet.evaluation.inference import predict_slices
from simmpnet.predict import predict_array

TILE = 64
N_CLASSES = 4


@pytest.fixture(scope="module")
def model() -> SimMPNet:
    """A tiny untrained network at 64 px whose memory banks moved away from their initial
    values, with zero head biases so that its labels vary over an image."""
    torch.manual_seed(0)
    net = SimMPNet.from_variant("tiny", n_classes=N_CLASSES, img_size_a=TILE, img_size_b=56, warmup_iters=1)
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 1, TILE, TILE))
        for head in net.heads:
            head.bias.zero_()
    net.commit_memory()
    net.preprocessing = Preprocessing(TILE, 1, (0.0, 1.0))  # [0, 1] inputs pass unchanged
    return net.eval()


def smooth_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Intensities in [0, 1] with structure at several scales (a random field smoothed by a
    box filter), so that the network's labels form regions rather than noise."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.random(shape, dtype=np.float32)).reshape(-1, 1, *shape[-2:])
    smooth = torch.nn.functional.avg_pool2d(noise, 15, stride=1, padding=7, count_include_pad=False)
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin())
    return smooth.reshape(shape).numpy()


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile origins along one axis: a step of ``int(tile * (1 - overlap))`` from 0, and a last
    tile ending at the border."""
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def gaussian(tile: int) -> np.ndarray:
    """nnU-Net's / MONAI's tile weight: sigma tile / 8 about the centre, floored at 1e-3."""
    centred = np.arange(tile) - (tile - 1) / 2
    line = np.exp(-(centred**2) / (2 * (tile / 8) ** 2))
    weights = np.outer(line, line)
    return np.maximum(weights, max(weights.min(), 1e-3))


def reference(net: torch.nn.Module, image: np.ndarray, tile: int, overlap: float) -> np.ndarray:
    """``(n_classes, H, W)`` float64 softmax of the Gaussian-weighted mean of the tiles' logits of
    one ``(H, W)`` image, zero-padded symmetrically to the tile where it is smaller."""
    height, width = image.shape
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    padded = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    rows, columns = (tile_starts(size, tile, overlap) for size in padded.shape)
    origins = [(y, x) for y in rows for x in columns]
    tiles = torch.from_numpy(np.stack([padded[y : y + tile, x : x + tile] for y, x in origins])[:, None])
    with torch.no_grad():
        logits = torch.cat([net(tiles[i : i + 64]) for i in range(0, len(tiles), 64)]).double().numpy()
    weights = gaussian(tile)
    total = np.zeros((logits.shape[1], *padded.shape))
    norm = np.zeros(padded.shape)
    for (y, x), tile_logits in zip(origins, logits):
        total[:, y : y + tile, x : x + tile] += tile_logits * weights
        norm[y : y + tile, x : x + tile] += weights
    mean = (total / norm)[:, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width]
    return torch.softmax(torch.from_numpy(mean), 0).numpy()


def assert_matches(labels: np.ndarray, probs: np.ndarray, expected: np.ndarray) -> None:
    """Probabilities to float tolerance; labels exactly wherever the reference's two best
    classes are not within float noise of each other."""
    np.testing.assert_allclose(probs, expected, atol=2e-5)
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4
    assert clear.mean() > 0.99
    assert np.array_equal(labels[clear], expected.argmax(0)[clear])


def test_large_image_matches_the_tile_loop(model):
    """A 512 x 640 image (15 x 19 tiles): the blended probabilities and the labels."""
    image = smooth_image((512, 640))
    labels, probs = predict_slices(model, image[None], TILE, inference="sliding-window", probabilities=True)
    assert labels.shape == (1, 512, 640) and labels.dtype == np.uint8
    assert probs.shape == (N_CLASSES, 1, 512, 640) and probs.dtype == np.float32
    assert len(np.unique(labels)) > 1  # the check below is not of a constant map
    assert_matches(labels[0], probs[:, 0], reference(model, image, TILE, 0.5))
    assert np.array_equal(probs.argmax(0), labels)


def test_overlap_sets_the_tiling(model):
    """Another overlap on a size the step does not divide (the last tiles end at the border);
    no overlap is a plain tiling.  The label map alone is the one given with the probabilities."""
    image = smooth_image((150, 200), seed=1)
    for overlap in (0.0, 0.25):
        labels, probs = predict_slices(
            model, image[None], TILE, inference="sliding-window", overlap=overlap, probabilities=True
        )
        assert_matches(labels[0], probs[:, 0], reference(model, image, TILE, overlap))
        alone = predict_slices(model, image[None], TILE, inference="sliding-window", overlap=overlap)
        assert np.array_equal(alone, labels)


@pytest.mark.parametrize("shape", [(40, 50), (40, 150), (64, 64)], ids=["smaller", "smaller-in-height", "one-tile"])
def test_an_image_smaller_than_the_tile_is_padded_and_cropped(model, shape):
    image = smooth_image(shape, seed=2)
    labels, probs = predict_slices(model, image[None], TILE, inference="sliding-window", probabilities=True)
    assert labels.shape == (1, *shape) and probs.shape == (N_CLASSES, 1, *shape)
    assert_matches(labels[0], probs[:, 0], reference(model, image, TILE, 0.5))
    if shape == (TILE, TILE):  # one tile: its weights cancel, the network's own output
        with torch.no_grad():
            direct = model(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
        assert np.array_equal(labels[0], direct)


def test_a_volume_is_predicted_slice_by_slice(model):
    """A (D, H, W) volume through ``model.predict``; its small slices share forward batches."""
    volume = smooth_image((3, 70, 90), seed=3)
    labels, probs = model.predict(volume, probabilities=True, inference="sliding-window", batch_size=8)
    assert labels.shape == (3, 70, 90) and probs.shape == (N_CLASSES, 3, 70, 90)
    for d in range(3):
        assert_matches(labels[d], probs[:, d], reference(model, volume[d], TILE, 0.5))


def test_prediction_leaves_the_model_as_it_was(model):
    model.train()
    try:
        state = {name: value.clone() for name, value in model.state_dict().items()}
        buffers = {name: value.clone() for name, value in model.named_buffers()}
        assert any(".memory." in name for name in buffers)
        volume = smooth_image((2, 80, 100), seed=4)
        model.predict(volume, probabilities=True, inference="sliding-window")
        assert model.training
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name
        for name, value in model.named_buffers():
            assert torch.equal(value, buffers[name]), name
    finally:
        model.eval()
    predict_array(model, volume, inference="sliding-window")
    assert not model.training


def test_bad_options_are_refused_before_any_work(model):
    image = np.zeros((1, 80, 80), np.float32)
    model.train()
    try:
        for overlap in (-0.1, 1.0, float("nan"), True):
            with pytest.raises(InputError, match=r"overlap must be a number in \[0, 1\)"):
                predict_slices(model, image, TILE, inference="sliding-window", overlap=overlap)
        with pytest.raises(InputError, match=r"inference must be one of \['resize', 'sliding-window'\]"):
            predict_slices(model, image, TILE, inference="tiles")
        assert model.training  # refused before the model was put in eval mode
    finally:
        model.eval()
    with pytest.raises(InputError, match="applies to inference='resize' only"):
        model.predict(image[0], inference="sliding-window", resample="logits")


def test_cli_sliding_window_gives_the_labels_of_predict_array(model, tmp_path, capsys):
    folder = model.save_pretrained(tmp_path / "model")
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume = smooth_image((2, 90, 130), seed=5)
    np.savez(inputs / "slab.npz", image=volume)
    common = ["--quiet", "predict", "--checkpoint", str(folder), "--input", str(inputs), "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "out"), "--inference", "sliding-window", "--overlap", "0.25"]) == 0
    with np.load(tmp_path / "out" / "slab.npz") as f:
        written = f["label"]
    expected = predict_array(model, volume, inference="sliding-window", overlap=0.25, volume=True)
    assert len(np.unique(expected)) > 1
    assert np.array_equal(written, expected)
    # the resize (default) predicts otherwise
    assert main([*common, "--output", str(tmp_path / "resized")]) == 0
    with np.load(tmp_path / "resized" / "slab.npz") as f:
        assert not np.array_equal(f["label"], written)
    capsys.readouterr()
    refused = {
        ("--inference", "sliding-window", "--overlap", "1"): "overlap must be a number in [0, 1), got 1.0",
        ("--inference", "sliding-window", "--resample", "logits"): "applies to inference='resize' only",
    }
    for n, (options, message) in enumerate(refused.items()):
        out = tmp_path / f"refused{n}"
        assert main([*common, "--output", str(out), *options]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu(model):
    """The tiling and blending run on the model's device and give the CPU's result there."""
    image = smooth_image((200, 260), seed=6)
    cpu_labels, cpu_probs = predict_slices(model, image[None], TILE, inference="sliding-window", probabilities=True)
    model.cuda()
    try:
        runs = [
            predict_slices(model, image[None], TILE, "cuda", inference="sliding-window", probabilities=True)
            for _ in range(2)
        ]
    finally:
        model.cpu()
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])  # deterministic
    # cuDNN's convolutions may round through TF32: a looser tolerance than the CPU's own
    np.testing.assert_allclose(runs[0][1], cpu_probs, atol=2e-3)
    assert (runs[0][0] == cpu_labels).mean() > 0.999
