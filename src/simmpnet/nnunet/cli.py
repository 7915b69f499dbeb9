"""``simmpnet nnunet ...``: nnU-Net v2's steps with Sim-MPNet's trainers (docs/nnunet.md).

The parser is built without importing torch or nnU-Net; each command imports them when it runs,
after pointing nnU-Net at its folders (``--root DIR``, or nnU-Net's environment variables).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["add_nnunet_commands"]

DEFAULT_TRAINER = "nnUNetTrainerSimMPNetTiny"
SIMMPNET_TRAINERS = (
    "nnUNetTrainerSimMPNet", "nnUNetTrainerSimMPNetTiny", "nnUNetTrainerSimMPNet_AdamW", "nnUNetTrainerSimMPNetTiny_AdamW",
)


def _setup(args: argparse.Namespace):
    import os

    from .folders import use_folders

    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    # nnU-Net's planner also sets torch's thread count to nnUNet_n_proc_DA, which must then be
    # positive; 0 (augmentation in the main process) only for the commands that train.
    training = args.nnunet_command in ("train", "compare")
    folders = use_folders(args.root, n_proc_da=args.workers if training else max(1, args.workers))
    # nnU-Net's worker count of its preprocessing, final-validation export and evaluation pools.
    os.environ["nnUNet_def_n_proc"] = str(max(1, args.workers))
    return folders


def cmd_convert_demo(args: argparse.Namespace) -> int:
    folders = _setup(args)
    from ..data.brain_demo import prepare_brain_demo
    from .convert import convert_brain_demo

    demo = prepare_brain_demo(args.demo_data)
    out = convert_brain_demo(demo, folders.raw)
    print(f"nnU-Net raw dataset: {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    _setup(args)
    from .run import plan_and_preprocess

    out = plan_and_preprocess(args.dataset, tuple(args.configurations), num_processes=max(1, args.workers))
    print(f"plans and preprocessed data: {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _setup(args)
    from .run import train_fold

    out = train_fold(
        args.dataset, args.fold, args.trainer, args.configuration, args.plans, args.epochs, args.iterations,
        args.val_iterations, args.resume, args.device, validate=not args.no_validation, npz=args.npz,
        only_validation=args.val, validate_best=args.val_best,
    )
    print(f"trained: {out}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .registration import install

    module = install()
    print(f"installed: {module} (nnU-Net's own scripts now find -tr {' / '.join(SIMMPNET_TRAINERS)})")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from .registration import uninstall

    module = uninstall()
    print(f"removed: {module}" if module else "not installed: nothing to remove")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .. import __version__
    from .registration import registration

    state = registration()
    where = f"nnU-Net {state.nnunet_version} at {state.folder}"
    if state.installed:
        print(f"installed for {where}: {state.module} (simmpnet {__version__})")
    elif state.foreign:
        print(f"not installed for {where}: {state.module} exists but was not written by simmpnet")
    else:
        print(f"not installed for {where}; `simmpnet nnunet install` makes nnUNetv2_train -tr find the trainers")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _setup(args)
    from .run import predict_folder, results_folder

    model = results_folder(args.dataset, args.trainer, args.configuration, args.plans)
    out = predict_folder(model, args.input, args.output, args.folds, args.checkpoint, args.device, not args.disable_tta)
    print(f"predictions: {out}")
    return 0


def _plans_and_dataset_json(args: argparse.Namespace) -> tuple[Path, Path]:
    from nnunetv2.paths import nnUNet_preprocessed

    from .run import dataset_name

    base = Path(nnUNet_preprocessed) / dataset_name(args.dataset)
    return base / f"{args.plans}.json", base / "dataset.json"


def cmd_evaluate(args: argparse.Namespace) -> int:
    _setup(args)
    from .run import evaluate_folder

    plans, dataset_json = _plans_and_dataset_json(args)
    result = evaluate_folder(args.labels, args.predictions, dataset_json, plans, max(1, args.workers))
    names = {str(v): k for k, v in json.loads(dataset_json.read_text())["labels"].items()}
    print(comparison_table({Path(args.predictions).name: result}, names, row="predictions"), end="")
    print(f"per case: {Path(args.predictions) / 'summary.json'} (nnU-Net), {Path(args.predictions) / 'hd95.json'}")
    return 0


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_table(results: dict[str, dict[str, Any]], label_names: dict[str, str], row: str = "trainer") -> str:
    """Two Markdown tables, one row per trainer (or other ``row`` key): DSC per class and their
    mean (nnU-Net's evaluation), then HD95 in mm per class and the mean over the classes that
    have one."""
    labels = list(next(iter(results.values()))["dice"])
    names = [label_names.get(k, k) for k in labels]
    out = []
    for metric, head, digits in (("dice", "mean DSC", 3), ("hd95_mm", "mean HD95 (mm)", 1)):
        columns = [row, *names, head]
        out += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for trainer, result in results.items():
            mean = result["mean_dice"] if metric == "dice" else result["mean_hd95_mm"]
            cells = [trainer, *(_cell(result[metric][k], digits) for k in labels), _cell(mean, digits)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def cmd_compare(args: argparse.Namespace) -> int:
    _setup(args)
    from .run import dataset_name, evaluate_folder, predict_folder, results_folder, train_fold

    from nnunetv2.paths import nnUNet_raw

    raw = Path(nnUNet_raw) / dataset_name(args.dataset)
    images, labels = raw / "imagesTs", raw / "labelsTs"
    for folder in (images, labels):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (compare predicts and scores the held-out imagesTs/labelsTs)")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for trainer in args.trainers:
        train_fold(args.dataset, args.fold, trainer, args.configuration, args.plans, args.epochs, args.iterations,
                   args.val_iterations, False, args.device, validate=False)
        model = results_folder(args.dataset, trainer, args.configuration, args.plans)
        predictions = predict_folder(model, images, out / trainer, (args.fold,), "checkpoint_final.pth", args.device)
        results[trainer] = evaluate_folder(labels, predictions, model / "dataset.json", model / "plans.json",
                                           max(1, args.workers))
    names = {str(v): k for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items()}
    table = comparison_table(results, names)
    (out / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "comparison.md").write_text(table)
    print(table, end="")
    return 0


def add_nnunet_commands(add_command: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add ``simmpnet nnunet`` and its subcommands; ``add_command`` is the top-level parser's."""
    text = (
        "Sim-MPNet inside nnU-Net v2: install (for nnU-Net's own scripts), convert, plan, train, predict, evaluate, "
        "compare (needs simmpnet[nnunet])"
    )
    parent = add_command("nnunet", help=text, description=text)
    sub = parent.add_subparsers(dest="nnunet_command", required=True)

    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument(
        "--root", metavar="DIR",
        help="use DIR/nnUNet_raw, DIR/nnUNet_preprocessed and DIR/nnUNet_results (default: nnU-Net's environment variables)",
    )
    shared.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="nnU-Net's worker processes (data augmentation: nnUNet_n_proc_DA, 0 = in the main process; preprocessing, "
        "evaluation); default 1",
    )

    def dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("-d", "--dataset", required=True, help="nnU-Net dataset id or name (DatasetXXX_Name)")

    def model(p: argparse.ArgumentParser, many_trainers: bool = False) -> None:
        if many_trainers:
            p.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", DEFAULT_TRAINER], metavar="TRAINER",
                           help=f"trainers to compare (default: nnUNetTrainer {DEFAULT_TRAINER})")
        else:
            p.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER,
                           help=f"simmpnet's ({', '.join(SIMMPNET_TRAINERS)}, each also with nnU-Net's short-run "
                           f"suffixes _1epoch, _5epochs ...) or any of nnU-Net's; default {DEFAULT_TRAINER}")
        p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
        p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")

    def length(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, help="nnU-Net's num_epochs (default 1000)")
        p.add_argument("--iterations", type=int, metavar="N", help="training iterations per epoch (default 250)")
        p.add_argument("--val-iterations", type=int, metavar="N", help="online-validation iterations per epoch (default 50)")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[shared], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    for name, func, help_text in (
        ("install", cmd_install, "put a module into nnU-Net's trainer folder so that nnUNetv2_train / nnUNetv2_predict "
         "find simmpnet's trainers (-tr nnUNetTrainerSimMPNet...)"),
        ("uninstall", cmd_uninstall, "remove the module that `simmpnet nnunet install` wrote"),
        ("status", cmd_status, "whether simmpnet's trainers are registered with nnU-Net, and for which nnU-Net"),
    ):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)

    p = command("convert-demo", cmd_convert_demo,
                "the demo brain data (prepared if needed) as Dataset990_BrainLobesDemo in nnUNet_raw")
    p.add_argument("--demo-data", default="runs/brain_demo_data", help="folder of the prepared demo (default runs/brain_demo_data)")

    p = command("plan", cmd_plan, "nnUNetv2_plan_and_preprocess: fingerprint, plans, preprocessing")
    dataset(p)
    p.add_argument("--configurations", nargs="+", default=["2d"], help="configurations to preprocess (default 2d)")

    p = command("train", cmd_train, "nnUNetv2_train with a trainer class: one fold, then nnU-Net's validation")
    dataset(p)
    p.add_argument("-f", "--fold", default="0", help="fold 0-4 or all (default 0)")
    model(p)
    length(p)
    p.add_argument("--resume", "--c", action="store_true", help="continue from the fold's latest checkpoint (nnU-Net's --c)")
    p.add_argument("--no-validation", action="store_true", help="skip nnU-Net's final validation of the fold")
    p.add_argument("--npz", action="store_true",
                   help="the final validation also saves softmax probabilities (nnU-Net's --npz; find_best_configuration "
                   "needs them for ensembles)")
    p.add_argument("--val", action="store_true", help="only run the final validation of a trained fold (nnU-Net's --val)")
    p.add_argument("--val_best", "--val-best", action="store_true",
                   help="validate checkpoint_best.pth instead of checkpoint_final.pth (nnU-Net's --val_best)")

    p = command("predict", cmd_predict, "nnUNetv2_predict: nnU-Net's sliding window over a folder of images")
    dataset(p)
    model(p)
    p.add_argument("-i", "--input", required=True, help="folder of images (CASE_0000.nii.gz ...)")
    p.add_argument("-o", "--output", required=True, help="folder for the label maps")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds to ensemble (default 0)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring at test time")

    p = command("evaluate", cmd_evaluate,
                "nnUNetv2_evaluate_folder (Dice per class) plus HD95 in mm per class on the same files")
    dataset(p)
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--labels", required=True, help="folder of reference label maps")
    p.add_argument("--predictions", required=True, help="folder of predicted label maps")

    p = command("compare", cmd_compare,
                "train each trainer on one fold for the same epochs and iterations, predict imagesTs, one table")
    dataset(p)
    p.add_argument("-f", "--fold", default="0", help="fold (default 0)")
    model(p, many_trainers=True)
    length(p)
    p.add_argument("--output", required=True, help="folder for predictions, comparison.json and comparison.md")
