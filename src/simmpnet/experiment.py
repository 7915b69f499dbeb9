"""Experiments: several training configurations, each trained with several seeds on every fold
of a dataset, evaluated on the fold's held-out cases and compared with paired bootstrap
intervals (``simmpnet experiment run`` and ``summarize``; docs/experiments.md).

One YAML spec names the configurations, the seeds, the folds and the step budget
(`load_spec`).  Every run is an ordinary ``simmpnet train`` run folder,
``<output>/<configuration>/seed<k>/fold<f>/``, with the evaluation of its last checkpoint on
the fold's test cases (``metrics.json``) and ``done.json``, written last and atomically, which
marks it finished.  Running the same command again skips the finished runs and resumes an
unfinished one from its ``last.pt`` (`run_experiment`).  `summarize_experiment` rebuilds
the tables from the run folders alone: ``summary.md``, ``summary.json`` and ``summary.png``.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data.brain_demo import prepare_brain_demo
from .data.layouts import default_test_split, open_layout
from .demo import demo_config
from .errors import CheckpointError, InputError, one_line
from .evaluate import evaluate_checkpoint
from .evaluation.report import write_json
from .files import atomic_write, check_output_folder
from .models.factory import MODEL_NAMES
from .provenance import run_record
from .training import TrainConfig, Trainer

logger = logging.getLogger(__name__)

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "BOOTSTRAP_SEED",
    "CONVENTION_NAMES",
    "Configuration",
    "ExperimentSpec",
    "Run",
    "load_spec",
    "paired_bootstrap",
    "run_config",
    "run_experiment",
    "summarize_experiment",
    "summary_markdown",
]

#: The spec as a run used it, in the experiment's folder: what ``summarize`` reads.
SPEC_FILE = "experiment.yaml"
#: Written last and atomically into a run folder: the run is finished and is never redone.
DONE_FILE = "done.json"
SPEC_KEYS = ("configurations", "seeds", "folds", "n_folds", "max_steps", "reference", "dataset", "train", "device")
DATASET_KEYS = ("config", "data")
#: Training config keys the experiment sets for each run; a spec that sets them is refused.
RUN_KEYS = ("data_root", "output_dir", "seed", "max_steps")
#: Keys that say where and how a run ran, not what it trained: a finished run whose saved
#: config differs from the spec only in these is still the same run.
RUNTIME_KEYS = ("data_root", "output_dir", "device", "threads", "num_workers", "progress", "log_every", "tensorboard")
#: Mapping keys that a configuration extends key by key instead of replacing.
MERGED_KEYS = ("model_overrides", "layout_options", "augment")
#: The fold keys of the layout options, which the experiment sets.
FOLD_KEYS = ("fold", "n_folds")
DEFAULT_N_FOLDS = 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

#: The three Dice conventions of `simmpnet.evaluation.metrics` (docs/evaluation.md): the
#: headline (empty/empty excluded), the paper protocol, and the DSC pooled over the voxels.
CONVENTION_NAMES = ("excluded", "paper", "pooled")
CONVENTION_SHORT = {"excluded": "headline (excluded)", "paper": "paper protocol", "pooled": "pooled"}
CONVENTION_TITLES = {
    "excluded": "DSC, headline convention (empty/empty excluded)",
    "paper": "DSC, paper protocol",
    "pooled": "pooled DSC (voxels of all test cases of a run together)",
}
BOOTSTRAP_SAMPLES = 2000
#: Fixed, so that ``summarize`` writes the same intervals every time.
BOOTSTRAP_SEED = 0
INTERVAL = 0.95


# ---------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Configuration:
    """One configuration: its ``name`` (its folder) and its training config ``keys`` (``model``
    included) over the base config."""

    name: str
    keys: dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One training run of an experiment: a configuration, a seed and a fold."""

    configuration: str
    seed: int
    fold: int

    def folder(self, output: Path) -> Path:
        """The run's folder under the experiment's ``output`` folder."""
        return output / self.configuration / f"seed{self.seed}" / f"fold{self.fold}"

    def label(self) -> str:
        """The run in words, for the log."""
        return f"{self.configuration} seed {self.seed} fold {self.fold}"


@dataclass(frozen=True)
class ExperimentSpec:
    """A parsed and checked experiment spec (see `load_spec` for the keys)."""

    path: Path
    configurations: tuple[Configuration, ...]
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    n_folds: int
    max_steps: int | None
    reference: str
    train: dict[str, Any]
    device: str
    base_config: Path | None  # None: the embedded brain demo with the demo's config
    data: Path | None

    def runs(self) -> list[Run]:
        """Every run, seed by seed and fold by fold, all configurations of a fold together,
        so that an experiment stopped half-way already holds complete pairs to compare."""
        return [
            Run(configuration.name, seed, fold)
            for seed in self.seeds for fold in self.folds for configuration in self.configurations
        ]

    def configuration(self, name: str) -> Configuration:
        """The configuration called ``name``."""
        return next(c for c in self.configurations if c.name == name)

    def data_folder(self, output: Path) -> Path:
        """The dataset folder: ``dataset.data``, else the base config's ``data_root``, else (the
        embedded demo) ``brain_demo_data`` next to the output folder, as ``simmpnet demo`` puts it."""
        if self.data is not None:
            return self.data
        if self.base_config is not None:
            root = _read_mapping(self.base_config).get("data_root")
            if not root:
                raise InputError(f"{self.path}: dataset.data is not set and {self.base_config} names no data_root")
            return Path(root)
        return output.resolve().parent / "brain_demo_data"

    def to_dict(self, data: Path) -> dict[str, Any]:
        """The spec as ``experiment.yaml`` holds it: paths absolute, ``folds`` listed."""
        return {
            "dataset": {"config": str(self.base_config.resolve()) if self.base_config else None, "data": str(data.resolve())},
            "configurations": [{"name": c.name, **c.keys} for c in self.configurations],
            "reference": self.reference,
            "seeds": list(self.seeds),
            "n_folds": self.n_folds,
            "folds": list(self.folds),
            "max_steps": self.max_steps,
            "device": self.device,
            "train": self.train,
        }


