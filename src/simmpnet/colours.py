"""The fixed colours of label classes, shared by label-map PNGs, overlays and the HTML report."""
from __future__ import annotations

from .errors import InputError

__all__ = ["CLASS_COLORS", "label_color", "label_palette"]

#: Fixed colours of foreground classes 1, 2, ... (class ``c`` gets ``CLASS_COLORS[(c - 1) % 20]``;
#: background is not drawn). Twenty well-separated colours (Sasha Trubetskoy's list).
CLASS_COLORS: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
    "#808000", "#ffd8b1", "#000075", "#a9a9a9",
)


def label_color(class_id: int) -> tuple[float, float, float]:
    """RGB colour (floats in ``[0, 1]``) of foreground class ``class_id`` >= 1."""
    if class_id < 1:
        raise InputError(f"label_color: class id must be >= 1 (background is not drawn), got {class_id}")
    hex_code = CLASS_COLORS[(int(class_id) - 1) % len(CLASS_COLORS)]
    return tuple(int(hex_code[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def label_palette() -> list[int]:
    """The 256-entry RGB palette of label-map PNGs (flat ``[r0, g0, b0, r1, ...]``): class 0
    black, class ``c`` >= 1 in `label_color`."""
    palette = [0, 0, 0]
    for class_id in range(1, 256):
        palette += [round(255 * v) for v in label_color(class_id)]
    return palette
