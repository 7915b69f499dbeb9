"""The layout interface and its registry: `Layout`, `register_layout`,
`open_layout`.  Each layout module registers itself here; the package imports them all.
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset

from ...errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Layout", "LAYOUTS", "open_layout", "open_layout_of_model", "register_layout", "default_test_split"]


class Layout(ABC):
    """A dataset folder in one known layout.

    Args:
        root: the dataset folder.
        n_classes: classes including background; labels outside ``0 .. n_classes - 1`` are
            errors when it is given.
    """

    name: ClassVar[str]
    #: split names this layout knows (``lists/<name>.txt`` or its own convention)
    splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | os.PathLike, n_classes: int | None = None, **options: Any) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset folder not found")
        self.n_classes = n_classes
        self.options = options

    @abstractmethod
    def slices(self, split: str) -> Dataset:
        """Training slices of ``split`` (items as in the module docstring)."""

    @abstractmethod
    def cases(self, split: str) -> Dataset:
        """Evaluation cases of ``split`` (items as in the module docstring)."""

    @abstractmethod
    def verify(self) -> list[str]:
        """Every problem of the folder, one ``"<path>: <problem>"`` line each; empty when sound."""

    def split_sizes(self) -> dict[str, str]:
        """What each split of `splits` holds, e.g. ``{"val": "12 cases"}``; a split
        this folder does not have is left out."""
        sizes = {}
        for split in self.splits:
            try:
                sizes[split] = f"{len(self.cases(split))} cases"
            except InputError:
                continue
        return sizes


LAYOUTS: dict[str, type[Layout]] = {}


def register_layout(cls: type[Layout]) -> type[Layout]:
    """Class decorator: make a layout available by its ``name``."""
    LAYOUTS[cls.name] = cls
    return cls


def open_layout(
    name: str, root: str | os.PathLike, n_classes: int | None = None, in_channels: int | None = None, **options: Any
) -> Layout:
    """The layout called ``name`` over ``root``.

    ``in_channels`` (the model's): a picture layout whose images have another channel count
    is reopened to convert them (colour to grey or grey to colour, with a warning), when it
    can; else, and when its ``channels`` option says otherwise, an `InputError` naming
    the folder and the keys, before any training or evaluation starts.  Volume layouts are
    single-channel and need no check here.
    """
    if name not in LAYOUTS:
        raise InputError(f"unknown dataset layout {name!r}; choose one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[name](root, n_classes, **options)
    channels = getattr(layout, "channels", None)
    if in_channels is None or channels is None or channels == in_channels:
        return layout
    if "channels" in options or "channels" not in getattr(layout, "extra_options", ()):
        where = f"layout_options.channels {options['channels']}" if "channels" in options else f"the {name} layout"
        raise InputError(
            f"{root}: {where} gives {channels}-channel images but the model's in_channels is {in_channels}; "
            f"make them agree"
        )
    logger.warning(
        "%s: %d-channel pictures converted to %d channel(s) for in_channels %d (set in_channels: %d to keep them)",
        root, channels, in_channels, in_channels, channels,
    )
    return LAYOUTS[name](root, n_classes, **options, channels=in_channels)


def open_layout_of_model(
    config: dict[str, Any], n_classes: int, in_channels: int, data: str | os.PathLike,
    layout: str | None = None, layout_options: dict[str, Any] | None = None,
) -> tuple[str, Layout]:
    """Open ``data`` for a trained model whose training config is ``config``: the ``layout``
    given, else the one it was trained on, with the training's ``layout_options`` (when the
    layout is the same) overridden by ``layout_options``.  Returns (name, layout)."""
    name = layout or config.get("layout", "synapse")
    options = dict(config.get("layout_options", {})) if name == config.get("layout") else {}
    options.update(layout_options or {})
    return name, open_layout(name, data, n_classes, in_channels, **options)


def default_test_split(layout: Layout) -> str:
    """The split evaluated when none is named: the first of test_vol, test, val the layout has."""
    return next((s for s in ("test_vol", "test", "val") if s in layout.splits), "test")
