"""Dataset layouts: one module per on-disk format, all behind the same small interface.

A layout turns a folder into two kinds of items:

* training slices, ``{"image": float32 tensor (C, H, W), "label": int64 tensor (H, W), "name": str}``;
* evaluation cases, ``{"image": float32 (D, H, W) or (D, H, W, C), "label": int64 (D, H, W),
  "name": str, "spacing": (D, H, W) floats in mm, or None when unknown}``; a 2D picture is a
  case with ``D = 1``.

and lists every problem of the folder at once (`Layout.verify`), like nnU-Net's
integrity check.  Files are read lazily, one item at a time, and each item is validated as
it is read (a clear `simmpnet.errors.InputError` naming the file).
"""
from __future__ import annotations

# The built-in layouts register themselves on import.
from . import acdc, folder2d, isic, nnunet, segpc, synapse  # noqa: F401
from .registry import LAYOUTS, Layout, default_test_split, open_layout, open_layout_of_model, register_layout

__all__ = ["Layout", "LAYOUTS", "open_layout", "open_layout_of_model", "register_layout", "default_test_split"]
