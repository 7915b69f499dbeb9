"""Slice-wise prediction: the two ways a prediction returns to the slice size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simmpnet.errors import InputError
from simmpnet.evaluation.evaluate import evaluate_volumes
from simmpnet.evaluation.inference import predict_slices
from simmpnet.evaluation.resample import RESAMPLE_MODES
from simmpnet.evaluation.metrics import dice
from simmpnet.evaluation.report import metrics_markdown


def threshold_network() -> nn.Module:
    """A 1x1 convolution whose class-1 logit exceeds the class-0 logit where the image is
    above 0.5: its logits are linear in the image, so their bilinear interpolation is that of
    the image, and the predicted boundary is the image's 0.5 level line."""
    net = nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.5, -0.5]))
    return net


def disk(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float32)


def test_logit_resampling_follows_the_boundary_at_full_resolution():
    """A network at 32 px predicting 181-px slices: the nearest resize of its label map
    gives blocks of 5.7 px, the interpolated logits a smooth outline; both stay in place
    (pixel centres mapped as the input resize maps them: corners aligned)."""
    truth = np.stack([disk(181, (90.0, 95.0), 50.0), disk(181, (70.0, 60.0), 35.0)])
    net = threshold_network()
    scores = {}
    for mode in RESAMPLE_MODES:
        pred = predict_slices(net, truth, 32, resample=mode)
        assert pred.shape == truth.shape and pred.dtype == np.uint8
        scores[mode] = dice(pred, truth)
        for p, t in zip(pred, truth):
            assert np.allclose(np.argwhere(p).mean(0), np.argwhere(t).mean(0), atol=0.75)  # not shifted
            assert abs(p.sum() / t.sum() - 1.0) < 0.04  # nor shrunk or grown
    assert scores["logits"] > 0.975
    assert scores["logits"] > scores["labels"] + 0.01, scores


def test_both_modes_agree_at_the_network_size():
    """Nothing to resample: both modes give the argmax of the logits."""
    image = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    net = threshold_network()
    expected = net(torch.from_numpy(image)[:, None]).argmax(1).numpy()
    for mode in RESAMPLE_MODES:
        assert np.array_equal(predict_slices(net, image, 32, resample=mode), expected)


def test_evaluation_records_the_resampling():
    volume = np.stack([disk(64, (30.0, 34.0), 20.0)] * 2)
    case = {"name": "case0", "image": volume, "label": volume.astype(np.uint8), "spacing": (2.0, 1.0, 1.0)}
    net = threshold_network()
    summary = evaluate_volumes(net, [case], 16, 2, ["background", "disk"], resample="logits")
    assert summary["resample"] == "logits"
    assert "bilinear interpolation of the logits" in metrics_markdown(summary)
    labels = evaluate_volumes(net, [case], 16, 2, ["background", "disk"])
    assert labels["resample"] == "labels" and "nearest resize of the label map" in metrics_markdown(labels)
    assert summary["mean"]["dsc"] > labels["mean"]["dsc"]


def test_an_unknown_resampling_is_refused():
    net = threshold_network()
    image = np.zeros((1, 16, 16), np.float32)
    with pytest.raises(InputError, match=r"resample must be one of \['labels', 'logits'\], got 'cubic'"):
        predict_slices(net, image, 16, resample="cubic")
    with pytest.raises(InputError, match="resample must be one of"):
        evaluate_volumes(net, [], 16, 2, ["background", "x"], resample="nearest")
