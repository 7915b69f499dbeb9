"""`simmpnet experiment`: the folds of the demo data, the spec's checks before any work, the
summary's statistics on hand-made metrics, and a run that resumes after a SIGKILL without
redoing the run it had finished."""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cli_env

from simmpnet.cli import main
from simmpnet.data import brain_demo
from simmpnet.data.layouts import open_layout
from simmpnet.data.layouts.synapse import FOLD_CASES_LIST, FOLD_SLICES_LIST, case_of_slice
from simmpnet.demo import DEMO_CONFIG
from simmpnet.errors import InputError
from simmpnet.evaluation.metrics import METRIC_NAMES, summarize
from simmpnet.evaluation.report import write_json
from simmpnet.experiment import (
    CONVENTION_NAMES,
    DONE_FILE,
    SPEC_FILE,
    _check_finished,
    load_spec,
    run_config,
    run_experiment,
    summarize_experiment,
)


# ---------------------------------------------------------------------------------- folds
def test_the_demo_lists_are_the_ones_the_folds_read():
    assert (brain_demo.ALL_SLICES_LIST, brain_demo.ALL_VOLUMES_LIST) == (FOLD_SLICES_LIST, FOLD_CASES_LIST)


@pytest.mark.parametrize("n_folds", [2, 5])
def test_every_slab_is_tested_once_over_the_folds(brain_data, n_folds):
    slabs = [case["name"] for case in json.loads((brain_data / "dataset.json").read_text())["cases"]]
    tested: list[str] = []
    for fold in range(n_folds):
        layout = open_layout("synapse", brain_data, 9, fold=fold, n_folds=n_folds)
        test = layout.cases("test_vol").names
        trained = {case_of_slice(name) for name in layout.slices("train").names}
        assert test and trained
        assert not set(test) & trained, f"fold {fold} trains on a slab it tests"
        assert set(test) | trained == set(slabs), f"fold {fold} leaves slabs out"
        tested += test
    assert sorted(tested) == sorted(slabs)  # each slab exactly once


def test_fold_2_of_5_is_the_fixed_split_and_the_fold_data_verify(brain_data):
    fold = open_layout("synapse", brain_data, 9, fold=2, n_folds=5)
    fixed = open_layout("synapse", brain_data, 9)
    assert fold.cases("test_vol").names == fixed.cases("test_vol").names
    assert fold.slices("train").names == fixed.slices("train").names
    assert fold.verify() == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"fold": 5, "n_folds": 5}, "fold must lie in 0..4"),
        ({"n_folds": 1}, "n_folds must be at least 2"),
        ({"fold": "1"}, "fold must be an integer"),
        ({"split_file": "x.json"}, "unknown synapse layout options ['split_file']"),
    ],
)
def test_fold_options_are_checked_in_one_line(tmp_path, options, expected):
    with pytest.raises(InputError, match=r"^" + str(tmp_path)) as err:
        open_layout("synapse", tmp_path, 9, **options)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_folds_need_every_case_listed(tmp_path, brain_data):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("case0005_slice000\n")
    layout = open_layout("synapse", tmp_path, 9, fold=0)
    with pytest.raises(InputError, match=f"{FOLD_CASES_LIST}.txt: list file not found.*every case as a volume"):
        layout.slices("train")
    assert any(f"{FOLD_CASES_LIST}.txt" in problem for problem in layout.verify())
    cases = len((brain_data / "lists" / f"{FOLD_CASES_LIST}.txt").read_text().split())
    with pytest.raises(InputError, match=f"{cases} case\\(s\\) for n_folds {cases + 1}"):
        open_layout("synapse", brain_data, 9, n_folds=cases + 1).cases("test_vol")


