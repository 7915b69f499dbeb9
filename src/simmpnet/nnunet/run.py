"""nnU-Net's steps through its Python API, with a trainer *class*: plan and preprocess, train
one fold, predict a folder, evaluate a folder of predictions, compare trainers.

nnU-Net's own commands find trainers by name inside the nnunetv2 package only; these functions
take the class (Sim-MPNet's, or any of nnU-Net's by name), so nothing has to be copied into
nnU-Net.  Call `simmpnet.nnunet.folders.use_folders` before the first of them in a
process (``simmpnet nnunet`` does).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "dataset_id",
    "dataset_name",
    "evaluate_folder",
    "find_trainer",
    "make_predictor",
    "plan_and_preprocess",
    "predict_folder",
    "results_folder",
    "train_fold",
]


def dataset_name(dataset: str | int) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for an id or a name, as nnU-Net resolves it."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except RuntimeError as err:
        raise InputError(f"dataset {dataset!r}: {err}") from err


def dataset_id(dataset: str | int) -> int:
    """The numeric id of ``990`` / ``"990"`` / ``"Dataset990_BrainLobesDemo"``."""
    text = str(dataset)
    if text.isdigit():
        return int(text)
    if text.startswith("Dataset") and text[7:10].isdigit():
        return int(text[7:10])
    raise InputError(f"dataset {dataset!r}: give nnU-Net's id (e.g. 990) or name (DatasetXXX_Name)")


def find_trainer(name: str) -> type:
    """A trainer class by name: simmpnet's (`simmpnet.nnunet.trainer.TRAINERS`) or any of
    nnU-Net's own (``nnUNetTrainer``, ``nnUNetTrainer_5epochs`` ...)."""
    from .trainer import TRAINERS

    if name in TRAINERS:
        return TRAINERS[name]
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    found = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name, "nnunetv2.training.nnUNetTrainer"
    )
    if found is None:
        raise InputError(
            f"trainer {name!r}: neither one of simmpnet's ({', '.join(sorted(TRAINERS))}) nor found in nnU-Net"
        )
    return found


