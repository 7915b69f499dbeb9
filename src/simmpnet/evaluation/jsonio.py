"""JSON written strictly: `write_json` writes any result (numpy scalars and arrays converted,
NaN and infinities as ``null``) atomically, through `simmpnet.files.atomic_write`, and fails
with a one-line `InputError` naming the file."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import atomic_write

__all__ = ["write_json"]

logger = logging.getLogger(__name__)


def _jsonable(obj: Any, where: str, counter: list[int]) -> Any:
    """Plain-Python copy of ``obj`` fit for strict JSON; non-finite floats -> ``None``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isfinite(value):
            return value
        counter[0] += 1
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where, counter)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where, counter)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (np.integer, np.floating, np.bool_)):
                key = key.item()
            if not isinstance(key, str):
                if key is None or isinstance(key, (bool, int, float)):
                    key = json.dumps(key)
                else:
                    raise InputError(f"{where}: cannot write a {type(key).__name__} dict key to JSON")
            out[key] = _jsonable(value, where, counter)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v, where, counter) for v in items]
    raise InputError(f"{where}: cannot write an object of type {type(obj).__name__} to JSON")


def write_json(obj: Any, path: str | os.PathLike[str], *, indent: int = 2) -> Path:
    """Write ``obj`` as strict, human-readable JSON, atomically.

    numpy scalars and arrays become numbers and lists, paths become strings, tuples and sets
    become lists, non-string dict keys are converted as `json` does; NaN and infinities
    (not valid JSON) become ``null`` with a logged warning.

    Args:
        obj: dicts, lists, numbers, strings, ``None``, numpy values, paths.
        path: the target file (parent folders are created).
        indent: JSON indentation.

    Returns:
        ``path`` as a `Path`.

    Raises:
        InputError: an object that cannot be represented in JSON, or a failed write.
    """
    path = Path(path)
    counter = [0]
    plain = _jsonable(obj, str(path), counter)
    if counter[0]:
        logger.warning("%s: %d NaN/infinite value(s) written as null", path, counter[0])
    text = json.dumps(plain, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")


def _is_number(value: Any) -> bool:
    """A number as JSON gives it back: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