# ---------------------------------------------------------------------------------- the spec
def _spec(tmp_path: Path, **changes) -> Path:
    values = {
        "dataset": {"data": str(tmp_path / "data")},
        "seeds": [1, 2],
        "folds": "all",
        "n_folds": 3,
        "max_steps": 2,
        "reference": "full",
        "configurations": [
            {"name": "full", "model": "simmpnet"},
            {"name": "no_dsgim", "model": "simmpnet", "model_overrides": {"dsgim": False}},
            {"name": "unet", "model": "unet"},
        ],
    }
    values.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_a_spec_is_read_with_its_defaults(tmp_path):
    spec = load_spec(_spec(tmp_path))
    assert spec.folds == (0, 1, 2) and spec.seeds == (1, 2) and spec.reference == "full"
    assert [c.name for c in spec.configurations] == ["full", "no_dsgim", "unet"]
    runs = spec.runs()
    assert len(runs) == 3 * 2 * 3
    # a fold's configurations run together, so a half-done experiment holds whole pairs
    assert [r.configuration for r in runs[:3]] == ["full", "no_dsgim", "unet"] and runs[3].fold == 1
    assert runs[0].folder(tmp_path) == tmp_path / "full" / "seed1" / "fold0"


def test_the_shipped_ablation_spec_is_valid(tmp_path):
    spec = load_spec(Path(__file__).parents[1] / "configs" / "ablation_demo.yaml")
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    assert spec.seeds == (1, 2, 3) and spec.folds == tuple(range(5)) and spec.max_steps == demo["max_steps"]
    configs = {r.configuration: run_config(spec, r, tmp_path / "data", tmp_path / "out", "cpu") for r in spec.runs()[:9]}
    switches = {name: {k: v for k, v in c.model_overrides.items() if not k.startswith("img_size")} for name, c in configs.items()}
    assert switches == {
        "full": {},
        "no_dsgim": {"dsgim": False},
        "encoder_plain": {"encoder_attention": "plain"},
        "encoder_none": {"encoder_attention": "none"},
        "decoder_plain": {"decoder_attention": "plain"},
        "decoder_none": {"decoder_attention": "none"},
        "no_encoder_a": {"encoder_a": False},
        "no_wld": {},
        "unet": {},
    }
    assert configs["full"].variant == "tiny" and configs["unet"].model == "unet" and spec.reference == "full"
    assert configs["no_wld"].wld_blocks == "none" and configs["full"].wld_blocks == "encoder"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"step": 3}, "unknown keys ['step']"),
        ({"reference": "nope"}, "reference: 'nope' is not a configuration"),
        ({"folds": [0, 3]}, "folds: [3] outside 0..2"),
        ({"seeds": []}, "seeds: expected a non-empty list"),
        ({"configurations": [{"name": "a/b"}]}, "configurations[0].name: 'a/b' is not a folder name"),
        ({"configurations": [{"name": "a"}, {"name": "a"}]}, "configurations[1] (a).name: used twice"),
        ({"configurations": [{"name": "a", "seed": 3}]}, "configurations[0] (a): seed set by the experiment"),
        ({"configurations": [{"name": "a", "lr_x": 3}]}, "configurations[0] (a): unknown training config keys ['lr_x']"),
        ({"configurations": [{"name": "a", "model": "nnformer"}]}, "configurations[0] (a).model: 'nnformer' is not one of simmpnet, unet, nnunet"),
        ({"train": {"layout_options": {"fold": 1}}}, "train.layout_options: fold set by the experiment"),
        ({"dataset": {"root": "x"}}, "dataset: unknown keys ['root']"),
    ],
)
def test_a_bad_spec_is_refused_in_one_line_naming_the_key(tmp_path, changes, expected):
    path = _spec(tmp_path, **changes)
    with pytest.raises(InputError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_every_configuration_is_checked_before_any_work(tmp_path, capsys):
    configurations = [{"name": "full"}, {"name": "odd", "model_overrides": {"encoder_attention": "maybe"}}]
    path = _spec(tmp_path, configurations=configurations)
    out = tmp_path / "out"
    assert main(["experiment", "run", str(path), "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"simmpnet: error: {path}: configuration odd") and "encoder_attention" in error
    assert "\n" not in error
    assert not out.exists() and not (tmp_path / "data").exists()  # nothing prepared, nothing written


def test_a_finished_run_of_another_configuration_is_refused(tmp_path):
    path = _spec(tmp_path)
    out = tmp_path / "out"
    spec = load_spec(path)
    config = run_config(spec, spec.runs()[0], tmp_path / "data", out, "cpu")
    saved = json.loads(json.dumps(dataclasses.asdict(config)))
    saved["lr"] = 0.5
    done = spec.runs()[0].folder(out) / DONE_FILE
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"train_config": saved}))
    with pytest.raises(InputError, match=f"^{done}: the run finished with another configuration \\(lr differ"):
        run_experiment(path, out)
    assert not (out / SPEC_FILE).exists()


