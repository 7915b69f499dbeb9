"""Tests of simmpnet.evaluation.metrics against medpy and hand-computed cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from simmpnet.errors import InputError
from simmpnet.evaluation import (
    CONVENTIONS,
    asd,
    assd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    pooled_dice,
    summarize,
    surface_distances,
)

try:  # medpy is the reference implementation; only the comparisons with it need it
    import medpy.metric.binary as mb
except ImportError:  # pragma: no cover - depends on the environment
    mb = None
needs_medpy = pytest.mark.skipif(mb is None, reason="medpy (reference implementation) not installed")

TOL = 1e-6


def blob(shape: tuple[int, ...], seed: int, sigma: float = 2.0, quantile: float = 0.8) -> np.ndarray:
    """Blob-like random mask: thresholded Gaussian-smoothed noise (touches borders too)."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field > np.quantile(field, quantile)


def assert_like_medpy(a: np.ndarray, b: np.ndarray, spacing, connectivity: int) -> None:
    assert dice(a, b) == pytest.approx(mb.dc(a, b), abs=TOL)
    assert jaccard(a, b) == pytest.approx(mb.jc(a, b), abs=TOL)
    assert hd95(a, b, spacing, connectivity) == pytest.approx(
        mb.hd95(a, b, voxelspacing=spacing, connectivity=connectivity), abs=TOL
    )
    # asd is directed: check both directions
    assert asd(a, b, spacing, connectivity) == pytest.approx(
        mb.asd(a, b, voxelspacing=spacing, connectivity=connectivity), abs=TOL
    )
    assert asd(b, a, spacing, connectivity) == pytest.approx(
        mb.asd(b, a, voxelspacing=spacing, connectivity=connectivity), abs=TOL
    )
    assert assd(a, b, spacing, connectivity) == pytest.approx(
        mb.assd(a, b, voxelspacing=spacing, connectivity=connectivity), abs=TOL
    )


# ---------------------------------------------------------------------------------------------
# binary metrics vs medpy
# ---------------------------------------------------------------------------------------------
@needs_medpy
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.7, 0.7)])
@pytest.mark.parametrize("connectivity", [1, 2])
def test_binary_metrics_match_medpy_3d(seed, spacing, connectivity):
    shape = (18, 40, 36)
    a = blob(shape, seed)
    b = blob(shape, seed + 100)
    assert a.any() and b.any() and not np.array_equal(a, b)
    assert_like_medpy(a, b, spacing, connectivity)


@needs_medpy
@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("spacing", [None, (0.5, 1.5)])
@pytest.mark.parametrize("connectivity", [1, 2])
def test_binary_metrics_match_medpy_2d(seed, spacing, connectivity):
    a = blob((64, 50), seed, sigma=3.0, quantile=0.7)
    b = blob((64, 50), seed + 100, sigma=3.0, quantile=0.75)
    assert_like_medpy(a, b, spacing, connectivity)


@needs_medpy
def test_binary_metrics_match_medpy_overlapping_small_objects():
    # a realistic "prediction vs truth" pair: a perturbed copy of the truth
    truth = np.zeros((16, 48, 48), bool)
    truth[4:12, 10:30, 12:34] = True
    pred = blob(truth.shape, 7, sigma=1.5, quantile=0.9) ^ truth
    assert_like_medpy(pred, truth, (3.0, 0.8, 0.8), 1)
    assert_like_medpy(pred, truth, None, 3)


# ---------------------------------------------------------------------------------------------
# hand-computable cases
# ---------------------------------------------------------------------------------------------
def test_hand_computed_squares():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[3:8, 3:8] = True  # 25 voxels
    b[4:9, 4:9] = True  # 25 voxels, 16 shared
    assert dice(a, b) == pytest.approx(32 / 50)
    assert jaccard(a, b) == pytest.approx(16 / 34)