def plan_and_preprocess(
    dataset: str | int, configurations: Sequence[str] = ("2d",), num_processes: int = 1, verify: bool = True
) -> Path:
    """``nnUNetv2_plan_and_preprocess -d DATASET -c 2d`` (nnU-Net's default planner and
    preprocessor, its integrity check first when ``verify``); returns the dataset's
    preprocessed folder."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed

    dataset = dataset_id(dataset)
    extract_fingerprints([dataset], num_processes=num_processes, check_dataset_integrity=verify,
                         clean=True, verbose=False, show_progress_bar=False)
    plans_identifier = plan_experiments([dataset])
    preprocess([dataset], plans_identifier, tuple(configurations), [num_processes] * len(configurations),
               verbose=False, show_progress_bar=False)
    return Path(nnUNet_preprocessed) / dataset_name(dataset)


def results_folder(dataset: str | int, trainer: str, configuration: str = "2d", plans: str = "nnUNetPlans") -> Path:
    """``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``, as nnU-Net names it."""
    from nnunetv2.paths import nnUNet_results

    return Path(nnUNet_results) / dataset_name(dataset) / f"{trainer}__{plans}__{configuration}"


def train_fold(
    dataset: str | int,
    fold: int | str,
    trainer: str = "nnUNetTrainerSimMPNetTiny",
    configuration: str = "2d",
    plans: str = "nnUNetPlans",
    epochs: int | None = None,
    iterations: int | None = None,
    val_iterations: int | None = None,
    resume: bool = False,
    device: str = "auto",
    validate: bool = True,
    npz: bool = False,
    only_validation: bool = False,
    validate_best: bool = False,
) -> Path:
    """``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER [--c] [--npz] [--val] [--val_best]``
    with the class of ``trainer``; returns the fold's output folder.

    Args:
        epochs: nnU-Net's ``num_epochs`` (1000), or this when given (short runs on a CPU; it
            does not change the results folder's name).
        iterations: ``num_iterations_per_epoch`` (250), or this when given.
        val_iterations: ``num_val_iterations_per_epoch`` (50), or this when given.
        resume: continue from the fold's latest checkpoint (nnU-Net's ``--c``).
        validate: run nnU-Net's final validation (sliding window on the fold's validation cases).
        npz: the final validation also saves the softmax probabilities (nnU-Net's ``--npz``;
            ``nnUNetv2_find_best_configuration`` needs them to consider ensembles).
        only_validation: no training: the final validation of the trained fold (``--val``).
        validate_best: validate ``checkpoint_best.pth`` instead of the final one (``--val_best``).
    """
    import torch
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.paths import nnUNet_preprocessed

    trainer_class = find_trainer(trainer)
    name = dataset_name(dataset)
    plans_file = Path(nnUNet_preprocessed) / name / f"{plans}.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file}: no plans: run nnUNetv2_plan_and_preprocess (or simmpnet nnunet plan) first")
    plans_dict = json.loads(plans_file.read_text())
    if configuration not in plans_dict.get("configurations", {}):
        raise InputError(f"{plans_file}: no configuration {configuration!r} (has {sorted(plans_dict['configurations'])})")
    if resume and only_validation:
        raise InputError("--resume (--c) and --val exclude each other: --val validates a finished fold")
    if not validate and (npz or only_validation or validate_best):
        raise InputError("--no-validation leaves nothing for --npz, --val or --val_best to do")
    for key, value in (("epochs", epochs), ("iterations", iterations), ("val_iterations", val_iterations)):
        if value is not None and value < 1:
            raise InputError(f"{key} must be at least 1, got {value}")
    plans_dict["continue_training"] = resume
    dataset_json = json.loads((Path(nnUNet_preprocessed) / name / "dataset.json").read_text())
    torch_device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                "cpu" if device == "auto" else device)
    fold_value: int | str = fold if fold == "all" else int(fold)
    nnunet_trainer = trainer_class(plans=plans_dict, configuration=configuration, fold=fold_value,
                                   dataset_json=dataset_json, device=torch_device)
    if epochs is not None:
        nnunet_trainer.num_epochs = epochs
    if iterations is not None:
        nnunet_trainer.num_iterations_per_epoch = iterations
    if val_iterations is not None:
        nnunet_trainer.num_val_iterations_per_epoch = val_iterations
    maybe_load_checkpoint(nnunet_trainer, resume, only_validation, None)
    if not only_validation:
        nnunet_trainer.run_training()
    if validate_best:
        nnunet_trainer.load_checkpoint(str(Path(nnunet_trainer.output_folder) / "checkpoint_best.pth"))
    if validate:
        nnunet_trainer.perform_actual_validation(npz)
    return Path(nnunet_trainer.output_folder)


def make_predictor(
    model_folder: str | os.PathLike[str],
    folds: Sequence[int | str],
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    mirroring: bool = True,
):
    """nnU-Net's ``nnUNetPredictor`` for a trained model folder (``<trainer>__<plans>__<configuration>``).

    For simmpnet's trainers the network is built from the description in the checkpoint (or
    ``simmpnet_network.json``) and handed to the predictor, so no registration with nnU-Net is
    needed (nnU-Net looks trainers up by name in its own package: ``simmpnet nnunet install``);
    for nnU-Net's trainers, nnU-Net's own ``initialize_from_trained_model_folder``.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .trainer import TRAINERS, network_of_checkpoint

    folder = Path(model_folder)
    torch_device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                "cpu" if device == "auto" else device)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
        perform_everything_on_device=torch_device.type == "cuda", device=torch_device, allow_tqdm=False,
    )
    fold_dirs = [folder / f"fold_{f}" for f in folds]
    for fold_dir in fold_dirs:
        if not (fold_dir / checkpoint).is_file():
            raise InputError(f"{fold_dir / checkpoint}: no such checkpoint (train the fold first)")
    first = torch.load(fold_dirs[0] / checkpoint, map_location="cpu", weights_only=False)
    if first.get("trainer_name") not in TRAINERS:  # nnU-Net's own network: nnU-Net reads the folds
        predictor.initialize_from_trained_model_folder(str(folder), tuple(folds), checkpoint)
        return predictor
    payloads = [first, *(torch.load(d / checkpoint, map_location="cpu", weights_only=False) for d in fold_dirs[1:])]
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    dataset_json = json.loads((folder / "dataset.json").read_text())
    network = network_of_checkpoint(first, fold_dirs[0], str(fold_dirs[0] / checkpoint))
    network.load_weights(first["network_weights"], str(fold_dirs[0] / checkpoint))
    predictor.manual_initialization(
        network,
        plans_manager,
        plans_manager.get_configuration(first["init_args"]["configuration"]),
        [p["network_weights"] for p in payloads],
        dataset_json,
        first["trainer_name"],
        first.get("inference_allowed_mirroring_axes"),
    )
    return predictor


