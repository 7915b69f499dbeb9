"""What the commands tell a user: scoring a folder of predictions, the names and units of the
reports, the split counts of verify, the warning for cases a model was trained on, and the
deprecated flag names."""
import json
import logging

import numpy as np
import pytest
import yaml
from conftest import small_train_config
from PIL import Image

from simmpnet.cli import build_parser, main
from simmpnet.evaluate import warn_if_trained_on
from simmpnet.errors import InputError
from simmpnet.evaluation.evaluate import score_cases
from simmpnet.evaluation.metrics import evaluate_case
from simmpnet.evaluation.folders import evaluate_folders, pair_folders
from simmpnet.evaluation.report import metrics_markdown


@pytest.fixture(scope="module")
def trained(brain_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    config = tmp_path_factory.mktemp("cfg") / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, out, val_list=None)))
    assert main(["--quiet", "train", "--config", str(config), "--max-steps", "2"]) == 0
    return out / "last.pt"


def test_scoring_the_predictions_of_predict_gives_the_scores_of_evaluate(brain_data, trained, tmp_path, capsys):
    """evaluate --checkpoint and predict + evaluate --predictions score the same label maps:
    the same DSC per case and class, and the paper protocol's grid distances."""
    direct = tmp_path / "direct"
    assert main(["--quiet", "evaluate", "--checkpoint", str(trained), "--data", str(brain_data), "--output", str(direct),
                 "--max-overlays", "0"]) == 0
    # the test split's volumes (test_vol_h5/ holds every slab, for the folds; the list names the split's)
    volumes = tmp_path / "test_volumes"
    volumes.mkdir()
    for case in (brain_data / "lists" / "test_vol.txt").read_text().split():
        (volumes / f"{case}.npy.h5").symlink_to(brain_data / "test_vol_h5" / f"{case}.npy.h5")
    predicted = tmp_path / "predicted"
    assert main(["--quiet", "predict", "--checkpoint", str(trained), "--input", str(volumes),
                 "--output", str(predicted)]) == 0
    scored = tmp_path / "scored"
    names = ["background", *json.loads((direct / "metrics.json").read_text())["classes"]]
    assert main(["evaluate", "--predictions", str(predicted), "--labels", str(volumes),
                 "--class-names", *names, "--output", str(scored)]) == 0
    err = capsys.readouterr().err
    assert "scoring" in err and "3/3" in err  # the progress of the cases
    a = json.loads((direct / "metrics.json").read_text())
    b = json.loads((scored / "metrics.json").read_text())
    # the TransUNet-style files are named <case>.npy.h5: paired by that name
    scored_cases = {name.removesuffix(".npy"): classes for name, classes in b["per_case"].items()}
    paper = {name.removesuffix(".npy"): classes for name, classes in b["conventions"]["paper"]["per_case"].items()}
    assert a["per_case"].keys() == scored_cases.keys()
    for case, classes in a["per_case"].items():
        for name, values in classes.items():
            assert scored_cases[case][name]["dsc"] == values["dsc"], (case, name)
    assert paper == a["conventions"]["paper"]["per_case"]
    report = (scored / "metrics.md").read_text()
    assert f"- Predictions: {predicted}" in report and f"- Ground truth: {volumes}" in report
    direct_report = (direct / "metrics.md").read_text()
    assert f"- Data: {brain_data}" in direct_report and "- Split: test_vol" in direct_report
    assert f"- Model: {trained}" in direct_report and "- Layout: synapse" in direct_report


def test_a_prediction_folder_with_a_case_missing_is_refused_before_scoring(tmp_path):
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    for name in ("a", "b", "c"):
        Image.fromarray(mask).save(labels / f"{name}.png")
    for name in ("a", "d"):
        Image.fromarray(mask).save(preds / f"{name}.png")
    with pytest.raises(InputError, match=r"2 case\(s\) with no prediction in .*: b, c; 1 case\(s\) with no ground truth .*: d"):
        pair_folders(preds, labels)


def test_folder_scores_equal_the_metrics_of_the_arrays(tmp_path):
    """PNG label maps (palette or grey) paired by name; the scores are those of the arrays."""
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    cases = []
    for name in ("img1", "img2"):
        truth = np.zeros((32, 40), np.uint8)
        truth[4:20, 6:30] = 1
        truth[22:30, 10:20] = 2
        pred = truth.copy()
        pred[rng.random(truth.shape) < 0.1] = 0
        Image.fromarray(truth).save(labels / f"{name}.png")
        palette = Image.fromarray(pred).convert("P")  # a palette picture: indices are the ids
        palette.save(preds / f"{name}.png")
        cases.append((name, pred, truth))
    summary = evaluate_folders(preds, labels, n_classes=3)
    for name, pred, truth in cases:
        case = evaluate_case(pred, truth, 3)
        for c, class_name in ((1, "class_1"), (2, "class_2")):
            assert summary["per_case"][name][class_name] == pytest.approx(case["classes"][c]["excluded"])
    assert summary["case_dims"] == 2
    # a picture given as a (1, H, W) case (as the 2-D layouts give them) scores the same
    as_volumes = score_cases([(n, p[None], t[None], None) for n, p, t in cases], 3, ["background", "class_1", "class_2"])
    assert as_volumes["per_case"] == summary["per_case"] and as_volumes["case_dims"] == 2
    with pytest.raises(InputError, match="label 2 is not below n_classes 2"):
        evaluate_folders(preds, labels, n_classes=2)


def test_reports_of_pictures_count_pixels_and_say_why_the_units_differ():
    truth = np.zeros((1, 16, 16), np.int64)
    truth[0, 4:10, 4:10] = 1
    summary = score_cases([("p", truth.copy(), truth, (1.0, 0.5, 0.5))], 2, ["background", "lesion"])
    text = metrics_markdown(summary)
    assert "HD95, ASD in pixels" in text and "voxels" not in text
    assert "The units differ on purpose" in text


def test_verify_counts_what_each_split_holds(brain_data, capsys):
    assert main(["verify", "--data", str(brain_data), "--n-classes", "9"]) == 0
    out = capsys.readouterr().out
    assert "test_vol: 3 volumes" in out and "train: 116 slices" in out and "small: 16 slices" in out


def test_scoring_cases_the_model_was_trained_on_is_warned(brain_data, caplog):
    config = small_train_config(brain_data, "unused")
    config["layout"] = "synapse"
    trained_on = (brain_data / "lists" / "small.txt").read_text().split()[0].split("_slice")[0]
    with caplog.at_level(logging.WARNING, logger="simmpnet"):
        warn_if_trained_on(config, brain_data, "synapse", "test_vol", ["brain_slab02", "brain_slab07"])
        assert not caplog.records
        warn_if_trained_on(config, brain_data, "synapse", "mixed", [trained_on, "brain_slab07"])
    assert f"1 of the 2 cases of split 'mixed' were in the model's training split 'small' ({trained_on})" in caplog.text


def test_deprecated_flag_names_still_work_with_a_warning(capsys):
    parser = build_parser()
    args = parser.parse_args(["demo", "--budget", "30"])
    assert args.time_budget == 30.0
    assert "--budget is deprecated" in capsys.readouterr().err
    args = parser.parse_args(["predict", "--checkpoint", "c", "--input", "i", "--output", "o", "--overlay"])
    assert args.overlay is True
    assert "--overlay is deprecated" in capsys.readouterr().err
    args = parser.parse_args(["predict", "--checkpoint", "c", "--input", "i", "--output", "o"])
    assert args.overlay is False and not capsys.readouterr().err
    assert parser.parse_args(["demo", "--time-budget", "5"]).time_budget == 5.0
