"""Segmentation metrics: medpy-compatible binary metrics, per-class evaluation, aggregation.

Three layers:

1. Binary-mask metrics (`dice`, `jaccard`, `hd95`, `asd`,
   `assd`, plus `surface_distances`) that reproduce ``medpy.metric.binary``
   (medpy 0.5.2: ``dc``, ``jc``, ``hd95``, ``asd``, ``assd``) with numpy/scipy only. Surfaces
   are ``mask XOR binary_erosion(mask, generate_binary_structure(ndim, connectivity))`` and
   distances come from ``scipy.ndimage.distance_transform_edt(~other_surface, sampling=spacing)``,
   as in medpy. The work is restricted to the bounding box of both masks plus a one-voxel
   margin (clipped to the volume), which gives exactly the same numbers (every surface voxel
   and every voxel whose erosion could change lies inside that box, and a Euclidean distance
   transform only depends on where its zeros are).
2. `evaluate_case`: per foreground class of a labelled prediction vs a labelled truth,
   under two conventions (see `CONVENTIONS`):

   * ``"paper"`` -- the protocol of the Sim-MPNet paper (and TransUNet's ``test_single_volume``):
     both non-empty -> computed, distances in *voxel* units (spacing ignored);
     prediction non-empty and truth empty -> dsc 1, jaccard 1, hd95 0, asd 0;
     prediction empty -> dsc 0, jaccard 0, hd95 0, asd 0.
   * ``"excluded"`` -- both non-empty -> computed, distances in the units of ``spacing``
     (mm when the spacing is given in mm, voxels when no spacing is given);
     both empty -> every metric ``None`` (the case does not count for that class);
     exactly one empty -> dsc 0, jaccard 0, hd95 ``None``, asd ``None`` (a missed or
     hallucinated organ is an overlap failure, but has no defined surface distance).

3. `summarize` (and `pooled_dice`): means over cases per class, then over classes,
   skipping ``None``; the headline is the ``"excluded"`` convention, the paper protocol is
   reported next to it. The result is JSON-serialisable.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from simmpnet.errors import InputError

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "asd",
    "assd",
    "dice",
    "evaluate_case",
    "hd95",
    "jaccard",
    "pooled_dice",
    "summarize",
    "surface_distances",
]

logger = logging.getLogger(__name__)

#: Metrics reported per class and case, in this order.
METRIC_NAMES: tuple[str, ...] = ("dsc", "hd95", "jaccard", "asd")

#: Description of each convention, written into every summary.
CONVENTIONS: dict[str, str] = {
    "excluded": (
        "excluded: per case and class, prediction and truth both non-empty -> DSC, Jaccard, "
        "HD95 and ASD (medpy definitions) with distances in physical units of the voxel "
        "spacing (mm); both empty -> excluded from every mean; exactly one empty -> DSC 0, "
        "Jaccard 0, HD95/ASD excluded from the distance means. Means: over cases per class "
        "(skipping excluded cases), then over classes."
    ),
    "paper": (
        "paper: Sim-MPNet/TransUNet protocol, per case and class, prediction and truth both "
        "non-empty -> DSC, Jaccard, HD95 and ASD (medpy definitions) in voxel units (spacing "
        "ignored); prediction non-empty and truth empty -> DSC 1, Jaccard 1, HD95 0, ASD 0; "
        "prediction empty -> DSC 0, Jaccard 0, HD95 0, ASD 0. Means: over all cases per "
        "class, then over classes."
    ),
}

_BBOX_MARGIN = 1


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------
def _as_mask(array: Any, name: str) -> np.ndarray:
    """Convert ``array`` to a boolean array of at least one dimension (non-zero -> True)."""
    try:
        arr = np.asarray(array)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must be a boolean or numeric mask, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return np.atleast_1d(arr.astype(bool, copy=False))


def _pair_of_masks(result: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    res = _as_mask(result, "result")
    ref = _as_mask(reference, "reference")
    if res.shape != ref.shape:
        raise InputError(
            f"result and reference must have the same shape, got {res.shape} and {ref.shape}"
        )
    return res, ref


def _normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel spacing as a float64 array of length ``ndim``; ``None`` means 1 on every axis."""
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    try:
        arr = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"spacing must be a number or a sequence of numbers, got {spacing!r}"
        ) from exc
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.ndim != 1 or arr.shape[0] != ndim:
        raise InputError(
            f"spacing must have one value per axis ({ndim}), got {np.asarray(spacing).tolist()!r}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"spacing values must be finite and positive, got {arr.tolist()!r}")
    return np.ascontiguousarray(arr)


def _check_connectivity(connectivity: int) -> int:
    if isinstance(connectivity, bool) or not isinstance(connectivity, (int, np.integer)):
        raise InputError(f"connectivity must be an integer >= 1, got {connectivity!r}")
    if connectivity < 1:
        raise InputError(f"connectivity must be >= 1, got {connectivity}")
    return int(connectivity)


# --------------------------------------------------------------------------------------------
# binary metrics
# --------------------------------------------------------------------------------------------
def dice(result: Any, reference: Any) -> float:
    """Dice similarity coefficient, as ``medpy.metric.binary.dc``.

    ``2 |A & B| / (|A| + |B|)``; non-zero values count as foreground.

    Args:
        result: predicted binary mask, any shape (``(H, W)`` or ``(D, H, W)`` typically).
        reference: reference binary mask, same shape as ``result``.

    Returns:
        The Dice coefficient in ``[0, 1]``; ``1.0`` when both masks are empty (as medpy).

    Raises:
        InputError: if the shapes differ or the inputs are not boolean/numeric masks.
    """
    res, ref = _pair_of_masks(result, reference)
    intersection = int(np.count_nonzero(res & ref))
    total = int(np.count_nonzero(res)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * intersection / float(total)


def jaccard(result: Any, reference: Any) -> float:
    """Jaccard index (intersection over union), as ``medpy.metric.binary.jc``.

    Args:
        result: predicted binary mask, any shape.
        reference: reference binary mask, same shape as ``result``.

    Returns:
        ``|A & B| / |A | B|`` in ``[0, 1]``; ``1.0`` when both masks are empty (as medpy).

    Raises:
        InputError: if the shapes differ or the inputs are not boolean/numeric masks.
    """
    res, ref = _pair_of_masks(result, reference)
    union = int(np.count_nonzero(res | ref))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(res & ref)) / float(union)


def _bounding_box(mask_a: np.ndarray, mask_b: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask_a | mask_b`` grown by ``margin``, clipped."""
    union = mask_a | mask_b
    slices = []
    for axis in range(union.ndim):
        other_axes = tuple(a for a in range(union.ndim) if a != axis)
        line = union.any(axis=other_axes) if other_axes else union
        present = np.flatnonzero(line)
        lo = max(int(present[0]) - margin, 0)
        hi = min(int(present[-1]) + 1 + margin, union.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def _surfaces(
    result: np.ndarray, reference: np.ndarray, connectivity: int, use_bounding_box: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Surface (1-voxel border) masks of two non-empty boolean masks, possibly cropped."""
    if not result.any():
        raise InputError(
            "result mask is empty: surface distances (HD95, ASD, ASSD) are undefined for an "
            "empty mask"
        )
    if not reference.any():
        raise InputError(
            "reference mask is empty: surface distances (HD95, ASD, ASSD) are undefined for an "
            "empty mask"
        )
    if use_bounding_box:
        box = _bounding_box(result, reference, _BBOX_MARGIN)
        result, reference = result[box], reference[box]
    footprint = generate_binary_structure(result.ndim, connectivity)
    result_border = result ^ binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ binary_erosion(reference, structure=footprint, iterations=1)
    return result_border, reference_border


def _directed(from_border: np.ndarray, to_border: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance of every voxel of ``from_border`` to the nearest voxel of ``to_border``."""
    dt = distance_transform_edt(~to_border, sampling=spacing)
    return np.asarray(dt[from_border], dtype=np.float64)


def surface_distances(
    result: Any,
    reference: Any,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
    *,
    use_bounding_box: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface distances in both directions, as medpy's private ``__surface_distances``.

    Args:
        result: predicted binary mask, any number of dimensions, must be non-empty.
        reference: reference binary mask, same shape as ``result``, must be non-empty.
        spacing: voxel spacing, one value per axis (anisotropic allowed) or a single number;
            ``None`` means 1 on every axis (distances in voxels).
        connectivity: connectivity of the structuring element used to extract surfaces
            (``scipy.ndimage.generate_binary_structure(ndim, connectivity)``), default 1.
        use_bounding_box: compute on the bounding box of both masks plus a one-voxel margin
            (identical results, less work). ``False`` works on the full array.

    Returns:
        ``(result_to_reference, reference_to_result)``: 1-D float64 arrays with, for every
        surface voxel of the first mask, the distance to the nearest surface voxel of the other.

    Raises:
        InputError: if the shapes differ, a mask is empty, or spacing/connectivity are invalid.
    """
    res, ref = _pair_of_masks(result, reference)
    sampling = _normalize_spacing(spacing, res.ndim)
    conn = _check_connectivity(connectivity)
    res_border, ref_border = _surfaces(res, ref, conn, use_bounding_box)
    return _directed(res_border, ref_border, sampling), _directed(ref_border, res_border, sampling)


def _hd95_from(d_rr: np.ndarray, d_rf: np.ndarray) -> float:
    return float(np.percentile(np.concatenate((d_rr, d_rf)), 95))


def hd95(
    result: Any,
    reference: Any,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> float:
    """95th percentile of the symmetric surface distances, as ``medpy.metric.binary.hd95``.

    The percentile (numpy, linear interpolation) is taken over the concatenation of both
    directed surface-distance sets.

    Args:
        result: predicted binary mask, non-empty.
        reference: reference binary mask, same shape, non-empty.
        spacing: voxel spacing per axis (or one number); ``None`` -> 1 (voxel units).
        connectivity: surface structuring-element connectivity, default 1.

    Returns:
        HD95 in the units of ``spacing``.

    Raises:
        InputError: if the shapes differ, a mask is empty, or spacing/connectivity are invalid.
    """
    return _hd95_from(*surface_distances(result, reference, spacing, connectivity))


def asd(
    result: Any,
    reference: Any,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> float:
    """Average surface distance from ``result`` to ``reference``, as ``medpy.metric.binary.asd``.

    Not symmetric: the mean over the surface voxels of ``result`` of the distance to the
    nearest surface voxel of ``reference``. Only this one direction is computed.

    Args:
        result: predicted binary mask, non-empty.
        reference: reference binary mask, same shape, non-empty.
        spacing: voxel spacing per axis (or one number); ``None`` -> 1 (voxel units).
        connectivity: surface structuring-element connectivity, default 1.

    Returns:
        ASD in the units of ``spacing``.

    Raises:
        InputError: if the shapes differ, a mask is empty, or spacing/connectivity are invalid.
    """
    res, ref = _pair_of_masks(result, reference)
    sampling = _normalize_spacing(spacing, res.ndim)
    res_border, ref_border = _surfaces(res, ref, _check_connectivity(connectivity), True)
    return float(_directed(res_border, ref_border, sampling).mean())


def assd(
    result: Any,
    reference: Any,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> float:
    """Average symmetric surface distance, as ``medpy.metric.binary.assd`` (medpy 0.5.2).

    medpy 0.5.2 defines it as the mean of the *concatenated* directed distances of both
    directions (so each surface voxel weighs the same), not the mean of the two ASDs.

    Args:
        result: predicted binary mask, non-empty.
        reference: reference binary mask, same shape, non-empty.
        spacing: voxel spacing per axis (or one number); ``None`` -> 1 (voxel units).
        connectivity: surface structuring-element connectivity, default 1.

    Returns:
        ASSD in the units of ``spacing``.

    Raises:
        InputError: if the shapes differ, a mask is empty, or spacing/connectivity are invalid.
    """
    d_rr, d_rf = surface_distances(result, reference, spacing, connectivity)
    return float(np.concatenate((d_rr, d_rf)).mean())


# --------------------------------------------------------------------------------------------
# per-class evaluation of labelled volumes
# --------------------------------------------------------------------------------------------
def _as_label_map(array: Any, name: str, n_classes: int) -> np.ndarray:
    try:
        arr = np.asarray(array)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.ndim not in (2, 3):
        raise InputError(f"{name} must be a 2D or 3D label map, got {arr.ndim} dimension(s)")
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.int64)
    elif kind == "f":
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{name} contains NaN or infinite values; labels must be integers")
        if not np.all(arr == np.round(arr)):
            bad = arr[arr != np.round(arr)].flat[0]
            raise InputError(
                f"{name} contains non-integer label values (e.g. {float(bad)!r}); labels must "
                f"be integers in [0, {n_classes - 1}]"
            )
        arr = arr.astype(np.int64)
    elif kind not in "iu":
        raise InputError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise InputError(
                f"{name} contains negative label {lo}; labels must be in [0, {n_classes - 1}]"
            )
        if hi >= n_classes:
            raise InputError(
                f"{name} contains label {hi} but n_classes is {n_classes}; labels must be in "
                f"[0, {n_classes - 1}]"
            )
    return arr


def _paper_metrics(
    p_empty: bool, t_empty: bool, computed: dict[str, float] | None
) -> dict[str, float]:
    if p_empty:
        return {"dsc": 0.0, "hd95": 0.0, "jaccard": 0.0, "asd": 0.0}
    if t_empty:
        return {"dsc": 1.0, "hd95": 0.0, "jaccard": 1.0, "asd": 0.0}
    assert computed is not None
    return computed


def evaluate_case(
    pred: Any,
    truth: Any,
    n_classes: int,
    spacing: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> dict[str, Any]:
    """Per-class metrics of one labelled prediction against its labelled truth.

    Every foreground class ``c`` in ``1 .. n_classes - 1`` is evaluated as the binary pair
    ``(pred == c, truth == c)`` under both conventions (see the module docstring and
    `CONVENTIONS`): ``"paper"`` (distances in voxels, empty cases scored as in the
    paper) and ``"excluded"`` (distances in units of ``spacing``, undefined values ``None``).
    The voxel counts needed for a pooled DSC are kept as well.

    Args:
        pred: predicted label map, integer array of shape ``(H, W)`` or ``(D, H, W)``
            (float arrays holding whole numbers and bool arrays are accepted).
        truth: ground-truth label map, same shape as ``pred``.
        n_classes: number of classes including background (label 0); labels must lie in
            ``[0, n_classes - 1]``.
        spacing: voxel spacing per axis in mm (same axis order as the arrays), or one number;
            ``None`` -> 1 on every axis, so "excluded" distances are then in voxels. The
            "paper" convention always uses voxel units.
        connectivity: surface structuring-element connectivity, default 1 (as medpy).

    Returns:
        A JSON-serialisable dict::

            {"n_classes": int, "shape": [...], "spacing": [...] or None,
             "classes": {c: {"paper": {"dsc", "hd95", "jaccard", "asd": float},
                             "excluded": {"dsc", "hd95", "jaccard", "asd": float or None},
                             "counts": {"pred": int, "truth": int, "intersection": int}}}}

        with integer class ids ``c`` as keys.

    Raises:
        InputError: if ``n_classes`` < 2, the shapes differ, an array is not 2D/3D, or a label
            is negative, non-integer or ``>= n_classes``.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise InputError(
            f"n_classes must be an integer >= 2 (background + 1 class), got {n_classes!r}"
        )
    n_classes = int(n_classes)
    pred_arr = _as_label_map(pred, "pred", n_classes)
    truth_arr = _as_label_map(truth, "truth", n_classes)
    if pred_arr.shape != truth_arr.shape:
        raise InputError(
            f"pred and truth must have the same shape, got {pred_arr.shape} and {truth_arr.shape}"
        )
    mm = _normalize_spacing(spacing, pred_arr.ndim)
    voxel = np.ones(pred_arr.ndim, dtype=np.float64)
    same_units = bool(np.all(mm == voxel))
    conn = _check_connectivity(connectivity)

    classes: dict[int, dict[str, Any]] = {}
    for c in range(1, n_classes):
        p = pred_arr == c
        t = truth_arr == c
        n_p = int(np.count_nonzero(p))
        n_t = int(np.count_nonzero(t))
        n_i = int(np.count_nonzero(p & t))
        p_empty, t_empty = n_p == 0, n_t == 0
        paper_computed: dict[str, float] | None = None
        if not p_empty and not t_empty:
            dsc = 2.0 * n_i / float(n_p + n_t)
            jac = n_i / float(n_p + n_t - n_i)
            p_border, t_border = _surfaces(p, t, conn, True)
            d_pt, d_tp = _directed(p_border, t_border, voxel), _directed(t_border, p_border, voxel)
            paper_computed = {
                "dsc": dsc,
                "hd95": _hd95_from(d_pt, d_tp),
                "jaccard": jac,
                "asd": float(d_pt.mean()),
            }
            if same_units:
                excluded: dict[str, float | None] = dict(paper_computed)
            else:
                d_pt, d_tp = _directed(p_border, t_border, mm), _directed(t_border, p_border, mm)
                excluded = {
                    "dsc": dsc,
                    "hd95": _hd95_from(d_pt, d_tp),
                    "jaccard": jac,
                    "asd": float(d_pt.mean()),
                }
        elif p_empty and t_empty:
            excluded = {name: None for name in METRIC_NAMES}
        else:
            excluded = {"dsc": 0.0, "hd95": None, "jaccard": 0.0, "asd": None}
        classes[c] = {
            "paper": _paper_metrics(p_empty, t_empty, paper_computed),
            "excluded": excluded,
            "counts": {"pred": n_p, "truth": n_t, "intersection": n_i},
        }
        logger.debug("class %d: pred %d, truth %d, intersection %d voxels", c, n_p, n_t, n_i)
    return {
        "n_classes": n_classes,
        "shape": list(pred_arr.shape),
        "spacing": None if spacing is None else [float(s) for s in mm],
        "classes": classes,
    }


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return float(math.fsum(kept) / len(kept))


def _class_entry(case: Mapping[str, Any], c: int, case_id: str) -> Mapping[str, Any]:
    classes = case.get("classes") if isinstance(case, Mapping) else None
    if not isinstance(classes, Mapping):
        raise InputError(
            f"case {case_id!r} is not a result of evaluate_case (no 'classes' mapping)"
        )
    entry = classes.get(c, classes.get(str(c)))  # str keys after a JSON round trip
    if entry is None:
        raise InputError(
            f"case {case_id!r} has no result for class {c}; was it evaluated with fewer classes "
            f"than class_names lists?"
        )
    return entry


def _normalize_cases(
    per_case_results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> dict[str, Mapping[str, Any]]:
    if isinstance(per_case_results, Mapping):
        cases = {str(k): v for k, v in per_case_results.items()}
    elif isinstance(per_case_results, Sequence) and not isinstance(per_case_results, (str, bytes)):
        cases = {f"case_{i:04d}": v for i, v in enumerate(per_case_results)}
    else:
        raise InputError(
            "per_case_results must be a mapping case id -> evaluate_case result, or a sequence "
            f"of such results; got {type(per_case_results).__name__}"
        )
    if not cases:
        raise InputError("per_case_results is empty: there is nothing to summarize")
    return cases


def pooled_dice(
    per_case_results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    class_ids: Sequence[int] | None = None,
) -> dict[int, float | None]:
    """Dice per class pooled over voxels of all cases.

    ``2 * sum_cases |P_c & T_c| / sum_cases (|P_c| + |T_c|)``, from the ``counts`` that
    `evaluate_case` stores. Large organs weigh more than in a per-case mean.

    Args:
        per_case_results: results of `evaluate_case`, as a mapping case id -> result or
            a sequence of results.
        class_ids: foreground class ids to pool; default ``1 .. n_classes - 1`` of the first case.

    Returns:
        Class id -> pooled DSC, ``None`` for a class absent from every prediction and truth.

    Raises:
        InputError: if ``per_case_results`` is empty or a case lacks a requested class.
    """
    cases = _normalize_cases(per_case_results)
    if class_ids is None:
        first = next(iter(cases.values()))
        try:
            class_ids = list(range(1, int(first["n_classes"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("per_case_results entries must be results of evaluate_case") from exc
    pooled: dict[int, float | None] = {}
    for c in class_ids:
        inter = total = 0
        for case_id, case in cases.items():
            counts = _class_entry(case, int(c), case_id)["counts"]
            inter += int(counts["intersection"])
            total += int(counts["pred"]) + int(counts["truth"])
        pooled[int(c)] = None if total == 0 else 2.0 * inter / float(total)
    return pooled


def _convention_block(
    cases: Mapping[str, Mapping[str, Any]], names: Sequence[str], convention: str
) -> dict[str, Any]:
    per_case: dict[str, dict[str, dict[str, float | None]]] = {}
    for case_id, case in cases.items():
        per_case[case_id] = {
            name: {
                m: _json_float(_class_entry(case, c, case_id)[convention][m]) for m in METRIC_NAMES
            }
            for c, name in enumerate(names, start=1)
        }
    per_class: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {}
        count: dict[str, int] = {}
        for m in METRIC_NAMES:
            values = [per_case[case_id][name][m] for case_id in per_case]
            entry[m] = _mean(values)
            count[m] = sum(v is not None for v in values)
        entry["n_cases"] = count
        per_class[name] = entry
    mean = {m: _mean([per_class[name][m] for name in names]) for m in METRIC_NAMES}
    return {
        "description": CONVENTIONS[convention],
        "mean": mean,
        "per_class": per_class,
        "per_case": per_case,
    }


def _json_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(
    per_case_results: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    headline: str = "excluded",
) -> dict[str, Any]:
    """Aggregate `evaluate_case` results into a JSON-serialisable report.

    Means are taken over cases per class (skipping ``None``), then over classes (skipping
    classes whose per-class mean is ``None``). Both conventions are always reported under
    ``"conventions"``; ``"mean"``, ``"per_class"`` and ``"per_case"`` at the top level repeat
    the ``headline`` convention, which ``"protocol"`` describes.

    Args:
        per_case_results: mapping case id -> `evaluate_case` result, or a sequence of
            results (ids ``case_0000``, ``case_0001``, ... are then assigned).
        class_names: names of the foreground classes, in class-id order ``1 .. n_classes - 1``
            (background is not listed).
        headline: convention for the top-level numbers, ``"excluded"`` (default; empty/empty
            pairs excluded, distances in mm) or ``"paper"``.

    Returns:
        ``{"protocol": str, "headline_convention": str, "distance_unit": str,
        "classes": [names], "n_cases": int,
        "mean": {"dsc", "hd95", "jaccard", "asd"}, "per_class": {name: {...}},
        "per_case": {case_id: {name: {...}}},
        "conventions": {"excluded": {...}, "paper": {...}},
        "pooled_dsc": {"per_class": {name: float|None}, "mean": float|None}}``.
        Each convention block has ``description``, ``distance_unit``, ``mean``,
        ``per_class`` (metric means plus ``n_cases`` counted per metric) and ``per_case``.

    Raises:
        InputError: on an unknown ``headline``, empty inputs, duplicate or missing class
            names, mixed spacing/no-spacing cases, or cases evaluated with another number
            of classes.
    """
    if headline not in CONVENTIONS:
        raise InputError(f"headline must be one of {sorted(CONVENTIONS)}, got {headline!r}")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise InputError("class_names must be a non-empty sequence of foreground class names")
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise InputError(f"class_names must be unique, got {names!r}")
    cases = _normalize_cases(per_case_results)
    for case_id, case in cases.items():
        n = case.get("n_classes") if isinstance(case, Mapping) else None
        if n is None:
            raise InputError(f"case {case_id!r} is not a result of evaluate_case (no 'n_classes')")
        if int(n) - 1 != len(names):
            raise InputError(
                f"case {case_id!r} was evaluated with {int(n) - 1} foreground classes but "
                f"class_names lists {len(names)} ({names!r}); list foreground classes only"
            )
    with_spacing = {case.get("spacing") is not None for case in cases.values()}
    if len(with_spacing) > 1:
        raise InputError(
            "some cases were evaluated with a voxel spacing and some without: their distances "
            "are in different units (mm vs voxels) and cannot be averaged"
        )
    excluded_unit = "mm" if with_spacing == {True} else "voxel"

    conventions = {
        "excluded": _convention_block(cases, names, "excluded"),
        "paper": _convention_block(cases, names, "paper"),
    }
    conventions["excluded"]["distance_unit"] = excluded_unit
    conventions["paper"]["distance_unit"] = "voxel"

    pooled = pooled_dice(cases, list(range(1, len(names) + 1)))
    pooled_named = {name: pooled[c] for c, name in enumerate(names, start=1)}
    head = conventions[headline]
    logger.info(
        "summarized %d case(s), %d class(es); headline (%s) mean DSC %s",
        len(cases), len(names), headline, head["mean"]["dsc"],
    )
    return {
        "protocol": head["description"],
        "headline_convention": headline,
        "distance_unit": head["distance_unit"],
        "classes": names,
        "n_cases": len(cases),
        "mean": copy.deepcopy(head["mean"]),
        "per_class": copy.deepcopy(head["per_class"]),
        "per_case": copy.deepcopy(head["per_case"]),
        "conventions": conventions,
        "pooled_dsc": {"per_class": pooled_named, "mean": _mean(list(pooled_named.values()))},
    }