def predict_folder(
    model_folder: str | os.PathLike[str],
    input_folder: str | os.PathLike[str],
    output_folder: str | os.PathLike[str],
    folds: Sequence[int | str] = (0,),
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    mirroring: bool = True,
) -> Path:
    """``nnUNetv2_predict -i INPUT -o OUTPUT -d ... -tr ... -f FOLDS``: nnU-Net's preprocessing,
    sliding window (Gaussian, half-patch steps, mirroring unless ``mirroring`` is False),
    fold ensemble and export, in this process (no worker processes)."""
    if not Path(input_folder).is_dir():
        raise InputError(f"{input_folder}: no such folder of images")
    predictor = make_predictor(model_folder, folds, checkpoint, device, mirroring)
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(input_folder), str(out), save_probabilities=False, overwrite=True)
    return out


def _hd95_per_case(
    reference_folder: Path, prediction_folder: Path, file_ending: str, labels: Sequence[int]
) -> list[dict[str, Any]]:
    """HD95 in mm of every label of every predicted case (nnU-Net's evaluation has none)."""
    import SimpleITK as sitk

    from ..evaluation.metrics import hd95

    cases = []
    for pred_file in sorted(prediction_folder.glob(f"*{file_ending}")):
        ref_file = reference_folder / pred_file.name
        if not ref_file.is_file():
            continue
        ref_image = sitk.ReadImage(str(ref_file))
        reference = sitk.GetArrayFromImage(ref_image)
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file)))
        spacing = tuple(reversed(ref_image.GetSpacing()))  # numpy axis order
        per_label: dict[str, float | None] = {}
        for label in labels:
            ref_mask, pred_mask = reference == label, prediction == label
            # defined where both masks are non-empty, as nnU-Net leaves Dice NaN for an
            # empty reference
            per_label[str(label)] = (
                hd95(pred_mask, ref_mask, spacing) if ref_mask.any() and pred_mask.any() else None
            )
        cases.append({"case": pred_file.name, "hd95_mm": per_label})
    return cases


def evaluate_folder(
    reference_folder: str | os.PathLike[str],
    prediction_folder: str | os.PathLike[str],
    dataset_json: str | os.PathLike[str],
    plans_json: str | os.PathLike[str],
    num_processes: int = 1,
) -> dict[str, Any]:
    """``nnUNetv2_evaluate_folder`` (nnU-Net's Dice, IoU, TP/FP/FN per class and case, into
    ``PREDICTIONS/summary.json``) plus HD95 in mm per class computed by
    `simmpnet.evaluation.metrics.hd95` on the same files (``PREDICTIONS/hd95.json``);
    the means below also go to ``PREDICTIONS/evaluation.json``.

    Returns:
        ``{"dice": {label: mean}, "mean_dice": float, "hd95_mm": {label: mean or None},
        "mean_hd95_mm": float or None, "hd95_missing": {label: cases without a value},
        "n_cases": int}`` (labels as strings, foreground only).
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    ref, pred = Path(reference_folder), Path(prediction_folder)
    for folder in (ref, pred):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder")
    ds = json.loads(Path(dataset_json).read_text())
    ending = ds["file_ending"]
    if not any(pred.glob(f"*{ending}")):
        raise InputError(f"{pred}: no predictions ending in {ending}")
    summary_file = pred / "summary.json"
    compute_metrics_on_folder2(str(ref), str(pred), str(dataset_json), str(plans_json), str(summary_file),
                               num_processes=num_processes, chill=True)
    summary = json.loads(summary_file.read_text())
    labels = sorted(int(k) for k in summary["mean"])
    hd_cases = _hd95_per_case(ref, pred, ending, labels)
    (pred / "hd95.json").write_text(json.dumps({"metric_per_case": hd_cases}, indent=2) + "\n")
    hd_mean: dict[str, float | None] = {}
    missing: dict[str, int] = {}
    for label in labels:
        values = [c["hd95_mm"][str(label)] for c in hd_cases if c["hd95_mm"][str(label)] is not None]
        hd_mean[str(label)] = float(np.mean(values)) if values else None
        missing[str(label)] = len(hd_cases) - len(values)
    defined = [v for v in hd_mean.values() if v is not None]
    result = {
        "dice": {str(k): float(summary["mean"][str(k)]["Dice"]) for k in labels},
        "mean_dice": float(summary["foreground_mean"]["Dice"]),
        "hd95_mm": hd_mean,
        "mean_hd95_mm": float(np.mean(defined)) if defined else None,
        "hd95_missing": missing,
        "n_cases": len(hd_cases),
    }
    (pred / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
