"""Where the demo's headline DSC loses most: the cerebellum at the border of slabs 6 and 7.

The atlas cerebellum ends with the last slice of training slab 6; test slab 7 holds none.
This script predicts, with a trained demo network (default ``runs/demo/last.pt``), the last
``--slices`` slices of slab 6 and the first ones of slab 7 (default data
``runs/brain_demo_data``), prints the truth and predicted pixel counts of the class per slice,
and draws each slice around the class with the truth (green) and the predicted (red) outline.

Usage (from the repository root):
    python benchmarks/slab_border.py [--checkpoint runs/demo/last.pt] [--out runs/demo/slab_border.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simmpnet.data.brain_demo import CLASS_NAMES  # noqa: E402
from simmpnet.data.io import atomic_write  # noqa: E402
from simmpnet.data.layouts.synapse import load_h5_volume, load_npz_slice  # noqa: E402
from simmpnet.evaluation.inference import predict_slices  # noqa: E402
from simmpnet.loading import load_trained_model  # noqa: E402


def border_slices(data: Path, before: str, after: str, count: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Titles, images and labels (count, H, W) of the last ``count`` slices of training slab
    ``before`` and the first ``count`` slices of test case ``after``, in z order."""
    train = sorted((data / "train_npz").glob(f"{before}_slice*.npz"))[-count:]
    if len(train) < count:
        raise SystemExit(f"{data / 'train_npz'}: fewer than {count} slices of {before}")
    pairs = [load_npz_slice(path) for path in train]
    image, label = load_h5_volume(data / "test_vol_h5" / f"{after}.npy.h5")[:2]
    titles = [path.stem.replace("brain_", "") for path in train]
    titles += [f"{after.replace('brain_', '')}_slice{z:03d}" for z in range(count)]
    images = np.stack([p[0] for p in pairs] + list(image[:count]))
    labels = np.stack([p[1] for p in pairs] + list(label[:count]))
    return titles, images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/brain_demo_data"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo/slab_border.png"))
    parser.add_argument("--slices", type=int, default=4, help="slices on each side of the border")
    parser.add_argument("--class-name", default="cerebellum", choices=CLASS_NAMES[1:])
    args = parser.parse_args()

    model, input_size, _ = load_trained_model(args.checkpoint)
    titles, images, labels = border_slices(args.data, "brain_slab06", "brain_slab07", args.slices)
    predictions = predict_slices(model, images, input_size)
    target = CLASS_NAMES.index(args.class_name)

    # A window around every truth pixel of the class in these slices, with a margin.
    rows, cols = np.nonzero((labels == target).any(0))
    if rows.size == 0:
        raise SystemExit(f"no {args.class_name} in these slices")
    window = np.s_[max(rows.min() - 20, 0) : rows.max() + 21, max(cols.min() - 25, 0) : cols.max() + 26]

    print(f"{args.class_name} pixels per slice ({args.checkpoint}):")
    fig, axes = plt.subplots(1, len(titles), figsize=(2.4 * len(titles), 2.9))
    for ax, title, image, label, prediction in zip(axes, titles, images, labels, predictions):
        truth, predicted = int((label == target).sum()), int((prediction == target).sum())
        print(f"  {title}: truth {truth:4d}  predicted {predicted:4d}")
        ax.imshow(image[window], cmap="gray")
        for mask, colour in ((label == target, "lime"), (prediction == target, "red")):
            if mask[window].any():
                ax.contour(mask[window], [0.5], colors=colour, linewidths=1.2)
        ax.set_title(f"{title}\ntruth {truth}, pred. {predicted}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{args.class_name}: truth (green), prediction (red); slab 6 trains, slab 7 is held out", fontsize=9)
    fig.tight_layout()
    atomic_write(args.out, lambda tmp: fig.savefig(tmp, format="png", dpi=80), suffix=".png")
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