def test_a_finished_run_of_an_older_version_counts_with_the_defaults_of_newer_keys(tmp_path):
    """A key added since the run finished (e.g. amp_islands) held its default then: the run is
    the spec's run, unless the spec now sets that key to something else."""
    path = _spec(tmp_path)
    out = tmp_path / "out"
    spec = load_spec(path)
    config = run_config(spec, spec.runs()[0], tmp_path / "data", out, "cpu")
    saved = json.loads(json.dumps(dataclasses.asdict(config)))
    del saved["amp_islands"]
    folder = spec.runs()[0].folder(out)
    folder.mkdir(parents=True)
    (folder / DONE_FILE).write_text(json.dumps({"train_config": saved}))
    _check_finished(folder, config)
    with pytest.raises(InputError, match="amp_islands differ"):
        _check_finished(folder, dataclasses.replace(config, amp_islands="fp32"))


# ---------------------------------------------------------------------------------- summary
CLASSES = ["liver", "spleen"]


def _case(dsc: list[float | None]) -> dict:
    """An `evaluate_case` result with the given DSC per class (None: the class is empty in the
    prediction and the truth), as the metrics would hold it."""
    classes = {}
    for c, value in enumerate(dsc, start=1):
        if value is None:
            excluded = {m: None for m in METRIC_NAMES}
            paper = {m: 0.0 for m in METRIC_NAMES}
            counts = {"pred": 0, "truth": 0, "intersection": 0}
        else:
            excluded = {"dsc": value, "hd95": 1.0, "jaccard": value / (2 - value), "asd": 0.5}
            paper = dict(excluded)
            counts = {"pred": 100, "truth": 100, "intersection": round(100 * value)}
        classes[c] = {"excluded": excluded, "paper": paper, "counts": counts}
    return {"n_classes": len(dsc) + 1, "shape": [2, 8, 8], "spacing": [1.0, 1.0, 1.0], "classes": classes}


def _write_run(folder: Path, cases: dict[str, list[float | None]], name: str, seed: int, fold: int) -> dict:
    summary = summarize({case: _case(dsc) for case, dsc in cases.items()}, CLASSES)
    folder.mkdir(parents=True)
    write_json(summary, folder / "metrics.json")  # what evaluate writes
    write_json({"configuration": name, "seed": seed, "fold": fold, "train_config": {}}, folder / DONE_FILE)
    return summary


@pytest.fixture
def synthetic(tmp_path):
    """An experiment folder of two configurations, 3 seeds x 2 folds, 4 test cases a fold: the
    second scores 0.05 more than the first on every case, plus a little noise; one run of it
    is not finished."""
    spec = {"configurations": [{"name": "base"}, {"name": "better"}], "seeds": [1, 2, 3], "n_folds": 2}
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(spec))
    rng = np.random.default_rng(7)
    written: dict[tuple[str, int, int], dict] = {}
    for seed in (1, 2, 3):
        for fold in (0, 1):
            scores = rng.uniform(0.5, 0.9, size=(4, 2))
            better = scores + 0.05 + rng.normal(0.0, 0.01, size=scores.shape)
            names = [f"slab{4 * fold + k}" for k in range(4)]
            base_cases = {n: list(row) for n, row in zip(names, scores.tolist(), strict=True)}
            better_cases = {n: list(row) for n, row in zip(names, better.tolist(), strict=True)}
            base_cases[names[0]][1] = better_cases[names[0]][1] = None  # empty in truth and prediction
            written["base", seed, fold] = _write_run(tmp_path / "base" / f"seed{seed}" / f"fold{fold}", base_cases, "base", seed, fold)
            if (seed, fold) != (3, 1):
                written["better", seed, fold] = _write_run(
                    tmp_path / "better" / f"seed{seed}" / f"fold{fold}", better_cases, "better", seed, fold
                )
    return tmp_path, written