def test_hand_computed_single_voxels_anisotropic():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 5] = True
    b[5, 5] = True  # 3 voxels away along axis 0
    assert hd95(a, b) == pytest.approx(3.0)
    assert asd(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert assd(a, b, spacing=(2.0, 0.1)) == pytest.approx(6.0)
    assert dice(a, b) == 0.0


def test_asd_is_directed():
    # result: one voxel at 0; reference: voxels at 0 and 4 (1-D): result->ref = 0, ref->result = {0, 4}
    a = np.zeros(8, bool)
    b = np.zeros(8, bool)
    a[0] = True
    b[[0, 4]] = True
    d_ab, d_ba = surface_distances(a, b)
    assert sorted(d_ab.tolist()) == [0.0]
    assert sorted(d_ba.tolist()) == [0.0, 4.0]
    assert asd(a, b) == 0.0
    assert asd(b, a) == pytest.approx(2.0)
    assert assd(a, b) == pytest.approx(4.0 / 3.0)  # medpy 0.5.2: mean of concatenation


# ---------------------------------------------------------------------------------------------
# bounding-box restriction
# ---------------------------------------------------------------------------------------------
def _border_cases():
    shape = (12, 30, 26)
    corner_a = np.zeros(shape, bool)
    corner_a[0:3, 0:4, 0:5] = True  # touches three faces at the origin corner
    corner_b = np.zeros(shape, bool)
    corner_b[9:12, 24:30, 20:26] = True  # touches the opposite corner
    face = np.zeros(shape, bool)
    face[:, 10:15, 25] = True  # a sheet on the last face
    centre = np.zeros(shape, bool)
    centre[5:7, 12:18, 10:14] = True  # well inside
    rnd = blob(shape, 11, sigma=1.5)
    return [(corner_a, corner_b), (face, centre), (corner_a, face), (rnd, centre), (rnd, corner_b)]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("connectivity", [1, 3])
def test_bounding_box_restriction_is_exact(case, connectivity):
    a, b = _border_cases()[case]
    for spacing in (None, (2.5, 0.7, 0.7)):
        cropped = surface_distances(a, b, spacing, connectivity, use_bounding_box=True)
        full = surface_distances(a, b, spacing, connectivity, use_bounding_box=False)
        for c, f in zip(cropped, full):
            assert c.shape == f.shape
            np.testing.assert_allclose(c, f, rtol=0, atol=1e-12)
        if mb is not None:
            assert hd95(a, b, spacing, connectivity) == pytest.approx(
                mb.hd95(a, b, voxelspacing=spacing, connectivity=connectivity), abs=TOL
            )


def test_low_level_empty_mask_raises():
    a = np.zeros((5, 5), bool)
    b = a.copy()
    b[2, 2] = True
    with pytest.raises(InputError, match="result mask is empty"):
        hd95(a, b)
    with pytest.raises(InputError, match="reference mask is empty"):
        asd(b, a)
    with pytest.raises(InputError, match="empty"):
        assd(a, a)
    # dice/jaccard follow medpy: both empty -> 1
    assert dice(a, a) == 1.0 and jaccard(a, a) == 1.0


def test_low_level_bad_arguments():
    a = np.ones((4, 4), bool)
    with pytest.raises(InputError, match="same shape"):
        dice(a, np.ones((4, 5), bool))
    with pytest.raises(InputError, match="one value per axis"):
        hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="positive"):
        hd95(a, a, spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="connectivity"):
        hd95(a, a, connectivity=0)


# ---------------------------------------------------------------------------------------------
# per-class evaluation
# ---------------------------------------------------------------------------------------------
def _labelled_pair():
    shape = (10, 32, 28)
    truth = np.zeros(shape, np.int64)
    truth[2:8, 4:14, 4:12] = 1
    truth[3:9, 18:28, 14:24] = 2
    # class 3 absent from truth; class 4 absent from both
    pred = np.zeros(shape, np.int64)
    pred[2:7, 5:15, 4:13] = 1
    pred[blob(shape, 5, sigma=1.5, quantile=0.85)] = 2
    pred[0:2, 0:3, 0:3] = 3
    return pred, truth


