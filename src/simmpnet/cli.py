"""The `simmpnet` command line: demo, train, experiment, evaluate, report, predict, export, prepare, verify, compare.

Every error a user can cause ends as one line on stderr naming the file and the problem, with
exit code 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import SimMPNetError, one_line
from .networks import MODEL_NAMES

if TYPE_CHECKING:  # the commands import the heavy modules only when they run
    from .data.dicomweb import DicomWebStudy

logger = logging.getLogger("simmpnet")


# ---------------------------------------------------------------------- helpers
def _parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs, values parsed as YAML (``lr=1e-3``, ``model_overrides={depths: [1,1,1,1]}``)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SimMPNetError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    return values


def _train_config_file(args: argparse.Namespace) -> Path | None:
    """``--config``; when resuming without it, the run's own ``resolved_config.yaml``, so that
    ``train --output RUN --resume`` alone continues the run as it was configured."""
    if args.config:
        return Path(args.config)
    if not args.resume:
        return None
    if not args.output:
        raise SimMPNetError("train --resume needs --output RUN (the run folder to continue) or --config")
    resolved = Path(args.output) / "resolved_config.yaml"
    if not resolved.is_file():
        raise SimMPNetError(
            f"{args.output}: no resolved_config.yaml to resume from (not a run folder of simmpnet train); "
            "give the run's --config"
        )
    return resolved


def _train_config(args: argparse.Namespace, base: Path | None):
    from .training import TrainConfig

    overrides: dict[str, Any] = {
        "data_root": getattr(args, "data", None),
        "output_dir": getattr(args, "output", None),
        "epochs": getattr(args, "epochs", None),
        "time_budget_s": getattr(args, "time_budget", None),
        "max_steps": getattr(args, "max_steps", None),
        "batch_size": getattr(args, "batch_size", None),
        "device": getattr(args, "device", None),
        "model": getattr(args, "model", None),
        "layout": getattr(args, "layout", None),
        "tensorboard": True if getattr(args, "tensorboard", False) else None,
    }
    overrides.update(_parse_sets(getattr(args, "set", None) or []))
    if base is None:
        return TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_yaml(base, **overrides)



# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .data.io import check_output_folder
    from .training import Trainer
    from .training.checkpointing import check_run_folder

    config = _train_config(args, _train_config_file(args))
    if (getattr(args, "nproc", None) or 1) > 1 and "LOCAL_RANK" not in os.environ:
        from .training.distributed import launch

        if config.batch_size % args.nproc:
            raise SimMPNetError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by --nproc {args.nproc}"
            )
        return launch(args.nproc, args.argv)  # the processes run this command under torchrun
    if int(os.environ.get("RANK", "0")) > 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    check_output_folder(Path(config.output_dir))
    if not args.resume:
        check_run_folder(config.output_dir, args.overwrite)  # before any work
    trainer = Trainer(config, overwrite=args.overwrite)
    try:
        if args.resume:
            trainer.resume()
        result = trainer.fit()
    finally:
        trainer.close()
    logger.info("training ended (%s) after %d epochs, %d steps, %.0f s", result["stop"], result["epochs"], result["steps"], result["elapsed_s"])
    if result["stop"] == "interrupted":
        print(
            f"interrupted at step {result['steps']}: {Path(config.output_dir) / 'last.pt'} saved; resume with\n"
            f"  simmpnet train --output {shlex.quote(str(config.output_dir))} --resume"
        )
        return 130
    if result["best_checkpoint"]:
        print(f"trained model: {result['best_checkpoint']} (best validation DSC {100 * result['best_val_dsc']:.2f} %)")
    else:
        print(f"trained model: {Path(config.output_dir) / 'last.pt'} (no best.pt: {result['no_best_reason']})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.tables import format_table

    if args.predictions or args.labels:
        summary = _score_folders(args)
        print(format_table(summary))
        print(f"metrics: {Path(args.output) / 'metrics.json'}, {Path(args.output) / 'metrics.md'}")
        return 0
    missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--data", args.data)) if not value]
    if missing:
        raise SimMPNetError(
            f"evaluate needs {' and '.join(missing)} (a model and a dataset), or --predictions and --labels"
        )
    for flag, value in (("--n-classes", args.n_classes), ("--class-names", args.class_names)):
        if value is not None:
            raise SimMPNetError(f"{flag} goes with --predictions; a checkpoint records its classes")
    from .evaluate import evaluate_checkpoint

    summary, _ = evaluate_checkpoint(
        Path(args.checkpoint),
        Path(args.data),
        args.split,
        Path(args.output),
        args.device,
        args.overlays,
        layout=args.layout,
        layout_options=_parse_sets(args.layout_options or []),
        workers=args.workers,
        resample=args.resample,
        progress=not args.quiet,
        precision=args.precision or "fp32",
    )
    print(format_table(summary))
    print(f"metrics: {Path(args.output) / 'metrics.json'}, {Path(args.output) / 'metrics.md'}")
    print(f"report:  {Path(args.output) / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluate import write_report
    from .evaluation.html_report import MAX_CASES, MAX_SLICES

    path = write_report(
        Path(args.run_dir), Path(args.output_file) if args.output_file else None,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None, data=Path(args.data) if args.data else None,
        layout=args.layout, split=args.split, device=args.device,
        max_cases=MAX_CASES if args.cases is None else args.cases,
        max_slices=MAX_SLICES if args.slices is None else args.slices,
        layout_options=_parse_sets(args.layout_options or []), resample=args.resample,
    )
    print(f"report: {path}")
    return 0


def _score_folders(args: argparse.Namespace) -> dict:
    """``evaluate --predictions DIR --labels DIR``: score existing label maps, same report."""
    from .data.io import check_output_folder
    from .evaluation.folders import evaluate_folders
    from .evaluation.jsonio import write_json
    from .evaluation.tables import write_metrics_markdown

    if not (args.predictions and args.labels):
        raise SimMPNetError("--predictions and --labels go together: the label maps to score and their ground truth")
    used = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--data", args.data), ("--split", args.split),
                                     ("--layout", args.layout), ("--layout-option", args.layout_options),
                                     ("--resample", args.resample), ("--precision", args.precision)) if value]
    if used:
        raise SimMPNetError(f"{', '.join(used)}: not used when scoring --predictions (no model runs)")
    out_dir = Path(args.output)
    check_output_folder(out_dir)
    names = args.class_names
    if names is not None and args.n_classes is not None and len(names) != args.n_classes:
        raise SimMPNetError(f"--class-names lists {len(names)} names for --n-classes {args.n_classes} (background first)")
    summary = evaluate_folders(
        Path(args.predictions), Path(args.labels), args.n_classes or (len(names) if names else None), names,
        workers=args.workers, progress=not args.quiet,
    )
    write_metrics_markdown(summary, out_dir / "metrics.md")
    write_json(summary, out_dir / "metrics.json")
    return summary


def _dicomweb_study(args: argparse.Namespace) -> DicomWebStudy | None:
    """The ``DicomWebStudy`` that ``--dicomweb`` and its options name, or None for ``--input``;
    a DICOMweb option without ``--dicomweb`` is refused."""
    from .data.dicomweb import DicomWebServer, DicomWebStudy

    options = {
        "--study": args.study, "--series": args.series, "--store": args.store, "--dicomweb-user": args.dicomweb_user,
        "--dicomweb-token": args.dicomweb_token, "--dicomweb-ca-bundle": args.dicomweb_ca_bundle,
    }
    if args.dicomweb is None:
        given = [flag for flag, value in options.items() if value]
        if given:
            raise SimMPNetError(f"{', '.join(given)}: only with --dicomweb URL (a study on a DICOMweb server)")
        return None
    if not args.study:
        raise SimMPNetError("--dicomweb needs --study UID: the StudyInstanceUID of the study to predict")
    server = DicomWebServer.from_environment(
        args.dicomweb, user=args.dicomweb_user, token=args.dicomweb_token, ca_bundle=args.dicomweb_ca_bundle
    )
    return DicomWebStudy(server, args.study, tuple(args.series or ()), store=args.store)


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.io import check_output_folder
    from .predict import OUTPUTS_EXIST, SUMMARY_NAME, predict_paths

    check_output_folder(Path(args.output))
    study = _dicomweb_study(args)
    batch = predict_paths(
        Path(args.checkpoint), study if study is not None else [Path(i) for i in args.input], Path(args.output),
        device=args.device,
        overlay=args.overlay,
        intensity_window=tuple(args.window) if args.window else None,
        resample=args.resample,
        inference=args.inference,
        overlap=args.overlap,
        dicom_seg=args.dicom_seg,
        save_probabilities=args.save_probabilities,
        skip_existing=args.skip_existing,
        stop_on_error=args.stop_on_error,
        command=shlex.join(["simmpnet", *args.argv]),
        precision=args.precision,
    )
    seg = ", each with a DICOM-SEG (<name>_seg.dcm)" if args.dicom_seg or args.store else ""
    exist = sum(o.reason == OUTPUTS_EXIST for o in batch.skipped)
    skipped = f", {exist} skipped (outputs exist)" if exist else ""
    without_seg = len(batch.skipped) - exist
    if without_seg:
        skipped += f", {without_seg} label map(s) without a DICOM-SEG (no foreground predicted)"
    failed = f", {len(batch.failed)} failed" if batch.failed else ""
    print(f"{len(batch.written)} label map(s) written to {args.output}{seg}{skipped}{failed}")
    if args.store:
        stored = sum(1 for outcome in batch.outcomes if outcome.stored)
        print(f"{stored} of {len(batch.outcomes)} DICOM-SEG(s) stored in study {args.study} on {study.server.base}")
    if Path(args.output).is_dir():
        print(f"model sha256 {batch.model['sha256']}; summary: {Path(args.output) / SUMMARY_NAME}")
    for outcome in batch.failed:
        print(f"simmpnet: failed: {outcome.reason}", file=sys.stderr)
    return 1 if batch.failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    fmt, target = args.format, Path(args.output_file or args.output)
    if args.output_file and fmt == "safetensors":
        raise SimMPNetError("--format safetensors writes a folder: give it with --output, not --output-file")
    if args.output and (fmt in ("onnx", "torchscript") or (fmt is None and target.suffix in (".onnx", ".pt"))):
        print(
            "simmpnet: warning: --output names a folder; a file is given with --output-file (--output FILE is "
            "deprecated and goes in the next release)", file=sys.stderr,
        )
    elif args.output:
        fmt = "safetensors"
    path, size, check = export_checkpoint(Path(args.checkpoint), target, fmt, args.input_size, check=not args.no_check)
    if fmt == "safetensors":
        print(f"wrote config.json + model.safetensors to {path} (load with SimMPNet.from_pretrained)")
    else:
        print(f"exported the eval network to {path} (input (batch, C, {size}, {size}), dynamic batch)")
    if check is not None:
        print(
            f"check on a random batch of {check.batch_size}: max |logit difference| {check.max_abs_diff:.2e}, "
            f"same label for {100 * check.label_agreement:.3f}% of pixels"
        )
    return 0



def _run_demo(args: argparse.Namespace, model: str, output: Path) -> tuple[dict, list[Path]]:
    from .demo import run_demo

    return run_demo(
        model, output, data=Path(args.data) if args.data else None, device=args.device,
        overrides=_parse_sets(args.set or []), steps=args.max_steps, budget=args.time_budget, resume=args.resume,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation.tables import format_table

    output = Path(args.output)
    summary, pictures = _run_demo(args, args.model, output)
    training = summary["training"]
    print(f"\nSim-MPNet demo ({args.model}): brain lobes on the Colin27 MRI, {training['steps']} steps in {training['elapsed_s']:.0f} s")
    print(format_table(summary))
    print(f"\nmetrics: {output / 'metrics.json'} and {output / 'metrics.md'}")
    print(f"curves:  {output / 'curves.png'}")
    print(f"overlays (image | truth | prediction): {output / 'overlays'}/ ({len(pictures)} pictures)")
    print(f"report:  {output / 'report.html'} (open it in a browser)")
    print(f"checkpoint: {output / 'last.pt'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.tables import format_comparison

    output = Path(args.output)
    summaries = {}
    for model in ("simmpnet", "unet"):
        summaries[model], _ = _run_demo(args, model, output / model)
    print(format_comparison(summaries))
    return 0


#: Loggers whose INFO lines each run of an experiment would repeat (its plan, data, output);
#: the run folder keeps them (resolved_config.yaml, log.jsonl), the experiment logs a line a run.
_RUN_LOGGERS = ("simmpnet.training", "simmpnet.evaluate", "simmpnet.evaluation", "simmpnet.data.layouts")


def cmd_experiment_run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment, summary_markdown

    output = Path(args.output)
    loggers = [logging.getLogger(name) for name in _RUN_LOGGERS]
    levels = [each.level for each in loggers]
    if not args.debug:
        for each in loggers:
            each.setLevel(max(each.getEffectiveLevel(), logging.WARNING))
    try:
        summary = run_experiment(Path(args.spec), output, device=args.device)
    except KeyboardInterrupt:
        print(
            "interrupted: the finished runs are kept and the current one continues from its last.pt; resume with\n"
            f"  simmpnet experiment run {shlex.quote(args.spec)} --output {shlex.quote(args.output)}"
        )
        return 130
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)
    print(summary_markdown(summary))
    print(f"summary: {output / 'summary.md'}, {output / 'summary.json'}, {output / 'summary.png'}")
    return 0


def cmd_experiment_summarize(args: argparse.Namespace) -> int:
    from .experiment import summarize_experiment, summary_markdown

    folder = Path(args.folder)
    print(summary_markdown(summarize_experiment(folder)))
    print(f"summary: {folder / 'summary.md'}, {folder / 'summary.json'}, {folder / 'summary.png'}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_dataset

    options = _parse_sets(args.converter_options or [])
    out = prepare_dataset(args.dataset, Path(args.raw), Path(args.output), **options)
    print(f"{args.dataset} prepared in {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .data.layouts import open_layout

    layout, data, n_classes, in_channels, options = args.layout, args.data, args.n_classes, args.in_channels, {}
    if args.config:  # the dataset a training config names, as `train --config` would open it
        from .training import TrainConfig

        config = TrainConfig.from_yaml(Path(args.config))
        layout, data = layout or config.layout, data or config.data_root
        n_classes = n_classes or config.n_classes
        in_channels = in_channels or config.in_channels
        options = dict(config.layout_options)
    if not data:
        raise SimMPNetError("verify needs --data (the dataset folder) or a --config that names its data_root")
    layout = layout or "synapse"
    options.update(_parse_sets(args.layout_options or []))
    args.layout, args.data = layout, data
    found = open_layout(layout, Path(data), n_classes, in_channels, **options)
    problems = found.verify()
    for problem in problems:
        print(problem)
    if problems:
        # One line on stderr, like every other failure: the count and the first problem.
        print(f"simmpnet: error: {len(problems)} problem(s) found in {args.data}; first: {problems[0]}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{split}: {size}" for split, size in found.split_sizes().items())
    print(f"{args.data}: no problems found ({args.layout} layout{'; ' + sizes if sizes else ''})")
    return 0


# ---------------------------------------------------------------------- parser
def _deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, append: bool = False, **kwargs: Any
) -> None:
    """Accept ``old`` for ``new`` for one more release, with a warning; hidden from the help
    (``append``: ``new`` collects repeated values, and so does ``old``)."""

    class Alias(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            print(f"simmpnet: warning: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)
            if append:
                setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
            else:
                setattr(namespace, self.dest, True if self.nargs == 0 else values)

    parser.add_argument(old, action=Alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simmpnet", description="Sim-MPNet medical image segmentation")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"simmpnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors in the log")
    # The same options after the subcommand; SUPPRESS keeps a subcommand from resetting what
    # was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and errors in the log"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")

    def layout_option(p: argparse.ArgumentParser, example: str) -> None:
        p.add_argument(
            "--layout-option", action="append", dest="layout_options", metavar="KEY=VALUE",
            help=f"dataset layout option (YAML value), over those the model was trained with; e.g. {example}",
        )
        _deprecated_alias(p, "--set", "--layout-option", "layout_options", append=True)

    from .evaluation.resample import INFERENCE_MODES, RESAMPLE_MODES

    def resample(p: argparse.ArgumentParser, default: str = "the training config's resample key, labels unless set") -> None:
        p.add_argument(
            "--resample", choices=RESAMPLE_MODES,
            help="how a prediction returns to the image size: labels (the paper's nearest resize of the "
            "label map) or logits (bilinear interpolation of the logits, then the argmax; smoother "
            f"boundaries when the network's input size is below the image's); default: {default}",
        )

    from .precision import PRECISIONS

    def precision(p: argparse.ArgumentParser, default: str | None) -> None:
        p.add_argument(
            "--precision", choices=PRECISIONS, default=default,
            help="fp32 (default); bf16: the network under bf16 autocast, the DMW-LA global reads in bf16 "
            "and the other fp32 islands kept (for devices with bf16 units; labels agree with fp32 on all "
            "but a small share of voxels, "
            "docs/prediction.md); auto: bf16 on a CUDA GPU or a CPU with bf16 units, else fp32",
        )

    checkpoint_help = (
        "the trained model: a last.pt / best.pt of simmpnet train, a file of SimMPNet.save, or a folder of "
        "SimMPNet.save_pretrained"
    )
    demo_help = "train on the embedded brain-lobes MRI (Debian mricron-data) and evaluate"
    for name, func, text in (("demo", cmd_demo, demo_help), ("compare", cmd_compare, "demo for Sim-MPNet and a U-Net, side by side")):
        p = add_command(name, help=text, description=text)
        p.add_argument("--output", default=f"runs/{name}", help="output folder")
        p.add_argument(
            "--max-steps", type=int,
            help="training steps per model (default: the demo config's 450)",
        )
        _deprecated_alias(p, "--steps", "--max-steps", "max_steps", type=int)
        p.add_argument(
            "--time-budget", type=float, metavar="SECONDS",
            help="also stop training after this many seconds per model (the result then depends on the machine's speed)",
        )
        _deprecated_alias(p, "--budget", "--time-budget", "time_budget", type=float)
        p.add_argument("--data", help="folder for the prepared demo data (default: next to the output)")
        p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt (a Ctrl-C saves it)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training config key")
        if name == "demo":
            p.add_argument(
                "--model", default="simmpnet", choices=MODEL_NAMES,
                help="the network: Sim-MPNet (default), MONAI's U-Net or nnU-Net's 2d U-Net (nnunet extra)",
            )
        device(p)
        p.set_defaults(func=func)

    text = (
        "train several configurations over seeds and folds, evaluate each run on its fold's test cases and "
        "compare them with paired bootstrap intervals (docs/experiments.md)"
    )
    p = add_command("experiment", help="train and compare configurations over seeds and folds", description=text)
    experiment = p.add_subparsers(dest="experiment_command", required=True)
    text = (
        "run every run of a YAML spec that is not finished (a rerun resumes: finished runs are kept, an "
        "unfinished one continues from its last.pt), then write the summary"
    )
    q = experiment.add_parser("run", parents=[common], help="run the experiment of a spec", description=text)
    q.add_argument("spec", metavar="SPEC", help="the experiment's YAML spec: configurations, seeds, folds, max_steps")
    q.add_argument(
        "--output", required=True,
        help="the experiment's folder: a run folder per configuration, seed and fold (CONFIG/seedK/foldF), the summary",
    )
    q.add_argument("--device", help="auto, cpu or cuda (default: the spec's device key, else auto)")
    q.set_defaults(func=cmd_experiment_run)
    text = (
        "rebuild summary.md, summary.json and summary.png of an experiment folder from its finished runs, "
        "without training: mean ± sd per configuration and class, paired differences from the reference"
    )
    q = experiment.add_parser("summarize", parents=[common], help="the tables of an experiment folder", description=text)
    q.add_argument("folder", metavar="DIR", help="a folder of simmpnet experiment run")
    q.set_defaults(func=cmd_experiment_summarize)

    text = "train a model on a dataset in any layout (synapse, nnunet, folder2d, acdc, isic2018, segpc2021)"
    p = add_command("train", help=text, description=text)
    p.add_argument("--config", help="YAML training config (keys of simmpnet.training.TrainConfig)")
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--layout", help="dataset layout (default synapse: train_npz/, test_vol_h5/, lists/)")
    p.add_argument("--output", help="output folder for checkpoints, log and curves")
    p.add_argument(
        "--model", choices=MODEL_NAMES,
        help="the network: Sim-MPNet, MONAI's U-Net or nnU-Net's 2d U-Net (nnunet extra) (config key model)",
    )
    p.add_argument("--epochs", type=int, help="epochs to train (config key epochs)")
    p.add_argument("--batch-size", type=int, help="slices per step, over all processes (config key batch_size)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimisation steps (config key max_steps)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop training after this many seconds")
    p.add_argument(
        "--resume", action="store_true",
        help="continue from OUTPUT/last.pt (written at every stop, a Ctrl-C included), with OUTPUT/resolved_config.yaml "
        "unless --config is given",
    )
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in OUTPUT (its checkpoints, log and curves) instead of refusing",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a config key (YAML value); layout options go in layout_options, e.g. 'layout_options={fold: 1}'",
    )
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--tensorboard", action="store_true",
        help="also write TensorBoard event files to OUTPUT/tensorboard (scalars of the log, validation "
        'overlays; pip install "simmpnet[tensorboard]"); the same as --set tensorboard=true',
    )
    p.add_argument(
        "--nproc", type=int, metavar="N",
        help="distributed data-parallel training in N processes on this machine (via torchrun; "
        "batch size is the global batch)",
    )
    p.set_defaults(func=cmd_train)

    from .data.prepare import PREPARERS

    p = add_command("prepare", help="convert a raw dataset download", description="convert a raw dataset download")
    p.add_argument("dataset", choices=sorted(PREPARERS))
    p.add_argument("--raw", required=True, help="the folder of the download as distributed")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--converter-option", action="append", dest="converter_options", metavar="KEY=VALUE",
        help="option of the dataset's converter (YAML value), e.g. size=256",
    )
    _deprecated_alias(p, "--set", "--converter-option", "converter_options", append=True)
    p.set_defaults(func=cmd_prepare)

    p = add_command("verify", help="check a dataset and list every problem", description="check a dataset")
    p.add_argument(
        "--config",
        help="a training config: check the dataset it names, as `train --config` opens it (data_root, layout, "
        "n_classes, in_channels, layout_options); the other options override it",
    )
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--layout", help="dataset layout (default synapse)")
    p.add_argument("--n-classes", type=int, help="classes including background (checks the label range)")
    p.add_argument(
        "--in-channels", type=int,
        help="the model's input channels (checks the images: converted with a warning where the layout can, else an error)",
    )
    layout_option(p, "mask_suffix=_mask")
    p.set_defaults(func=cmd_verify)

    text = (
        "evaluate a checkpoint on the labelled cases of a dataset (--checkpoint, --data), or score "
        "existing predictions against ground truth (--predictions, --labels); both write the same report"
    )
    p = add_command("evaluate", help="evaluate a checkpoint, or score a folder of predictions", description=text)
    p.add_argument("--checkpoint", help="the model to evaluate (with --data)")
    p.add_argument("--data", help="dataset folder, in the layout the model was trained on unless --layout says otherwise")
    p.add_argument("--split", help="split to evaluate (default: the layout's test_vol, test or val)")
    p.add_argument("--layout", help="dataset layout (default: the one the model was trained on)")
    p.add_argument(
        "--predictions", metavar="DIR",
        help="score the label maps in DIR instead of a model (with --labels; files paired by name)",
    )
    p.add_argument("--labels", metavar="DIR", help="the ground-truth label maps for --predictions")
    p.add_argument(
        "--n-classes", type=int,
        help="with --predictions: classes including background (default: the largest label found, plus one)",
    )
    p.add_argument("--class-names", nargs="+", metavar="NAME", help="with --predictions: all class names, background first")
    p.add_argument("--output", required=True, help="folder for metrics.json, metrics.md and overlays")
    p.add_argument(
        "--max-overlays", type=int, default=5, metavar="N", dest="overlays",
        help="slices to draw as image | truth | prediction pictures into OUTPUT/overlays/ (default 5; 0: none)",
    )
    _deprecated_alias(p, "--overlays", "--max-overlays", "overlays", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes computing the metrics (default 1)")
    layout_option(p, "split_file=splits.json")
    resample(p)
    precision(p, None)
    device(p)
    p.set_defaults(func=cmd_evaluate)

    text = (
        "write RUN_DIR/report.html: one self-contained page with the settings, the sortable metric tables, the "
        "learning curves, a slice viewer per case and the memory (the prototype category each position reads)"
    )
    p = add_command("report", help="an HTML report of a run or evaluation folder", description=text)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run or evaluation folder (log.jsonl, metrics.json, checkpoints)")
    p.add_argument("--output-file", dest="output_file", metavar="FILE", help="the HTML file (default RUN_DIR/report.html)")
    _deprecated_alias(p, "--output", "--output-file", "output_file")
    p.add_argument("--checkpoint", help="the model of the slice viewer (default: the one metrics.json names, else RUN_DIR/last.pt)")
    p.add_argument("--data", help="dataset folder (default: the one metrics.json or the training config names)")
    p.add_argument("--layout", help="dataset layout (default: as recorded)")
    p.add_argument("--split", help="split whose cases are shown (default: as recorded)")
    p.add_argument("--cases", type=int, help="cases with a slice viewer (default 3)")
    p.add_argument("--slices", type=int, help="slices per case, worst errors first (default 24)")
    layout_option(p, "fold=1")
    resample(p, default="the mode metrics.json records, else the training config's resample key, labels unless set")
    device(p)
    p.set_defaults(func=cmd_report)

    p = add_command("predict", help="predict label maps for images or volumes", description="predict label maps")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="PATH",
        help="a file or a folder (PNG, JPEG, TIFF, BMP, NIfTI, NRRD, MHA, npz, h5; DICOM series in a folder, "
        "each predicted as one volume), or several DICOM files, grouped into series",
    )
    source.add_argument(
        "--dicomweb", metavar="URL",
        help="instead of --input: the image series of a study on this DICOMweb server (base URL of its QIDO-RS, "
        "WADO-RS and STOW-RS, e.g. http://host:8042/dicom-web), with --study; each series is predicted as the same "
        "series in a folder is, and named after its SeriesInstanceUID (needs pip install \"simmpnet[dicomweb]\")",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--overlays", action="store_true", dest="overlay",
                   help="also write an overlay PNG per input, into OUTPUT/overlays/")
    _deprecated_alias(p, "--overlay", "--overlays", "overlay", nargs=0)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write the softmax probabilities of each input, OUTPUT/probabilities/<name>.npz "
                   "(key probabilities: float32, class-first)")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose outputs exist (resume a batch that was stopped)")
    p.add_argument("--stop-on-error", action="store_true",
                   help="stop at the first input that cannot be read or written (default: go on, report it in "
                   "the summary and exit with status 1)")
    p.add_argument(
        "--dicom-seg", action="store_true",
        help="DICOM series input only: also write a DICOM Segmentation object referencing the series "
        '(<name>_seg.dcm, one segment per class predicted, none when no class is; needs pip install "simmpnet[dicom]")',
    )
    p.add_argument(
        "--window", nargs=2, type=float, metavar=("LOW", "HIGH"),
        help="intensity window mapped to [0, 1] (default: the one the model was trained with)",
    )
    resample(p)
    from .data.dicomweb import PASSWORD_VARIABLE, TOKEN_VARIABLE

    web = p.add_argument_group(
        "DICOMweb", "with --dicomweb; nothing is sent to the server unless --store is given, and secrets are read "
        "from the environment, never from the command line"
    )
    web.add_argument("--study", metavar="UID", help="the StudyInstanceUID of the study to predict")
    web.add_argument(
        "--series", nargs="+", metavar="UID",
        help="only these series of the study (default: every image series; SEG, SR, PR and other series without "
        "images are left out)",
    )
    web.add_argument(
        "--store", action="store_true",
        help="send each DICOM-SEG back into the study (STOW-RS); implies --dicom-seg",
    )
    web.add_argument(
        "--dicomweb-user", metavar="USER",
        help=f"HTTP basic authentication as USER, the password read from the environment variable {PASSWORD_VARIABLE}",
    )
    web.add_argument(
        "--dicomweb-token", action="store_true",
        help=f"bearer token authentication, the token read from the environment variable {TOKEN_VARIABLE}",
    )
    web.add_argument(
        "--dicomweb-ca-bundle", metavar="FILE",
        help="PEM file of the certificate authorities that verify an https server's certificate (default: "
        "certifi's); certificates are always verified",
    )
    p.add_argument(
        "--inference", choices=INFERENCE_MODES, default="resize",
        help="resize (default; the paper's protocol): every slice resized to the network's input size, "
        "what the model was trained on when its training data were resized; sliding-window: "
        "Gaussian-weighted tiles of the input size at the image's own resolution, for images larger "
        "than the training size when the training crops were at native resolution (nnU-Net-style "
        "data); --resample does not apply to it",
    )
    p.add_argument(
        "--overlap", type=float, default=0.5, metavar="F",
        help="fraction of a tile its neighbours share in the sliding window, in [0, 1) (default 0.5)",
    )
    precision(p, "fp32")
    device(p)
    p.set_defaults(func=cmd_predict)

    text = (
        "export the eval network (sum of the heads) of a checkpoint to ONNX or TorchScript, or its "
        "weights without the optimiser to a safetensors folder (SimMPNet.from_pretrained)"
    )
    p = add_command("export", help="export a checkpoint to ONNX, TorchScript or a safetensors folder", description=text)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--output-file", metavar="FILE", help="the file to write: .onnx, or .pt for TorchScript")
    where.add_argument("--output", help="the folder to write with --format safetensors (config.json + model.safetensors)")
    p.add_argument(
        "--format", choices=["onnx", "torchscript", "safetensors"],
        help="default: from the output's suffix; safetensors: config.json + model.safetensors in a folder",
    )
    p.add_argument("--input-size", type=int, help="input side in pixels (default: the checkpoint's)")
    p.add_argument("--no-check", action="store_true", help="skip running the export once against PyTorch")
    p.set_defaults(func=cmd_export)

    from .nnunet.cli import add_nnunet_commands

    add_nnunet_commands(add_command, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A terminal in the C locale takes ASCII only: a "±" in a table or a non-ASCII file name
    # must come out replaced, not end the command with an encoding error.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING if args.quiet else logging.INFO
    # simmpnet's own records at `level`; other libraries' INFO lines (highdicom writes nine per
    # DICOM-SEG) only with --debug.
    logging.basicConfig(level=level if args.debug else logging.WARNING, format="%(message)s", stream=sys.stderr,
                        force=True)
    own = logging.getLogger("simmpnet")
    own_level, own.level = own.level, level
    shown_warnings = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _warning_in_one_line
    try:
        return args.func(args)
    except SimMPNetError as err:
        if args.debug:
            raise
        print(f"simmpnet: error: {one_line(err, limit=None)}", file=sys.stderr)
        return 2
    except OSError as err:
        if args.debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"simmpnet: error: {where}{one_line(err.strerror or err, limit=None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simmpnet: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown_warnings
        own.setLevel(own_level)


def _warning_in_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line, without the path of the file that raised it."""
    print(f"simmpnet: warning: {one_line(message, limit=None)} ({category.__name__})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