def _read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping, or a one-line `InputError` naming it."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({one_line(str(err).splitlines()[0])})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({one_line(err)})") from err
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of keys, got {type(values).__name__}")
    return values


def _integers(value: Any, where: str, least: int) -> tuple[int, ...]:
    """A non-empty list of distinct integers of at least ``least``."""
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: expected a non-empty list of integers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < least:
            raise InputError(f"{where}: {item!r} is not an integer of at least {least}")
    if len(set(value)) != len(value):
        raise InputError(f"{where}: repeated values in {value}")
    return tuple(value)


def _training_keys(values: Any, where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Training config keys (and the ``extra`` keys) of the spec's ``train`` or of a
    configuration: known keys, none of those the experiment sets, no fold in the layout options."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: expected a mapping of training config keys, got {values!r}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known - set(extra))
    if unknown:
        raise InputError(f"{where}: unknown training config keys {unknown} (docs/training.md lists them)")
    taken = sorted(set(values) & set(RUN_KEYS))
    if taken:
        raise InputError(
            f"{where}: {', '.join(taken)} set by the experiment for each run (the step budget is the spec's "
            "max_steps, the seeds its seeds)"
        )
    options = values.get("layout_options", {})
    if not isinstance(options, dict):
        raise InputError(f"{where}.layout_options: expected a mapping, got {options!r}")
    folds = sorted(set(options) & set(FOLD_KEYS))
    if folds:
        raise InputError(f"{where}.layout_options: {', '.join(folds)} set by the experiment (the spec's folds, n_folds)")
    return dict(values)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and check an experiment spec; every error names the file and the key.

    Keys (docs/experiments.md):

    - ``configurations`` (required): a list of mappings, each with a ``name`` (letters, digits,
      ``_ . -``; its folder), a ``model`` (``simmpnet``, the default, ``unet`` or ``nnunet``) and any other
      training config keys (e.g. ``variant``, ``model_overrides`` with the ablation switches,
      ``wld_blocks``, ``lr``);
    - ``seeds`` (required): the seeds, one run per seed, fold and configuration;
    - ``n_folds`` (default 5) and ``folds`` (``all``, the default, or a list of folds);
    - ``max_steps``: the step budget of every run (default: the base config's);
    - ``reference``: the configuration the others are compared with (default: the first);
    - ``dataset``: ``config``, a training config file whose keys (``data_root``, ``layout``,
      ``n_classes`` ...) are the base of every run, and ``data``, the dataset folder; both
      optional: by default the embedded brain demo with the demo's config, prepared next to
      the output folder;
    - ``train``: training config keys for every configuration (before the configuration's own);
    - ``device``: ``auto`` (default), ``cpu`` or ``cuda``.

    Relative paths are relative to the spec's folder.  The configurations are checked as
    training configs by `run_experiment` (`run_config`), before anything is trained.
    """
    path = Path(path)
    values = _read_mapping(path)
    unknown = sorted(set(values) - set(SPEC_KEYS))
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; known: {', '.join(SPEC_KEYS)}")
    for key in ("configurations", "seeds"):
        if key not in values:
            raise InputError(f"{path}: {key}: required")

    raw_configurations = values["configurations"]
    if not isinstance(raw_configurations, list) or not raw_configurations:
        raise InputError(f"{path}: configurations: expected a non-empty list of mappings")
    configurations: list[Configuration] = []
    for index, raw in enumerate(raw_configurations):
        where = f"{path}: configurations[{index}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected a mapping with a name and training config keys, got {raw!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError(f"{where}.name: {name!r} is not a folder name (letters, digits, _ . -)")
        where = f"{path}: configurations[{index}] ({name})"
        if name in {c.name for c in configurations}:
            raise InputError(f"{where}.name: used twice")
        keys = _training_keys(raw, where, extra=("name",))
        keys.pop("name")
        keys.setdefault("model", "simmpnet")
        if keys["model"] not in MODEL_NAMES:
            raise InputError(f"{where}.model: {keys['model']!r} is not one of {', '.join(MODEL_NAMES)}")
        configurations.append(Configuration(name, keys))

    seeds = _integers(values["seeds"], f"{path}: seeds", 0)
    n_folds = values.get("n_folds", DEFAULT_N_FOLDS)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise InputError(f"{path}: n_folds: expected an integer of at least 2, got {n_folds!r}")
    folds_value = values.get("folds", "all")
    folds = tuple(range(n_folds)) if folds_value == "all" else _integers(folds_value, f"{path}: folds", 0)
    outside = [f for f in folds if f >= n_folds]
    if outside:
        raise InputError(f"{path}: folds: {outside} outside 0..{n_folds - 1} (n_folds {n_folds})")
    max_steps = values.get("max_steps")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InputError(f"{path}: max_steps: expected a positive integer, got {max_steps!r}")
    names = [c.name for c in configurations]
    reference = values.get("reference", names[0])
    if reference not in names:
        raise InputError(f"{path}: reference: {reference!r} is not a configuration ({', '.join(names)})")
    train = _training_keys(values.get("train") or {}, f"{path}: train")
    if "model" in train:
        raise InputError(f"{path}: train.model: the model belongs to each configuration")
    device = values.get("device", "auto")
    if not isinstance(device, str):
        raise InputError(f"{path}: device: expected auto, cpu or cuda, got {device!r}")

    dataset = values.get("dataset") or {}
    if not isinstance(dataset, dict):
        raise InputError(f"{path}: dataset: expected a mapping with {' and/or '.join(DATASET_KEYS)}, got {dataset!r}")
    unknown = sorted(set(dataset) - set(DATASET_KEYS))
    if unknown:
        raise InputError(f"{path}: dataset: unknown keys {unknown}; known: {', '.join(DATASET_KEYS)}")
    paths: dict[str, Path | None] = {}
    for key in DATASET_KEYS:
        value = dataset.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{path}: dataset.{key}: expected a path, got {value!r}")
        paths[key] = None if value is None else (path.parent / Path(value).expanduser())
    return ExperimentSpec(
        path, tuple(configurations), seeds, folds, n_folds, max_steps, reference, train, device,
        paths["config"], paths["data"],
    )


def _merge(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """``layer`` over ``values``: the mappings of `MERGED_KEYS` key by key, the rest replaced."""
    for key, value in layer.items():
        if key in MERGED_KEYS and isinstance(values.get(key), dict) and isinstance(value, dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def run_config(spec: ExperimentSpec, run: Run, data: Path, output: Path, device: str) -> TrainConfig:
    """The training config of ``run``: the base (the demo's ``configs/brain_demo.yaml`` with its
    section for the model, or ``dataset.config``), then ``val_list: null`` and ``progress:
    false`` (the last checkpoint is scored, and the experiment logs a line a run), the spec's
    ``train``, the configuration's keys, and what the experiment sets: the data, the run's
    folder, seed, fold and the step budget.

    Raises:
        InputError: a configuration the training config refuses, naming the spec and the
            configuration.
    """
    configuration = spec.configuration(run.configuration)
    folder = run.folder(output)
    try:
        if spec.base_config is None:
            values = dataclasses.asdict(demo_config(configuration.keys["model"], data, folder, device))
        else:
            values = _read_mapping(spec.base_config)
        _merge(values, {"val_list": None, "progress": False})
        _merge(values, spec.train)
        _merge(values, configuration.keys)
        values.update(data_root=str(data), output_dir=str(folder), seed=run.seed, device=device)
        if spec.max_steps is not None:
            values["max_steps"] = spec.max_steps
        values["layout_options"] = {**(values.get("layout_options") or {}), "fold": run.fold, "n_folds": spec.n_folds}
        return TrainConfig.from_dict(values)
    except InputError as err:
        base = f" over {spec.base_config}" if spec.base_config else ""
        raise InputError(f"{spec.path}: configuration {configuration.name}{base}: {err}") from err


# ---------------------------------------------------------------------------------- running
def _saved_config(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON holds it (tuples as lists), for comparison with a finished run's."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object (``what`` names it in the error)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read {what} ({one_line(err)})") from err
    if not isinstance(values, dict):
        raise InputError(f"{path}: not {what}")
    return values


@functools.cache
def _defaults() -> dict[str, Any]:
    """The defaults of the training config's keys, as JSON holds them."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return json.loads(json.dumps(values))


def _check_finished(folder: Path, config: TrainConfig) -> None:
    """A finished run must be the run the spec asks for now: its training config may differ
    only in `RUNTIME_KEYS`."""
    done = folder / DONE_FILE
    if not done.is_file():
        return
    saved = _read_json(done, "a completion file of simmpnet experiment").get("train_config")
    if not isinstance(saved, dict):
        raise InputError(f"{done}: no train_config (not a completion file of simmpnet experiment)")
    now = _saved_config(config)
    # A key the run's version did not have yet held its default then (newer keys come with
    # the default that keeps the old behaviour).
    saved = {**_defaults(), **saved}  # (a new dict: the cached defaults stay as they are)
    differ = sorted(k for k in set(saved) | set(now) if k not in RUNTIME_KEYS and saved.get(k) != now.get(k))
    if differ:
        raise InputError(
            f"{done}: the run finished with another configuration ({', '.join(differ)} differ from the spec); "
            f"remove {folder} to train it again, or give the changed configuration another name"
        )


def _check_folds(spec: ExperimentSpec, configs: Mapping[Run, TrainConfig], data: Path) -> None:
    """Every fold of every distinct dataset setting has training slices and test cases."""
    seen: set[str] = set()
    for run, config in configs.items():
        key = json.dumps([config.layout, config.layout_options, config.train_list, config.n_classes], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            layout = open_layout(config.layout, data, config.n_classes, config.in_channels, **config.layout_options)
            split = default_test_split(layout)
            if len(layout.slices(config.train_list)) == 0 or len(layout.cases(split)) == 0:
                raise InputError(f"{data}: no training slices ({config.train_list}) or no test cases ({split})")
        except InputError as err:
            raise InputError(f"{spec.path}: fold {run.fold} of {spec.n_folds}: {err}") from err


def _trainer(config: TrainConfig, folder: Path) -> Trainer:
    """A trainer that continues the run from its ``last.pt``, or starts it again when there is
    none or it cannot be resumed (a folder left by a kill before the first checkpoint)."""
    if (folder / "last.pt").is_file():
        trainer = Trainer(config)
        try:
            trainer.resume()
            return trainer
        except CheckpointError as err:
            logger.warning("%s: cannot be resumed (%s); training the run again", folder / "last.pt", one_line(err))
            trainer.close()
    return Trainer(config, overwrite=True)


def _train_and_evaluate(run: Run, config: TrainConfig, data: Path, device: str) -> dict[str, Any]:
    """Train (or continue) the run, evaluate its last checkpoint on the fold's test cases, and
    write ``done.json`` last; returns its content."""
    folder = Path(config.output_dir)
    cpu_started = time.process_time()
    resumed = (folder / "last.pt").is_file()
    trainer = _trainer(config, folder)
    try:
        result = trainer.fit()
        made = run_record(str(trainer.device))  # before close() gives back the threads it trained on
    finally:
        trainer.close()
    if result["stop"] == "interrupted":  # a Ctrl-C: last.pt is saved and a rerun continues the run
        raise KeyboardInterrupt
    started = time.monotonic()
    # The last checkpoint is scored: choosing one on the test cases would flatter the figure.
    summary, _ = evaluate_checkpoint(
        folder / "last.pt", data, None, folder, device, overlays=0,
        extra={"training": result, "experiment": {"configuration": run.configuration, "seed": run.seed, "fold": run.fold}},
    )
    record = {
        "configuration": run.configuration,
        "seed": run.seed,
        "fold": run.fold,
        "dsc": {
            "excluded": summary["conventions"]["excluded"]["mean"]["dsc"],
            "paper": summary["conventions"]["paper"]["mean"]["dsc"],
            "pooled": summary["pooled_dsc"]["mean"],
        },
        "n_cases": summary["n_cases"],
        "steps": result["steps"],
        "train_s": result["elapsed_s"],
        "evaluate_s": time.monotonic() - started,
        # CPU seconds of this process (all its threads) on the run: what the run cost, whatever
        # else shared the machine; a run continued from an earlier process's last.pt counts
        # this process only.
        "cpu_s": time.process_time() - cpu_started,
        "continued": resumed,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "provenance": made,
        "train_config": _saved_config(config),
    }
    write_json(record, folder / DONE_FILE)
    return record


def _percent(value: float | None) -> str:
    """A fraction as a percentage for the log."""
    return "n/a" if value is None else f"{100 * value:.2f} %"


def run_experiment(spec_path: str | Path, output: str | Path, device: str | None = None) -> dict[str, Any]:
    """Run every run of the spec that is not finished, then summarize (`summarize_experiment`).

    The whole spec is checked first (its keys, every configuration as a training config, the
    finished runs against it, every fold of the data), before anything is trained.  A finished
    run (``done.json``) is never redone; an unfinished one continues from its ``last.pt``.  One
    log line a run: its number, configuration, seed, fold, DSC and time.

    Args:
        spec_path: the experiment's YAML spec (`load_spec`).
        output: the experiment's folder.
        device: overrides the spec's ``device``.

    Returns:
        The summary (`summarize_experiment`).

    Raises:
        InputError: a problem of the spec, a finished run or the data, before any training.
        KeyboardInterrupt: a Ctrl-C; the current run's ``last.pt`` is saved.
    """
    spec = load_spec(spec_path)
    output = Path(output)
    check_output_folder(output)
    device = device or spec.device
    data = spec.data_folder(output)
    runs = spec.runs()
    configs = {run: run_config(spec, run, data, output, device) for run in runs}
    for run, config in configs.items():
        _check_finished(run.folder(output), config)
    if spec.base_config is None:
        data = prepare_brain_demo(data)
    _check_folds(spec, configs, data)
    output.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec.to_dict(data), sort_keys=False)
    atomic_write(output / SPEC_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info("experiment %s: %d runs into %s", spec.path, len(runs), output)
    for number, run in enumerate(runs, start=1):
        done = run.folder(output) / DONE_FILE
        if done.is_file():
            record = _read_json(done, "a completion file of simmpnet experiment")
            logger.info(
                "run %d/%d %s: finished earlier, DSC %s, %.0f s", number, len(runs), run.label(),
                _percent(record.get("dsc", {}).get("excluded")), record.get("train_s", 0) + record.get("evaluate_s", 0),
            )
            continue
        started = time.monotonic()
        record = _train_and_evaluate(run, configs[run], data, device)
        logger.info(
            "run %d/%d %s: DSC %s (paper %s, pooled %s), %d steps, %.0f s", number, len(runs), run.label(),
            _percent(record["dsc"]["excluded"]), _percent(record["dsc"]["paper"]), _percent(record["dsc"]["pooled"]),
            record["steps"], time.monotonic() - started,
        )
    return summarize_experiment(output)


# ---------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class _Scores:
    """The Dice scores of one finished run, as arrays over its foreground classes (NaN where
    metrics.json holds null: a class excluded or absent)."""

    cases: tuple[str, ...]
    per_case: dict[str, np.ndarray]  # "excluded", "paper": (cases, classes)
    per_class: dict[str, np.ndarray]  # every convention: (classes,)
    mean: dict[str, float]  # every convention: the run's mean over the classes


def _number(value: Any) -> float:
    """A metric of metrics.json as a float, NaN for null."""
    return math.nan if value is None else float(value)


def _read_scores(path: Path, classes: list[str] | None) -> tuple[list[str], _Scores]:
    """The scores of a run's ``metrics.json`` (as `simmpnet.evaluation.metrics.summarize`
    writes it): per case and class under the excluded and paper conventions, per class and
    mean under all three."""
    metrics = _read_json(path, "metrics.json of simmpnet evaluate")
    try:
        names = [str(name) for name in metrics["classes"]]
        conventions = metrics["conventions"]
        cases = tuple(conventions["excluded"]["per_case"])
        per_case = {
            name: np.array([[_number(conventions[name]["per_case"][case][c]["dsc"]) for c in names] for case in cases])
            for name in ("excluded", "paper")
        }
        per_class = {
            name: np.array([_number(conventions[name]["per_class"][c]["dsc"]) for c in names]) for name in ("excluded", "paper")
        }
        per_class["pooled"] = np.array([_number(metrics["pooled_dsc"]["per_class"][c]) for c in names])
        mean = {name: _number(conventions[name]["mean"]["dsc"]) for name in ("excluded", "paper")}
        mean["pooled"] = _number(metrics["pooled_dsc"]["mean"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a metrics.json of simmpnet evaluate ({type(err).__name__}: {one_line(err)})") from err
    if classes is not None and names != classes:
        raise InputError(f"{path}: classes {names} differ from the other runs' {classes}")
    return names, _Scores(cases, per_case, per_class, mean)


def _mean_sd(values: np.ndarray) -> dict[str, Any]:
    """Mean and sample standard deviation of the finite values (None where undefined)."""
    kept = values[np.isfinite(values)]
    return {
        "mean": float(kept.mean()) if kept.size else None,
        "sd": float(kept.std(ddof=1)) if kept.size > 1 else None,
        "n": int(kept.size),
    }


def _seed_spread(by_fold: Mapping[int, list[float]]) -> dict[str, Any]:
    """The seed-to-seed standard deviation of a run's value with the fold held fixed: the
    within-fold variances pooled over the folds, ``sum((x - fold mean)^2) / sum(n_fold - 1)``,
    over the folds with two or more finite values (``sd`` None where there are none).  Unlike
    the sd over all runs, it leaves out how much the folds' test slabs differ."""
    squares, dof, folds = 0.0, 0, 0
    for values in by_fold.values():
        kept = np.array([v for v in values if math.isfinite(v)])
        if kept.size > 1:
            squares += float(((kept - kept.mean()) ** 2).sum())
            dof += kept.size - 1
            folds += 1
    return {"sd": math.sqrt(squares / dof) if dof else None, "dof": dof, "folds": folds}


def _class_means(weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``weights`` (how often each unit is drawn): the per-class mean over the
    drawn units, skipping NaN (as the metrics skip excluded cases), and its mean over the
    classes that have one.  Returns ``(rows, classes)`` and ``(rows,)``, NaN where undefined."""
    valid = np.isfinite(values)
    sums = weights @ np.where(valid, values, 0.0)
    counts = weights @ valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, sums / counts, np.nan)
        present = np.isfinite(per_class)
        mean = np.where(present.any(axis=1), np.where(present, per_class, 0.0).sum(axis=1) / present.sum(axis=1), np.nan)
    return per_class, mean


def _interval(draws: np.ndarray) -> tuple[float | None, float | None]:
    """The percentile interval (`INTERVAL`) of the finite bootstrap draws."""
    kept = draws[np.isfinite(draws)]
    if not kept.size:
        return None, None
    tail = 100 * (1 - INTERVAL) / 2
    low, high = np.percentile(kept, [tail, 100 - tail])
    return float(low), float(high)


def _finite(value: float) -> float | None:
    """A float for JSON: None for NaN."""
    return float(value) if math.isfinite(value) else None


def paired_bootstrap(
    values: np.ndarray, reference: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """The difference ``values - reference`` of the Dice statistic, with a percentile bootstrap
    interval over paired units.

    The statistic is the one metrics.json reports: per class the mean over the units (NaN
    skipped), then the mean over the classes.  Each draw takes ``n`` units with replacement,
    the same units for both sides, so what the two share (the case, the seed, the fold) cancels.

    Args:
        values: ``(units, classes)``, NaN where a class has no value for that unit.
        reference: the reference's values of the same units, in the same order.
        samples: bootstrap draws.
        seed: seed of the draws (fixed: the same input gives the same interval).

    Returns:
        ``{"units": n, "mean": {"estimate", "low", "high"}, "per_class": [{"estimate", "low",
        "high"}, ...]}``, None where undefined (the interval of a single unit too).
    """
    if values.shape != reference.shape or values.ndim != 2 or not values.shape[0]:
        raise InputError(f"paired bootstrap needs two (units, classes) arrays of one shape, got {values.shape}, {reference.shape}")
    n = values.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    weights = np.zeros((samples, n))
    np.add.at(weights, (np.repeat(np.arange(samples), n), draws.ravel()), 1.0)
    everything = np.ones((1, n))
    (class_a, mean_a), (class_b, mean_b) = _class_means(everything, values), _class_means(everything, reference)
    (boot_class_a, boot_a), (boot_class_b, boot_b) = _class_means(weights, values), _class_means(weights, reference)

    def entry(estimate: float, boot: np.ndarray) -> dict[str, float | None]:
        # One unit has no spread to resample: an estimate without an interval.
        low, high = _interval(boot) if n > 1 else (None, None)
        return {"estimate": _finite(estimate), "low": low, "high": high}

    return {
        "units": n,
        "mean": entry(mean_a[0] - mean_b[0], boot_a - boot_b),
        "per_class": [entry(class_a[0, c] - class_b[0, c], boot_class_a[:, c] - boot_class_b[:, c])
                      for c in range(values.shape[1])],
    }


def _pairs(
    runs: Mapping[Run, _Scores], spec: ExperimentSpec, name: str, convention: str
) -> tuple[np.ndarray, np.ndarray]:
    """The paired units of configuration ``name`` and the reference: (seed, fold, case) for the
    per-case conventions, (seed, fold) for the pooled DSC (metrics.json holds it per run)."""
    mine: list[np.ndarray] = []
    theirs: list[np.ndarray] = []
    for seed in spec.seeds:
        for fold in spec.folds:
            a, b = runs.get(Run(name, seed, fold)), runs.get(Run(spec.reference, seed, fold))
            if a is None or b is None:
                continue
            if convention == "pooled":
                mine.append(a.per_class["pooled"][None])
                theirs.append(b.per_class["pooled"][None])
                continue
            theirs_cases = set(b.cases)
            shared = [case for case in a.cases if case in theirs_cases]
            mine.append(a.per_case[convention][[a.cases.index(case) for case in shared]])
            theirs.append(b.per_case[convention][[b.cases.index(case) for case in shared]])
    if not mine:
        return np.empty((0, 0)), np.empty((0, 0))
    return np.concatenate(mine), np.concatenate(theirs)


def summarize_experiment(folder: str | Path) -> dict[str, Any]:
    """Rebuild the summary of an experiment folder from its finished runs, without training:
    ``summary.json``, ``summary.md`` and ``summary.png`` in ``folder``.

    For each configuration and convention (`CONVENTION_NAMES`): mean ± sd over the finished
    runs (seeds x folds) of each class's DSC and of the class mean.  For each configuration
    but the reference: the paired difference from the reference with a bootstrap interval
    (`paired_bootstrap`) over (seed, fold, test case) units, or (seed, fold) for the pooled
    DSC, on the pairs where both runs are finished.

    Raises:
        InputError: no ``experiment.yaml``, no finished run, or an unreadable ``metrics.json``.
    """
    folder = Path(folder)
    spec = load_spec(folder / SPEC_FILE)
    classes: list[str] | None = None
    runs: dict[Run, _Scores] = {}
    expected = spec.runs()
    cpu: list[float] = []
    records: list[dict[str, Any]] = []
    for run in expected:
        done = run.folder(folder) / DONE_FILE
        if done.is_file():
            classes, runs[run] = _read_scores(run.folder(folder) / "metrics.json", classes)
            record = _read_json(done, "a completion file of simmpnet experiment")
            if isinstance(record.get("cpu_s"), (int, float)) and not record.get("continued"):
                cpu.append(float(record["cpu_s"]))
            records.append(record)
    if classes is None:
        raise InputError(f"{folder}: no finished run (no {DONE_FILE} in any run folder) to summarize")

    configurations: dict[str, Any] = {}
    for configuration in spec.configurations:
        own = {run: scores for run, scores in runs.items() if run.configuration == configuration.name}
        mine = list(own.values())
        by_fold = {fold: [s for run, s in own.items() if run.fold == fold] for fold in spec.folds}
        configurations[configuration.name] = {"runs": len(mine)} | {
            convention: {
                "mean": _mean_sd(np.array([s.mean[convention] for s in mine])),
                "seed_sd": _seed_spread({fold: [s.mean[convention] for s in fold_scores]
                                         for fold, fold_scores in by_fold.items()}),
                "per_class": {
                    c: _mean_sd(np.array([s.per_class[convention][i] for s in mine])) for i, c in enumerate(classes)
                },
            }
            for convention in CONVENTION_NAMES
        }
    differences: dict[str, Any] = {}
    for configuration in spec.configurations:
        if configuration.name == spec.reference:
            continue
        differences[configuration.name] = {}
        for convention in CONVENTION_NAMES:
            values, reference = _pairs(runs, spec, configuration.name, convention)
            if not values.size:
                differences[configuration.name][convention] = None
                continue
            result = paired_bootstrap(values, reference)
            result["unit"] = "seed, fold" if convention == "pooled" else "seed, fold, test case"
            result["per_class"] = dict(zip(classes, result["per_class"], strict=True))
            differences[configuration.name][convention] = result
    summary = {
        "experiment": str(folder),
        "reference": spec.reference,
        "classes": classes,
        "dataset": "brain demo" if spec.base_config is None else str(spec.base_config),
        "runs": {
            "expected": len(expected),
            "finished": len(runs),
            "missing": [str(run.folder(Path())) for run in expected if run not in runs],
        },
        # Over the runs trained in one process from the start (the others' CPU time is partial).
        "cpu_hours": {"runs": len(cpu), "total": sum(cpu) / 3600, "per_run": (sum(cpu) / len(cpu) / 3600) if cpu else None},
        "provenance": _provenance(records),
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED, "interval": INTERVAL},
        "configurations": configurations,
        "differences": differences,
    }
    write_json(summary, folder / "summary.json")
    text = summary_markdown(summary)
    atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _plot_summary(summary, folder / "summary.png")
    return summary


#: What decides a run's figures besides its configuration: runs that agree on these ran alike.
PROVENANCE_KEYS = ("simmpnet", "commit", "torch", "python", "cpu_model", "cpu_flags", "threads", "device", "gpu")


def _provenance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The dates the runs finished, and the software and machines they ran on: one group per
    distinct :data:`PROVENANCE_KEYS`, with its number of runs; runs written before simmpnet
    recorded this are counted apart."""
    made = [record["provenance"] for record in records if isinstance(record.get("provenance"), dict)]
    groups = collections.Counter(tuple(entry.get(name) for name in PROVENANCE_KEYS) for entry in made)
    unrecorded = len(records) - len(made)
    finished = sorted(record["finished"] for record in records if isinstance(record.get("finished"), str))
    return {
        "first_finished": finished[0] if finished else None,
        "last_finished": finished[-1] if finished else None,
        "groups": [{**dict(zip(PROVENANCE_KEYS, key)), "runs": n} for key, n in groups.items()],
        "not_recorded": unrecorded,
    }


def _provenance_lines(made: Mapping[str, Any]) -> list[str]:
    lines = []
    if made.get("first_finished"):
        lines += [f"Runs finished between {made['first_finished']} and {made['last_finished']} (UTC), "
                  "of those that record it.", ""]
    for group in made.get("groups", []):
        where = f"on {group['device']}" + (f" ({group['gpu']})" if group.get("gpu") else "")
        lines.append(
            f"- {group['runs']} run(s): simmpnet {group['simmpnet']} (commit {group['commit']}), torch {group['torch']}, "
            f"Python {group['python']}, {where}; CPU {group['cpu_model']} (flags {group['cpu_flags']}), "
            f"{group['threads']} torch thread(s)."
        )
    if made.get("not_recorded"):
        lines.append(f"- {made['not_recorded']} run(s): software and machine not recorded (finished before simmpnet recorded them).")
    return lines


ONE_SUBJECT = (
    "All slabs of the brain demo come from one subject (the Colin27 brain): the folds estimate "
    "the variation over regions of one brain, not over patients."
)


def _cell(entry: Mapping[str, Any]) -> str:
    """A mean ± sd entry in % for a table cell."""
    if entry["mean"] is None:
        return "n/a"
    if entry["sd"] is None:
        return f"{100 * entry['mean']:.2f}"
    return f"{100 * entry['mean']:.2f} ± {100 * entry['sd']:.2f}"


def _difference(entry: Mapping[str, Any] | None) -> str:
    """A difference with its interval in percentage points for a table cell."""
    if entry is None or entry["estimate"] is None:
        return "n/a"
    if entry["low"] is None:
        return f"{100 * entry['estimate']:+.2f}"
    return f"{100 * entry['estimate']:+.2f} [{100 * entry['low']:+.2f}, {100 * entry['high']:+.2f}]"


def _convention_columns(last: str) -> list[str]:
    """The header and rule of a table with a column per convention and then ``last``."""
    return [
        f"| configuration | {' | '.join(CONVENTION_SHORT[c] for c in CONVENTION_NAMES)} | {last} |",
        "|---|" + "---:|" * (len(CONVENTION_NAMES) + 1),
    ]


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the tables of a `summarize_experiment` result."""
    classes, reference = summary["classes"], summary["reference"]
    runs = summary["runs"]
    bootstrap = summary["bootstrap"]
    level = round(100 * bootstrap["interval"])
    lines = [
        "# Experiment summary",
        "",
        f"`{summary['experiment']}`: {runs['finished']} of {runs['expected']} runs finished; reference "
        f"configuration `{reference}`.",
        "",
        "DSC in %. A table cell is the mean ± sd over the finished runs (seeds x folds) of the run's "
        "value, each run scored on its fold's test cases with its last checkpoint.",
    ]
    cpu = summary.get("cpu_hours") or {}
    if cpu.get("runs"):
        lines += [
            "",
            f"CPU time: {cpu['total']:.2f} CPU hours over the {cpu['runs']} run(s) trained in one process "
            f"from the start, {60 * cpu['per_run']:.1f} CPU minutes a run (process time, all threads).",
        ]
    made = _provenance_lines(summary.get("provenance") or {})
    if made:
        lines += ["", *made]
    if summary["dataset"] == "brain demo":
        lines += ["", ONE_SUBJECT]
    header = f"| configuration | runs | mean | {' | '.join(classes)} |"
    rule = "|---|---:|---:|" + "---:|" * len(classes)
    for convention in CONVENTION_NAMES:
        lines += ["", f"## {CONVENTION_TITLES[convention]}", "", header, rule]
        for name, entry in summary["configurations"].items():
            block = entry[convention]
            cells = [_cell(block["mean"]), *(_cell(block["per_class"][c]) for c in classes)]
            lines.append(f"| {name} | {entry['runs']} | {' | '.join(cells)} |")
    lines += [
        "",
        "## Seed-to-seed spread",
        "",
        "The sd of a run's mean DSC over seeds with the fold held fixed (within-fold variances pooled "
        "over the folds that have two or more finished seeds; degrees of freedom in the last column, "
        "one count per convention where they differ). "
        "The sd in the tables above also holds how much the folds' test cases differ.",
        "",
        *_convention_columns("degrees of freedom"),
    ]
    for name, entry in summary["configurations"].items():
        spreads = [entry[c]["seed_sd"] for c in CONVENTION_NAMES]
        cells = ["n/a" if s["sd"] is None else f"{100 * s['sd']:.2f}" for s in spreads]
        # One count where the conventions agree; a run with no finite value under one
        # convention (no class present) leaves that convention fewer degrees of freedom.
        counts = [str(s["dof"]) for s in spreads]
        dof = counts[0] if len(set(counts)) == 1 else " / ".join(counts)
        lines.append(f"| {name} | {' | '.join(cells)} | {dof} |")
    lines += [
        "",
        f"## Differences from `{reference}`",
        "",
        f"Configuration minus `{reference}`, in percentage points, with the bootstrap {level} % interval "
        f"({bootstrap['samples']} draws, seed {bootstrap['seed']}) over paired (seed, fold, test case) units; "
        "the pooled DSC is stored per run, so its units are (seed, fold) pairs. The statistic is the "
        "metrics' own: per class the mean over the units, then the mean over the classes.",
        "",
        *_convention_columns("pairs (cases / runs)"),
    ]
    for name, entry in summary["differences"].items():
        cells = [_difference(entry[c] and entry[c]["mean"]) for c in CONVENTION_NAMES]
        units = [str(entry[c]["units"]) if entry[c] else "0" for c in ("excluded", "pooled")]
        lines.append(f"| {name} | {' | '.join(cells)} | {' / '.join(units)} |")
    lines += ["", "### Per class, headline convention", "", f"| configuration | {' | '.join(classes)} |",
              "|---|" + "---:|" * len(classes)]
    for name, entry in summary["differences"].items():
        headline = entry["excluded"]
        cells = [_difference(headline and headline["per_class"][c]) for c in classes]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if runs["missing"]:
        shown = ", ".join(runs["missing"][:5]) + (f" and {len(runs['missing']) - 5} more" if len(runs["missing"]) > 5 else "")
        lines += ["", f"Not finished: {shown}."]
    return "\n".join(lines) + "\n"


def _plot_summary(summary: Mapping[str, Any], path: Path) -> None:
    """``summary.png``: per convention, each configuration's mean DSC ± sd over its runs (top)
    and its difference from the reference with the bootstrap interval (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(summary["configurations"])
    fig = Figure(figsize=(4.2 * len(CONVENTION_NAMES), 1.6 + 0.7 * len(names)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(CONVENTION_NAMES), sharey=True, squeeze=False)
    rows = np.arange(len(names))[::-1]
    for column, convention in enumerate(CONVENTION_NAMES):
        top, bottom = axes[0][column], axes[1][column]
        for row, name in zip(rows, names, strict=True):
            entry = summary["configurations"][name][convention]["mean"]
            if entry["mean"] is not None:
                top.errorbar(100 * entry["mean"], row, xerr=100 * (entry["sd"] or 0.0), fmt="o", color="tab:blue", capsize=3)
            difference = summary["differences"].get(name, {}).get(convention) if name != summary["reference"] else None
            estimate = difference["mean"] if difference else None
            if name == summary["reference"]:
                bottom.plot(0.0, row, "D", color="black")
            elif estimate and estimate["estimate"] is not None:
                low, high = estimate["low"], estimate["high"]
                xerr = None if low is None else [[100 * (estimate["estimate"] - low)], [100 * (high - estimate["estimate"])]]
                bottom.errorbar(100 * estimate["estimate"], row, xerr=xerr, fmt="o", color="tab:red", capsize=3)
        bottom.axvline(0.0, color="grey", linewidth=0.8)
        top.set_title(f"DSC, {CONVENTION_SHORT[convention]}", fontsize=9)
        top.set_xlabel("DSC (%), mean ± sd over runs", fontsize=8)
        bottom.set_xlabel(f"difference from {summary['reference']} (points), {round(100 * INTERVAL)} % interval", fontsize=8)
        for axis in (top, bottom):
            axis.set_yticks(rows, names, fontsize=8)
            axis.set_ylim(-0.5, len(names) - 0.5)
            axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    atomic_write(path, write, suffix=".png")
    fig.clear()
