"""Prediction on files a user has: 2D images (PNG, JPEG, TIFF, BMP), volumes (NIfTI, NRRD,
MHA, npz, h5, DICOM series), one file or a folder, or on the image series of a study on a
DICOMweb server.  Label maps are written in the input's own geometry; for a DICOM series
optionally also as a DICOM-SEG object, which can go back to the DICOMweb server."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.dicom import DicomSeries
from .data.dicom_seg import default_seg_path, require_highdicom, write_dicom_seg
from .data.dicomweb import DicomWebStudy
from .data.io import (
    atomic_write, default_label_path, file_extension, list_inputs, read_image, sha256_file, write_label_map,
)
from .data.network_input import ModelInput, network_slices, normalise_intensity
from .errors import CheckpointError, DicomWebError, InputError, SimMPNetError, one_line
from .evaluation.inference import predict_slices
from .device import resolve_device
from .evaluation.resample import check_inference, check_sliding_window, resolve_resample
from .loading import load_trained_model
from .models.inference import predict_array
from .precision import check_precision, resolve_precision

logger = logging.getLogger(__name__)

__all__ = ["OUTPUTS_EXIST", "InputOutcome", "PredictionBatch", "predict_paths", "predict_array", "normalise_intensity"]



#: Written next to a batch's outputs: which model made them, and what happened to each input.
SUMMARY_NAME = "prediction_summary.json"
#: Sub-folders of the output folder for what is not a label map, so that ``simmpnet evaluate
#: --predictions`` on the output folder sees label maps only.
OVERLAY_FOLDER, PROBABILITY_FOLDER = "overlays", "probabilities"


#: The reason of an input skipped because its outputs exist (``skip_existing``).
OUTPUTS_EXIST = "outputs exist"


@dataclass
class InputOutcome:
    """What a batch did with one input: ``status`` is ``"written"``, ``"skipped"`` or
    ``"failed"``; ``reason`` says why it was skipped or failed.

    An input is skipped when its outputs exist (``skip_existing``: reason `OUTPUTS_EXIST`),
    or when a DICOM-SEG was asked for and no foreground was predicted: its other outputs are
    written (``outputs`` lists them) and no SEG, since a SEG without a segment is not valid
    DICOM.  ``stored`` is whether its DICOM-SEG went back to the DICOMweb server it came from,
    when the batch was to store them (None otherwise); a SEG the server refused leaves the
    input ``"failed"`` with its written ``outputs``.
    """

    input: str
    status: str
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    stored: bool | None = None


@dataclass
class PredictionBatch:
    """The result of `predict_paths`: the model that made the outputs (checkpoint,
    SHA-256, variant, classes, package version, command, precision), the outcome of every
    input, and for a DICOMweb study its ``source``
    (`simmpnet.data.dicomweb.DicomWebStudy.record`)."""

    model: dict[str, Any]
    outcomes: list[InputOutcome]
    source: dict[str, Any] | None = None

    def _with(self, status: str) -> list[InputOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def written(self) -> list[Path]:
        """The label maps of the inputs whose outputs were all written."""
        return [Path(o.outputs[0]) for o in self._with("written")]

    @property
    def skipped(self) -> list[InputOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[InputOutcome]:
        return self._with("failed")

    def to_dict(self) -> dict[str, Any]:
        """The summary written as `SUMMARY_NAME` (``source`` and ``stored`` only for a
        DICOMweb study)."""
        counts = {status: len(self._with(status)) for status in ("written", "skipped", "failed")}
        inputs = [{k: v for k, v in dataclasses.asdict(o).items() if k != "stored" or v is not None} for o in self.outcomes]
        source = {"source": self.source} if self.source is not None else {}
        return {"model": self.model, **source, **counts, "inputs": inputs}


def model_record(
    checkpoint: str | os.PathLike, model: torch.nn.Module, config: dict, command: str | None, precision: str
) -> dict:
    """What identifies a trained model in the outputs it makes: the SHA-256 of its weights file
    (a ``save_pretrained`` folder: of its ``model.safetensors``), its variant, classes and the
    package version, the command that ran it, and the precision it ran in (``"fp32"`` or
    ``"bf16"``, ``auto`` resolved)."""
    from . import __version__

    path = Path(checkpoint)
    weights = _weights_file(path)
    architecture = getattr(model, "config", None)
    n_classes = getattr(model, "n_classes", None) or config.get("n_classes")
    return {
        "checkpoint": str(path.resolve()),
        "sha256": sha256_file(weights),
        "model": type(model).__name__,
        "variant": config.get("variant") or getattr(architecture, "variant", None),
        "n_classes": n_classes,
        "class_names": list(config["class_names"]) if config.get("class_names") else None,
        "simmpnet_version": __version__,
        "command": command,
        "precision": precision,
    }


def _weights_file(checkpoint: Path) -> Path:
    """The file whose SHA-256 identifies a checkpoint (a folder's ``model.safetensors``)."""
    from .pretrained import WEIGHTS_NAME

    return checkpoint / WEIGHTS_NAME if checkpoint.is_dir() else checkpoint


def predict_paths(
    checkpoint: str | os.PathLike,
    input_path: str | os.PathLike | Sequence[str | os.PathLike] | DicomWebStudy,
    output_dir: str | os.PathLike,
    device: str = "auto",
    overlay: bool = False,
    intensity_window: tuple[float, float] | None = None,
    resample: str | None = None,
    inference: str = "resize",
    overlap: float = 0.5,
    dicom_seg: bool = False,
    *,
    save_probabilities: bool = False,
    skip_existing: bool = False,
    stop_on_error: bool = False,
    command: str | None = None,
    precision: str = "fp32",
) -> PredictionBatch:
    """Predict every supported file at ``input_path`` (a file or a folder) into ``output_dir``.

    ``input_path`` may also be a DICOM file, a folder holding DICOM series, or a sequence of
    DICOM files: each series is predicted as one volume and its label map written as
    ``<name>.nii.gz`` in the series' geometry (see `simmpnet.data.io.list_inputs` and
    `simmpnet.data.dicom`).  With ``dicom_seg``, every input must be a DICOM series, and
    a DICOM-SEG object referencing it is written next to its label map as
    ``<name>_seg.dcm`` (`simmpnet.data.dicom_seg`; needs ``pip install "simmpnet[dicom]"``).

    ``input_path`` may also be a `DicomWebStudy`: the image
    series of a study on a DICOMweb server, retrieved into a temporary folder and predicted as
    the same series in a folder is (each named after its SeriesInstanceUID).  With its
    ``store``, the DICOM-SEGs are written (``dicom_seg`` is implied) and sent back into the
    study with STOW-RS; ``skip_existing`` is refused then, since a series skipped would not be
    stored.  The server is searched, and the series retrieved and checked, before the model is
    loaded (needs ``pip install "simmpnet[dicomweb]"``).

    ``intensity_window`` (low, high) replaces the window the model was trained with (e.g. a HU
    window for CT); None keeps the training one, or percentile normalisation when it had none.
    ``resample`` is how predictions return to the input's size: ``"labels"`` (the paper's
    nearest resize) or ``"logits"`` (see `simmpnet.evaluation.inference`); None takes
    the training config's, "labels" unless it was set.  ``inference`` is ``"resize"`` (the
    paper's: every slice resized to the input size) or ``"sliding-window"`` (tiles of the input
    size at the image's own resolution, neighbours sharing ``overlap`` of a tile; ``resample``
    does not apply).  ``precision`` is ``"fp32"`` (default), ``"bf16"`` (bf16 autocast with the
    network's global reads in bf16) or ``"auto"`` (bf16 where the device has bf16 units), see
    `simmpnet.precision`.

    The output folder holds the label maps (and DICOM-SEGs) only, so that ``simmpnet evaluate
    --predictions`` reads it as it is; ``overlay`` pictures go to ``overlays/``, and
    ``save_probabilities`` writes ``probabilities/<name>.npz`` (key ``probabilities``: float32,
    class-first, in the label map's axis order; ``class_names``).  Every file is written
    atomically.  `SUMMARY_NAME` records the model (the SHA-256 of its weights, variant,
    classes, package version, ``command``, the precision) and the outcome of every input (for
    a DICOMweb study also the server's URL, the study and series UIDs, and whether each SEG
    was stored); NIfTI label maps and DICOM-SEGs carry the SHA-256 too.

    A batch goes on past an input it cannot read or write (``stop_on_error`` stops at the first)
    and reports it in the summary; ``skip_existing`` skips inputs whose outputs exist (a batch
    resumed after a kill). With ``dicom_seg``, a series where no foreground is predicted gets
    its label map (and other outputs) but no DICOM-SEG (one left by an earlier run is removed,
    as it would contradict the label map), a warning naming it, and the status ``skipped`` in
    the summary (`InputOutcome`).  The inputs are listed (and DICOM series checked)
    before the model is loaded, and the output folder is created only once there is something
    to put in it.
    Files are read, predicted and written one at a time, so memory stays flat over long folders.
    """
    check_inference(inference, overlap, resample)
    check_precision(precision)
    remote = input_path if isinstance(input_path, DicomWebStudy) else None
    storing = remote is not None and remote.store
    if storing:
        if skip_existing:
            raise InputError(
                "skipping existing outputs does not go with storing the DICOM-SEGs: a series skipped would not be stored"
            )
        dicom_seg = True
    if dicom_seg:
        require_highdicom()  # before a DICOMweb server is asked for anything
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    with remote.retrieved() if remote is not None else nullcontext() as retrieved:
        if retrieved is not None:
            inputs = retrieved.inputs
        else:
            inputs = [(str(item), item) for item in list_inputs(input_path)]
        if dicom_seg:
            other = next((shown for shown, item in inputs if not isinstance(item, DicomSeries)), None)
            if other is not None:
                raise InputError(f"{other}: DICOM-SEG output needs DICOM series as input, and this is not one")
        dev = resolve_device(device)
        precision = resolve_precision(precision, dev)
        weights = _weights_file(Path(checkpoint))
        # Hashed before and after loading: a run that saves best.pt while this one reads it
        # must not leave outputs naming weights other than the ones that made them.
        loaded_from = sha256_file(weights) if weights.is_file() else None
        model, input_size, config = load_trained_model(checkpoint, dev)
        if inference == "sliding-window":
            check_sliding_window(getattr(model, "preprocessing", None), str(checkpoint))
        resample = resolve_resample(resample, config)
        in_channels = int(getattr(model, "in_channels", config.get("in_channels", 1)))
        names = config.get("class_names")
        window = intensity_window if intensity_window is not None else config.get("intensity_window")
        if dicom_seg:
            n_classes = getattr(model, "n_classes", None) or config.get("n_classes")
            if not n_classes:
                raise CheckpointError(f"{checkpoint}: the checkpoint does not record its number of classes")
            segment_names = list(names or ["background", *(f"class_{i}" for i in range(1, n_classes))])
        record = model_record(checkpoint, model, config, command, precision)
        if record["sha256"] != loaded_from:
            raise CheckpointError(
                f"{weights}: the file changed while it was being read (another process wrote it); "
                "run again once it is written"
            )
        description = f"simmpnet {record['simmpnet_version']} sha256:{record['sha256'][:16]}"
        outcomes: list[InputOutcome] = []
        errors: list[BaseException] = []

        def fail(shown: str, err: BaseException, outputs: Sequence[str] = (), stored: bool | None = None) -> None:
            if stop_on_error:
                raise err
            errors.append(err)
            outcomes.append(InputOutcome(shown, "failed", list(outputs), one_line(err), stored))
            logger.debug("%s: failed: %s", shown, one_line(err))

        for shown, item in inputs:
            try:
                loaded = read_image(item)
                targets = _targets(loaded, out_dir, dicom_seg, overlay, save_probabilities)
                if skip_existing and all(t.is_file() for t in targets.values()):
                    outcomes.append(InputOutcome(shown, "skipped", [str(t) for t in targets.values()], OUTPUTS_EXIST))
                    logger.info("%s: outputs exist, skipped", shown)
                    continue
                slices = network_slices(ModelInput(loaded.array, loaded.kind, shown), in_channels, window)
                with torch.no_grad():
                    result = predict_slices(
                        model, slices, input_size, dev, resample=resample, inference=inference, overlap=overlap,
                        probabilities=save_probabilities, precision=precision,
                    )
                labels, probs = result if save_probabilities else (result, None)
                if loaded.kind == "image2d":
                    labels = labels[0]
                    probs = None if probs is None else probs[:, 0]
                out_dir.mkdir(parents=True, exist_ok=True)
                write_label_map(labels, loaded, targets["labels"], description=description)
                without_seg = None
                if dicom_seg:
                    if labels.any():
                        write_dicom_seg(labels, loaded, targets["seg"], segment_names, model_id=record["sha256"])
                    else:
                        without_seg = f"no foreground predicted in {shown}: no DICOM-SEG written"
                        stale = targets.pop("seg")
                        if stale.is_file():  # an earlier run's SEG would contradict this label map
                            stale.unlink()
                            without_seg += f" ({stale.name} of an earlier run removed)"
                if probs is not None:
                    _write_probabilities(targets["probabilities"], probs, names)
                if overlay:
                    _write_overlay(targets["overlay"], slices, labels, loaded.kind == "image2d", names)
            except (SimMPNetError, OSError) as err:
                fail(shown, err)
                continue
            outputs = [str(t) for t in targets.values()]
            if without_seg is not None:
                logger.warning("%s", without_seg)
                outcomes.append(InputOutcome(shown, "skipped", outputs, without_seg, stored=False if storing else None))
                continue
            if storing:
                try:
                    retrieved.store_seg(targets["seg"])
                except DicomWebError as err:
                    fail(shown, err, outputs, stored=False)
                    continue
            outcomes.append(InputOutcome(shown, "written", outputs, stored=True if storing else None))
            logger.info("%s -> %s", shown, targets["labels"])
        batch = PredictionBatch(record, outcomes, retrieved.record() if retrieved is not None else None)
    if errors and not any(o.outputs for o in outcomes):
        # Nothing to show for the batch: an error, and no folder or summary left behind.  (A
        # SEG the server refused is in the folder: the summary says so.)
        if len(errors) == 1:
            raise errors[0]
        raise InputError(f"none of the {len(errors)} inputs could be predicted; the first: {one_line(errors[0])}") from errors[0]
    text = json.dumps(batch.to_dict(), indent=2) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    if errors:
        logger.info("%d of %d inputs failed (%s)", len(errors), len(outcomes), out_dir / SUMMARY_NAME)
    return batch


def _targets(loaded: Any, out_dir: Path, dicom_seg: bool, overlay: bool, probabilities: bool) -> dict[str, Path]:
    """Where the outputs of one input go (the label map first)."""
    labels = default_label_path(loaded, out_dir)
    stem = labels.name[: len(labels.name) - len(file_extension(labels))]  # a series UID holds dots
    targets = {"labels": labels}
    if dicom_seg:
        targets["seg"] = default_seg_path(loaded, out_dir)
    if probabilities:
        targets["probabilities"] = out_dir / PROBABILITY_FOLDER / f"{stem}.npz"
    if overlay:
        targets["overlay"] = out_dir / OVERLAY_FOLDER / f"{stem}.png"
    return targets


def _write_probabilities(target: Path, probs: np.ndarray, names: Sequence[str] | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {"class_names": np.array(list(names))} if names else {}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, probabilities=probs.astype(np.float32, copy=False), **extra)

    atomic_write(target, write, suffix=".npz")


def _write_overlay(target: Path, slices: np.ndarray, labels: np.ndarray, picture: bool, names: Any) -> None:
    from .evaluation.figures import save_overlay

    index = 0 if picture else int(np.argmax((labels > 0).sum((1, 2))))
    image = slices[index]
    shown = labels if picture else labels[index]
    grey = image if image.ndim == 2 else image.mean(-1)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_overlay(grey, None, shown, target, class_names=names)