@needs_medpy
def test_evaluate_case_matches_medpy_and_conventions():
    pred, truth = _labelled_pair()
    spacing = (2.5, 0.7, 0.7)
    res = evaluate_case(pred, truth, n_classes=5, spacing=spacing)
    assert res["n_classes"] == 5 and sorted(res["classes"]) == [1, 2, 3, 4]
    for c in (1, 2):
        p, t = pred == c, truth == c
        paper, excl = res["classes"][c]["paper"], res["classes"][c]["excluded"]
        assert paper["dsc"] == pytest.approx(mb.dc(p, t), abs=TOL)
        assert paper["jaccard"] == pytest.approx(mb.jc(p, t), abs=TOL)
        assert paper["hd95"] == pytest.approx(mb.hd95(p, t), abs=TOL)  # voxel units
        assert paper["asd"] == pytest.approx(mb.asd(p, t), abs=TOL)
        assert excl["dsc"] == paper["dsc"] and excl["jaccard"] == paper["jaccard"]
        assert excl["hd95"] == pytest.approx(mb.hd95(p, t, voxelspacing=spacing), abs=TOL)  # mm
        assert excl["asd"] == pytest.approx(mb.asd(p, t, voxelspacing=spacing), abs=TOL)
        counts = res["classes"][c]["counts"]
        assert counts == {
            "pred": int(p.sum()), "truth": int(t.sum()), "intersection": int((p & t).sum())
        }
    # class 3: prediction non-empty, truth empty
    assert res["classes"][3]["paper"] == {"dsc": 1.0, "hd95": 0.0, "jaccard": 1.0, "asd": 0.0}
    assert res["classes"][3]["excluded"] == {"dsc": 0.0, "hd95": None, "jaccard": 0.0, "asd": None}
    # class 4: both empty
    assert res["classes"][4]["paper"] == {"dsc": 0.0, "hd95": 0.0, "jaccard": 0.0, "asd": 0.0}
    assert res["classes"][4]["excluded"] == {"dsc": None, "hd95": None, "jaccard": None, "asd": None}


def test_evaluate_case_prediction_empty_truth_present_2d():
    truth = np.zeros((8, 8), np.uint8)
    truth[2:5, 2:5] = 1
    pred = np.zeros_like(truth)
    res = evaluate_case(pred, truth, n_classes=2)
    assert res["classes"][1]["paper"] == {"dsc": 0.0, "hd95": 0.0, "jaccard": 0.0, "asd": 0.0}
    assert res["classes"][1]["excluded"] == {"dsc": 0.0, "hd95": None, "jaccard": 0.0, "asd": None}
    assert res["spacing"] is None


def test_evaluate_case_accepts_integral_floats():
    truth = np.zeros((6, 6), np.float32)
    truth[1:3, 1:3] = 1.0
    res = evaluate_case(truth, truth.astype(np.int16), n_classes=2)
    assert res["classes"][1]["paper"]["dsc"] == 1.0
    assert res["classes"][1]["excluded"]["hd95"] == 0.0


@pytest.mark.parametrize(
    "pred, truth, n_classes, message",
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), 3, "same shape"),
        (np.full((4, 4), 3), np.zeros((4, 4), int), 3, r"label 3 but n_classes is 3"),
        (np.zeros((4, 4), int), np.full((4, 4), -1), 3, "negative label -1"),
        (np.full((4, 4), 1.5), np.zeros((4, 4), int), 3, "non-integer label"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), int), 3, "NaN"),
        (np.zeros(4, int), np.zeros(4, int), 3, "2D or 3D"),
        (np.zeros((4, 4), int), np.zeros((4, 4), int), 1, "n_classes"),
        (np.array([["a"]]), np.zeros((1, 1), int), 3, "integer class labels"),
    ],
)
def test_evaluate_case_bad_input(pred, truth, n_classes, message):
    with pytest.raises(InputError, match=message):
        evaluate_case(pred, truth, n_classes)


def test_evaluate_case_bad_spacing():
    a = np.zeros((4, 4, 4), int)
    with pytest.raises(InputError, match="one value per axis"):
        evaluate_case(a, a, 2, spacing=(1.0, 1.0))


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------
def _fake_case(classes: dict[int, tuple[dict, dict, dict]], spacing=(1.0, 1.0)):
    return {
        "n_classes": len(classes) + 1,
        "shape": [4, 4],
        "spacing": list(spacing) if spacing is not None else None,
        "classes": {
            c: {"paper": p, "excluded": e, "counts": n} for c, (p, e, n) in classes.items()
        },
    }