def test_the_summary_reports_means_sds_and_a_paired_interval(synthetic):
    folder, written = synthetic
    summary = summarize_experiment(folder)
    assert summary["runs"] == {"expected": 12, "finished": 11, "missing": ["better/seed3/fold1"]}
    # mean ± sd per configuration and class, over the runs (seeds x folds)
    base = [written[key] for key in sorted(written) if key[0] == "base"]
    for convention in ("excluded", "paper"):
        for c in CLASSES:
            values = [run["conventions"][convention]["per_class"][c]["dsc"] for run in base]
            entry = summary["configurations"]["base"][convention]["per_class"][c]
            assert entry["mean"] == pytest.approx(np.mean(values)) and entry["sd"] == pytest.approx(np.std(values, ddof=1))
            assert entry["n"] == 6
    pooled = [run["pooled_dsc"]["mean"] for run in base]
    assert summary["configurations"]["base"]["pooled"]["mean"]["mean"] == pytest.approx(np.mean(pooled))
    assert summary["configurations"]["better"]["runs"] == 5

    difference = summary["differences"]["better"]
    assert "base" not in summary["differences"]
    # pairs: (seed, fold, case) where both runs finished; (seed, fold) for the pooled DSC
    assert difference["excluded"]["units"] == 5 * 4 and difference["pooled"]["units"] == 5
    # the estimate is the metrics' statistic: per class over the paired cases, then over the classes
    pairs = [key for key in written if key[0] == "better"]
    per_class = []
    for i, c in enumerate(CLASSES):
        deltas = [
            written[key]["per_case"][case][c]["dsc"] - written[("base", *key[1:])]["per_case"][case][c]["dsc"]
            for key in pairs for case in written[key]["per_case"]
            if written[key]["per_case"][case][c]["dsc"] is not None
        ]
        per_class.append(np.mean(deltas))
        assert difference["excluded"]["per_class"][c]["estimate"] == pytest.approx(per_class[i])
    headline = difference["excluded"]["mean"]
    assert headline["estimate"] == pytest.approx(np.mean(per_class))
    assert 0.0 < headline["low"] < 0.05 < headline["high"] < 0.1  # the true difference, and not zero
    assert headline["high"] - headline["low"] < 0.02  # pairing removes the spread between cases
    # the paper protocol scores the empty class 0 on both sides: the same pairs, one more value each
    assert difference["paper"]["units"] == 20
    assert difference["paper"]["mean"]["low"] < difference["paper"]["mean"]["estimate"] < difference["paper"]["mean"]["high"]
    for name in ("summary.md", "summary.json", "summary.png"):
        assert (folder / name).is_file()


def test_the_seed_spread_holds_the_fold_fixed(synthetic):
    folder, written = synthetic
    # fold 1 scores 0.3 more on every case: a spread between folds that is not a spread between seeds
    for seed in (1, 2, 3):
        for name in ("base", "better"):
            run = folder / name / f"seed{seed}" / "fold1"
            if (name, seed, 1) not in written:
                continue
            cases = {case: [None if v["dsc"] is None else min(v["dsc"] + 0.3, 1.0) for v in classes.values()]
                     for case, classes in written[name, seed, 1]["per_case"].items()}
            shutil.rmtree(run)
            written[name, seed, 1] = _write_run(run, cases, name, seed, 1)
    summary = summarize_experiment(folder)
    for name, dof in (("base", 4), ("better", 3)):  # better/seed3/fold1 is not finished
        for convention in ("excluded", "paper"):
            by_fold = [[written[key]["conventions"][convention]["mean"]["dsc"] for key in written
                        if key[0] == name and key[2] == fold] for fold in (0, 1)]
            squares = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in by_fold)
            spread = summary["configurations"][name][convention]["seed_sd"]
            assert spread == {"sd": pytest.approx(np.sqrt(squares / dof)), "dof": dof, "folds": 2}
            assert spread["sd"] < summary["configurations"][name][convention]["mean"]["sd"] / 2
    table = (folder / "summary.md").read_text(encoding="utf-8")
    sd = summary["configurations"]["base"]["excluded"]["seed_sd"]["sd"]
    assert f"| base | {100 * sd:.2f} |" in table


