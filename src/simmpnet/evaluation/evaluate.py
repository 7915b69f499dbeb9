"""Evaluate a network on labelled volumes: slice-wise prediction, per-case and per-class
metrics under both conventions, and the summary that `metrics.json` holds."""
from __future__ import annotations

import logging
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, SimMPNetError
from .inference import predict_slices
from .resample import check_resample
from .metrics import evaluate_case, summarize

logger = logging.getLogger(__name__)

__all__ = ["evaluate_volumes"]


def _metric_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes for :func:`evaluate_case`.  On Linux they are forked: they inherit the
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
) -> dict[str, Any]:
    """Predict and score every volume.

    Volumes are read, predicted and scored one at a time; only the per-case metric
    dictionaries are kept, so memory does not grow with the number of cases.

    Args:
        model: the network (put in ``eval()`` mode; never changed).
        volumes: cases of a layout (:mod:`simmpnet.data.layouts`): ``image`` (D, H, W) or
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
            (:data:`~simmpnet.evaluation.resample.RESAMPLE_MODES`): ``"labels"`` (the paper's
            nearest resize of the label map) or ``"logits"``.

    Returns:
        the :func:`simmpnet.evaluation.metrics.summarize` dictionary (headline: empty/empty
        excluded, HD95/ASD in mm; the paper protocol next to it), with ``"resample"``.

    Raises:
        InputError: ``workers`` below 1, or a case the metrics refuse.
        SimMPNetError: a worker process died (e.g. killed for lack of memory).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    check_resample(resample)
    results: dict[str, Any] = {}
    pool = _metric_pool(workers) if workers > 1 else None
    pending: deque[tuple[str, Future]] = deque()
    try:
        for item in volumes:
            name = item["name"]
            image, truth = np.asarray(item["image"]), np.asarray(item["label"])
            prediction = predict_slices(model, image, input_size, device, resample=resample)
            if pool is None:
                results[name] = evaluate_case(prediction, truth, n_classes, spacing=item.get("spacing"))
            else:
                pending.append((name, pool.submit(evaluate_case, prediction, truth, n_classes, spacing=item.get("spacing"))))
            if on_case is not None:
                on_case(name, image, truth, prediction)
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
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary = summarize(results, list(class_names[1:]))
    summary["resample"] = resample
    return summary