def test_summarize_means_skip_none_and_both_conventions():
    # two tiny 2D cases, 2 classes, built with evaluate_case so the numbers are hand-checkable
    t1 = np.zeros((10, 10), int)
    t1[1:3, 1:3] = 1  # class 1 present, class 2 absent
    p1 = t1.copy()  # perfect class 1, class 2 absent in both
    t2 = np.zeros((10, 10), int)
    t2[5:7, 5:7] = 2  # class 2 present, class 1 absent
    p2 = np.zeros((10, 10), int)
    p2[5:7, 5:6] = 2  # half of class 2 (dsc 2*2/(2+4) = 2/3)
    p2[0, 0] = 1  # class 1 hallucinated
    cases = {
        "a": evaluate_case(p1, t1, 3, spacing=(1.0, 1.0)),
        "b": evaluate_case(p2, t2, 3, spacing=(1.0, 1.0)),
    }
    s = summarize(cases, ["liver", "kidney"])
    json.dumps(s, allow_nan=False)  # JSON-serialisable, no NaN
    assert s["headline_convention"] == "excluded"
    assert s["protocol"] == CONVENTIONS["excluded"]
    assert s["classes"] == ["liver", "kidney"] and s["n_cases"] == 2
    assert set(s["conventions"]) == {"excluded", "paper"}
    assert s["conventions"]["paper"]["distance_unit"] == "voxel"
    assert s["distance_unit"] == "mm"

    # excluded: liver = mean(1, 0) = 0.5 ; kidney: case a both empty -> skipped -> 2/3
    ex = s["per_class"]
    assert ex["liver"]["dsc"] == pytest.approx(0.5)
    assert ex["kidney"]["dsc"] == pytest.approx(2 / 3)
    assert ex["kidney"]["n_cases"]["dsc"] == 1
    assert ex["liver"]["hd95"] == pytest.approx(0.0)  # only case a has a distance
    assert ex["liver"]["n_cases"]["hd95"] == 1
    assert s["mean"]["dsc"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["per_case"]["a"]["kidney"] == {"dsc": None, "hd95": None, "jaccard": None, "asd": None}

    # paper: liver = mean(1, 1 [pred non-empty, truth empty]) ; kidney = mean(0 [both empty], 2/3)
    pa = s["conventions"]["paper"]["per_class"]
    assert pa["liver"]["dsc"] == pytest.approx(1.0)
    assert pa["kidney"]["dsc"] == pytest.approx(1 / 3)
    assert s["conventions"]["paper"]["mean"]["dsc"] == pytest.approx((1.0 + 1 / 3) / 2)

    # pooled: liver 2*4/(5+4), kidney 2*2/(2+4)
    assert s["pooled_dsc"]["per_class"]["liver"] == pytest.approx(8 / 9)
    assert s["pooled_dsc"]["per_class"]["kidney"] == pytest.approx(2 / 3)
    assert pooled_dice(list(cases.values())) == {1: pytest.approx(8 / 9), 2: pytest.approx(2 / 3)}

    # a JSON round trip (string class keys) summarizes identically; paper headline selectable
    again = summarize(json.loads(json.dumps(cases)), ["liver", "kidney"], headline="paper")
    assert again["mean"] == s["conventions"]["paper"]["mean"]


def test_summarize_all_none_class_gives_none_and_is_skipped():
    none4 = {"dsc": None, "hd95": None, "jaccard": None, "asd": None}
    zero4 = {"dsc": 0.0, "hd95": 0.0, "jaccard": 0.0, "asd": 0.0}
    good = {"dsc": 0.8, "hd95": 2.0, "jaccard": 0.6, "asd": 1.0}
    counts0 = {"pred": 0, "truth": 0, "intersection": 0}
    counts1 = {"pred": 5, "truth": 5, "intersection": 4}
    case = _fake_case({1: (good, good, counts1), 2: (zero4, none4, counts0)})
    s = summarize([case, case], ["a", "b"])
    assert s["per_class"]["b"] == {**none4, "n_cases": {"dsc": 0, "hd95": 0, "jaccard": 0, "asd": 0}}
    assert s["mean"] == pytest.approx(good)  # class b skipped, not counted as 0
    assert s["pooled_dsc"]["per_class"]["b"] is None
    assert s["pooled_dsc"]["mean"] == pytest.approx(0.8)
    assert not math.isnan(s["conventions"]["paper"]["mean"]["dsc"])


def test_summarize_bad_input():
    case = evaluate_case(np.zeros((4, 4), int), np.zeros((4, 4), int), 3)
    with pytest.raises(InputError, match="foreground classes"):
        summarize([case], ["background", "a", "b"])
    with pytest.raises(InputError, match="empty"):
        summarize([], ["a", "b"])
    with pytest.raises(InputError, match="headline"):
        summarize([case], ["a", "b"], headline="mean")
    with pytest.raises(InputError, match="unique"):
        summarize([case], ["a", "a"])
    with_mm = evaluate_case(np.zeros((4, 4), int), np.zeros((4, 4), int), 3, spacing=(1.0, 2.0))
    with pytest.raises(InputError, match="different units"):
        summarize([case, with_mm], ["a", "b"])