def test_one_seed_has_no_seed_spread(tmp_path):
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump({"configurations": [{"name": "base"}], "seeds": [1], "n_folds": 2}))
    for fold in (0, 1):
        _write_run(tmp_path / "base" / "seed1" / f"fold{fold}", {f"slab{fold}": [0.5, 0.7]}, "base", 1, fold)
    summary = summarize_experiment(tmp_path)
    assert summary["configurations"]["base"]["pooled"]["seed_sd"] == {"sd": None, "dof": 0, "folds": 0}
    assert "| base | n/a | n/a | n/a | 0 |" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_the_spread_counts_each_conventions_own_degrees_of_freedom(tmp_path):
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump({"configurations": [{"name": "base"}], "seeds": [1, 2, 3], "n_folds": 2}))
    # seed 3's one test case holds neither class on either side: no value where absent classes are
    # excluded, a perfect one under the paper protocol
    for seed, scores in ((1, [0.5, 0.7]), (2, [0.6, 0.6]), (3, [None, None])):
        _write_run(tmp_path / "base" / f"seed{seed}" / "fold0", {"slab0": scores}, "base", seed, 0)
    summary = summarize_experiment(tmp_path)
    dofs = {c: summary["configurations"]["base"][c]["seed_sd"]["dof"] for c in ("excluded", "paper")}
    assert dofs == {"excluded": 1, "paper": 2}
    row = next(line for line in (tmp_path / "summary.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| base |") and " / " in line)
    assert row.endswith(" / ".join(str(summary["configurations"]["base"][c]["seed_sd"]["dof"]) for c in CONVENTION_NAMES) + " |")


def test_the_summary_is_reproducible(synthetic):
    folder, _ = synthetic
    summarize_experiment(folder)
    first = {name: (folder / name).read_bytes() for name in ("summary.json", "summary.md")}
    summarize_experiment(folder)
    assert {name: (folder / name).read_bytes() for name in first} == first
    table = first["summary.md"].decode()
    assert "| better | 5 |" in table and "better/seed3/fold1" in table
    assert "Colin27" in table  # the brain demo is the spec's dataset: the one-subject caveat


def test_cpu_hours_count_the_runs_trained_in_one_process(synthetic):
    folder, _ = synthetic
    for seed, cpu_s, continued in ((1, 1800.0, False), (2, 5400.0, False), (3, 60.0, True)):
        done = folder / "base" / f"seed{seed}" / "fold0" / DONE_FILE
        record = json.loads(done.read_text())
        done.write_text(json.dumps(record | {"cpu_s": cpu_s, "continued": continued}))
    summary = summarize_experiment(folder)
    assert summary["cpu_hours"] == {"runs": 2, "total": pytest.approx(2.0), "per_run": pytest.approx(1.0)}
    assert "2.00 CPU hours over the 2 run(s) trained in one process from the start, 60.0 CPU minutes a run" in (
        folder / "summary.md"
    ).read_text(encoding="utf-8")


