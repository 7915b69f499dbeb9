"""Evaluate a network on labelled volumes: slice-wise prediction, per-case and per-class
metrics under both conventions, and the summary that `metrics.json` holds."""
from __future__ import annotations

import logging
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, SimMPNetError
from ..precision import resolve_precision
from .inference import predict_slices
from .resample import check_resample
from .metrics import evaluate_case, summarize

logger = logging.getLogger(__name__)

__all__ = ["evaluate_volumes", "score_cases"]


def _metric_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for `evaluate_case`.  On Linux they are forked: they inherit the
    imported modules instead of importing torch and timm again (seconds each), and they only
    run NumPy/SciPy code, never the model, so the parent's torch threads do not matter."""
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def evaluate_volumes(
    model: nn.Module,
    volumes: Iterable[dict[str, Any]],
    input_size: int,
    n_classes: int,
    class_names: Sequence[str],
    device: torch.device | str = "cpu",
    on_case: Callable[[str, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    workers: int = 1,
    resample: str = "labels",
    progress: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Predict and score every volume.

    Volumes are read, predicted and scored one at a time; only the per-case metric
    dictionaries are kept, so memory does not grow with the number of cases.

    Args:
        model: the network (put in ``eval()`` mode; never changed).
        volumes: cases of a layout (`simmpnet.data.layouts`): ``image`` (D, H, W) or
            (D, H, W, C), ``label`` (D, H, W), ``name`` and ``spacing`` (D, H, W) in mm or None.
        input_size: slice side the network expects.
        n_classes: classes including background.
        class_names: names of all classes, background first.
        device: where the model lives.
        on_case: called as ``on_case(name, image, truth, prediction)`` after each case (for
            pictures), without holding every volume in memory.
        workers: processes computing the metrics (surface distances dominate on large
            volumes) while the next case is predicted; 1 computes them here.  Each case goes
            to a worker as soon as it is predicted and at most ``2 * workers`` cases are in
            flight.  The result does not depend on ``workers``.
        resample: how predictions return to the slice size
            (`RESAMPLE_MODES`): ``"labels"`` (the paper's
            nearest resize of the label map) or ``"logits"``.
        progress: show a progress bar of the cases on stderr.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (`simmpnet.precision`).

    Returns:
        the `score_cases` summary, with ``"resample"`` and ``"precision"`` (resolved: ``"fp32"``
        or ``"bf16"``).

    Raises:
        InputError: ``workers`` below 1, or a case the metrics refuse.
        SimMPNetError: a worker process died (e.g. killed for lack of memory).
    """
    check_resample(resample)
    precision = resolve_precision(precision, device)

    def predicted() -> Iterator[tuple[str, np.ndarray, np.ndarray, Any]]:
        for item in volumes:
            name = item["name"]
            image, truth = np.asarray(item["image"]), np.asarray(item["label"])
            prediction = predict_slices(model, image, input_size, device, resample=resample, precision=precision)
            if on_case is not None:
                on_case(name, image, truth, prediction)
            yield name, prediction, truth, item.get("spacing")

    total = len(volumes) if isinstance(volumes, Sized) else None
    summary = score_cases(predicted(), n_classes, class_names, workers, progress=progress, total=total)
    summary["resample"] = resample
    summary["precision"] = precision
    return summary


def score_cases(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float] | None]],
    n_classes: int,
    class_names: Sequence[str],
    workers: int = 1,
    progress: bool = False,
    total: int | None = None,
) -> dict[str, Any]:
    """Score predictions against their ground truth under both conventions.

    Args:
        cases: ``(name, prediction, truth, spacing)`` per case: integer label maps of one
            shape, ``(D, H, W)`` or ``(H, W)``, and the spacing in mm per axis or None.
            Consumed lazily: a generator that predicts the next case runs while the workers
            score the last ones.
        n_classes: classes including background.
        class_names: names of all classes, background first.
        workers: processes computing the metrics; the result does not depend on it.
        progress: show a progress bar of the cases on stderr (``total`` cases when known).

    Returns:
        the `simmpnet.evaluation.metrics.summarize` dictionary (headline: empty/empty
        excluded, HD95/ASD in mm; the paper protocol next to it), with ``"case_dims"``: 2 when
        every case is a single 2-D picture or slice (distances then count pixels), else 3.

    Raises:
        InputError: ``workers`` below 1, no case, or a case the metrics refuse.
        SimMPNetError: a worker process died (e.g. killed for lack of memory).
    """
    from tqdm import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    results: dict[str, Any] = {}
    flat = True  # every case a single picture or slice
    pool = _metric_pool(workers) if workers > 1 else None
    pending: deque[tuple[str, Future]] = deque()
    bar = tqdm(total=total, unit="case", desc="scoring", disable=not progress, dynamic_ncols=True)
    try:
        for name, prediction, truth, spacing in cases:
            if prediction.ndim == 3 and prediction.shape[0] == 1:
                # A picture, or a volume of one slice: scored in 2-D.  As a (1, H, W) volume
                # every pixel would touch the empty slices above and below and count as
                # surface, which shrinks HD95 and ASD to almost nothing.
                prediction, truth = prediction[0], np.asarray(truth)[0]
                spacing = None if spacing is None else tuple(spacing)[1:]
            flat = flat and prediction.ndim == 2
            if pool is None:
                results[name] = evaluate_case(prediction, truth, n_classes, spacing=spacing)
            else:
                pending.append((name, pool.submit(evaluate_case, prediction, truth, n_classes, spacing=spacing)))
            bar.update(1)
            logger.debug("evaluated %s", name)
            # Collected in case order, so the summary is the same as with one process.
            while len(pending) >= 2 * workers:
                done, future = pending.popleft()
                results[done] = future.result()
        while pending:
            done, future = pending.popleft()
            results[done] = future.result()
    except BrokenProcessPool as err:
        raise SimMPNetError(
            f"a metric worker process died ({err}); it may have run out of memory, use fewer workers"
        ) from err
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary = summarize(results, list(class_names[1:]))
    summary["case_dims"] = 2 if flat else 3
    return summary