def test_the_summary_says_where_the_runs_ran(synthetic):
    folder, _ = synthetic
    made = {"simmpnet": "0.1.0", "commit": "abc123def456", "torch": "2.14.1", "python": "3.11.7",
            "cpu_model": "Some CPU", "cpu_flags": "avx2 avx512_bf16", "cores": 2, "threads": 2, "device": "cpu"}
    machines = {1: made, 2: made | {"cpu_model": "Other CPU", "cores": 64}, 3: made}
    finished = {1: "2026-12-06T10:00:00+00:00", 2: "2026-12-07T09:30:00+00:00", 3: "2026-12-06T12:00:00+00:00"}
    for seed in (1, 2, 3):
        done = folder / "base" / f"seed{seed}" / "fold0" / DONE_FILE
        record = json.loads(done.read_text())
        done.write_text(json.dumps(record | {"provenance": machines[seed], "finished": finished[seed]}))
    summary = summarize_experiment(folder)["provenance"]
    assert summary["first_finished"] == finished[1] and summary["last_finished"] == finished[2]
    # seeds 1 and 3 ran alike (the core count is not what decides a figure; the threads are)
    assert sorted(group["runs"] for group in summary["groups"]) == [1, 2]
    assert {group["cpu_model"] for group in summary["groups"]} == {"Some CPU", "Other CPU"}
    assert summary["not_recorded"] == 11 - 3
    text = (folder / "summary.md").read_text(encoding="utf-8")
    assert "Runs finished between 2026-12-06T10:00:00+00:00 and 2026-12-07T09:30:00+00:00" in text
    assert ("- 2 run(s): simmpnet 0.1.0 (commit abc123def456), torch 2.14.1, Python 3.11.7, on cpu; "
            "CPU Some CPU (flags avx2 avx512_bf16), 2 torch thread(s).") in text
    assert "- 8 run(s): software and machine not recorded" in text


def test_summarize_on_the_command_line(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    assert main(["experiment", "summarize", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "## Differences from `base`" in out and f"{folder / 'summary.md'}" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["experiment", "summarize", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"simmpnet: error: {empty / SPEC_FILE}: file not found"


# ---------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_a_killed_experiment_resumes_without_redoing_a_finished_run(brain_data, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "dataset": {"data": str(brain_data)},
        "seeds": [1],
        "folds": [0],
        "max_steps": 2,
        "train": {"input_size": 64, "batch_size": 2, "threads": 1, "device": "cpu"},
        "configurations": [
            {"name": "first", "model": "unet", "model_overrides": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
            {"name": "second", "model": "simmpnet", "model_overrides": {"img_size_a": 64, "img_size_b": 56},
             "warmup_iters": 1},
        ],
    }))
    out = tmp_path / "experiment"
    command = [sys.executable, "-m", "simmpnet", "experiment", "run", str(spec), "--output", str(out)]
    first, second = out / "first" / "seed1" / "fold0", out / "second" / "seed1" / "fold0"
    log = tmp_path / "first_attempt.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=cli_env(), stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not (first / DONE_FILE).exists():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run did not finish"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (second / DONE_FILE).exists(), "killed after the second run finished: nothing to resume"
    done = first / DONE_FILE
    before = (done.read_bytes(), done.stat().st_mtime_ns, (first / "last.pt").stat().st_mtime_ns)

    rerun = subprocess.run(command, env=cli_env(), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (done.read_bytes(), done.stat().st_mtime_ns, (first / "last.pt").stat().st_mtime_ns) == before
    assert "run 1/2 first seed 1 fold 0: finished earlier" in rerun.stderr
    assert "run 2/2 second seed 1 fold 0: DSC" in rerun.stderr
    record = json.loads((second / DONE_FILE).read_text())
    assert record["steps"] == 2 and record["fold"] == 0
    assert record["cpu_s"] > 0 and isinstance(record["continued"], bool)
    made = record["provenance"]  # what decides the figures besides the configuration
    assert made["torch"] == torch.__version__ and made["device"] == "cpu" and made["threads"] == 1
    assert made["cpu_model"] and made["cpu_flags"] and made["commit"] and made["simmpnet"]
    assert datetime.datetime.fromisoformat(record["finished"]).tzinfo is not None
    metrics = json.loads((second / "metrics.json").read_text())
    held_out = open_layout("synapse", brain_data, 9, fold=0, n_folds=5).cases("test_vol").names
    assert sorted(metrics["per_case"]) == sorted(held_out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["finished"] == 2 and summary["differences"]["second"]["excluded"]["units"] == 3
    assert summary["cpu_hours"]["runs"] == 1 + (not record["continued"])
