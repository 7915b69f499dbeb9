"""The HTML report, the log's memory records and TensorBoard, on a tiny run trained here;
the report in a real browser (headless Chromium through its chromedriver)."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import debian_tool, small_train_config
from simmpnet.cli import main
from simmpnet.errors import InputError
from simmpnet.evaluate import write_report

#: the tests on the trained run: a training run and an evaluation (tens of seconds on 2 CPU cores)
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(brain_data, tmp_path_factory) -> Path:
    """A Sim-MPNet tiny run of 12 steps (warm-up of 5, validation after epochs 2 and 3) with
    TensorBoard on, evaluated into its own folder as the demo does (report.html included)."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = tmp_path_factory.mktemp("config") / "config.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, out)))
    assert main(["--quiet", "train", "--config", str(config), "--tensorboard"]) == 0
    assert main([
        "--quiet", "evaluate", "--checkpoint", str(out / "last.pt"), "--data", str(brain_data), "--output", str(out),
        "--device", "cpu", "--max-overlays", "1",
    ]) == 0
    return out


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert found, "the page embeds its data"
    return json.loads(found.group(1).replace("<\\/", "</"))


@slow
def test_log_records_learning_rate_and_prototype_drift(tiny_run):
    steps = _records(tiny_run, "step")
    assert steps and all(r["lr"] == pytest.approx(1e-3) for r in steps)  # constant schedule
    epochs = _records(tiny_run, "epoch")
    memory = [r["memory"] for r in epochs]
    # Warm-up of 5 forwards, 4 steps an epoch: every block leaves it in epoch 2.  Its first
    # record has no earlier prototype to compare with; the next one has a drift per category.
    assert memory[0] == {}
    assert set(memory[1]) == set(memory[2]) and len(memory[1]) == 9
    assert all(entry["drift"] is None for entry in memory[1].values())
    for entry in memory[2].values():
        assert len(entry["drift"]) in (9, 10)
        assert all(-1e-6 <= d <= 2.0 + 1e-6 for d in entry["drift"])  # 1 - cos, up to fp32 rounding
    assert any(d > 0 for entry in memory[2].values() for d in entry["drift"])  # the bank moved


@slow
def test_a_resumed_run_logs_the_drift_an_uninterrupted_one_does(tiny_run, brain_data, tmp_path):
    """The drift's reference prototypes travel in the checkpoint: stopped after epoch 2 and
    resumed, the run logs the epoch-3 drift of the run that never stopped."""
    from simmpnet.training import Trainer, TrainConfig

    out = tmp_path / "resumed"
    first = Trainer(TrainConfig.from_dict(small_train_config(brain_data, out, max_steps=8)))  # 2 epochs of 4 steps
    assert first.fit()["epochs"] == 2
    trainer = Trainer(TrainConfig.from_dict(small_train_config(brain_data, out)))
    trainer.resume()
    trainer.fit()
    resumed, straight = _records(out, "epoch")[2]["memory"], _records(tiny_run, "epoch")[2]["memory"]
    assert resumed.keys() == straight.keys()
    for block, entry in straight.items():
        assert resumed[block]["drift"] is not None
        assert resumed[block]["drift"] == pytest.approx(entry["drift"], rel=1e-4, abs=1e-7), block


@slow
def test_tensorboard_holds_the_scalars_of_the_log_and_the_overlays(tiny_run, brain_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in events.Scalars(tag)}

    steps = _records(tiny_run, "step")
    assert series("train/loss") == pytest.approx({r["step"]: r["loss"] for r in steps})
    assert series("train/lr") == pytest.approx({r["step"]: r["lr"] for r in steps})
    assert series("train/k") == {r["step"]: r["k"] for r in steps}
    epochs = _records(tiny_run, "epoch")
    validated = {r["step"]: r["val_dsc"] for r in epochs if r.get("val_dsc") is not None}
    assert len(validated) == 2 and series("val/dsc") == pytest.approx(validated)
    assert series("epoch/train_loss") == pytest.approx({r["step"]: r["train_loss"] for r in epochs})
    last = epochs[-1]
    block = "encoder 1"
    drift = last["memory"][block]["drift"]
    assert series("memory/drift/encoder_1") == pytest.approx({last["step"]: sum(drift) / len(drift)})
    overlays = [t for t in tags["images"] if t.startswith("val/overlay/")]
    assert len(overlays) == 3
    image = events.Images(overlays[0])
    assert [e.step for e in image] == sorted(validated)
    from PIL import Image

    from simmpnet.data.layouts import open_layout

    height, width = open_layout("synapse", brain_data).cases("test_vol")[0]["image"].shape[1:3]
    picture = np.asarray(Image.open(io.BytesIO(image[-1].encoded_image_string)))
    assert picture.shape == (height, 3 * width, 3) and picture.std() > 10  # image | truth | prediction


@slow
def test_report_is_one_self_contained_page_within_its_caps(tiny_run, brain_data, tmp_path):
    page = tiny_run / "report.html"
    text = page.read_text(encoding="utf-8")
    # Nothing is fetched: no remote or relative resource, only data URIs and inline code.
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//|file:)', text)
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)
    assert "@import" not in text and "url(http" not in text
    for section in ("metrics", "viewer", "memory", "curves", "settings"):
        assert f'id="{section}"' in text
    assert 'id="metrics-table"' in text and 'id="case-table"' in text
    data = _page_data(page)
    assert [c["name"] for c in data["cases"]] == list(json.loads((tiny_run / "metrics.json").read_text())["per_case"])
    assert len(data["cases"]) == 3 and all(1 <= len(c["slices"]) <= 24 for c in data["cases"])
    assert data["blocks"] == [f"encoder {i}" for i in range(1, 6)] + [f"decoder {i}" for i in range(1, 5)]
    for case in data["cases"]:
        wrong = [s["wrong"] for s in case["slices"]]
        assert wrong == sorted(wrong, reverse=True)  # worst errors first
        assert all(set(s["memory"]) == set(data["blocks"]) for s in case["slices"])
    assert "This page embeds 3 of the 3 cases" in text
    assert page.stat().st_size < 20 * 2**20

    # The caps of the command line, a page of its own elsewhere, and the errors before any work.
    other = tmp_path / "small.html"
    assert main(["--quiet", "report", str(tiny_run), "--cases", "1", "--slices", "2", "--output-file", str(other), "--device", "cpu"]) == 0
    small = _page_data(other)
    assert len(small["cases"]) == 1 and len(small["cases"][0]["slices"]) == 2
    assert "This page embeds 1 of the 3 cases" in other.read_text()
    with pytest.raises(InputError, match="run folder not found"):
        write_report(tmp_path / "missing")
    with pytest.raises(InputError, match="nowhere: dataset folder not found"):
        write_report(tiny_run, tmp_path / "x.html", data=tmp_path / "nowhere")


@slow
def test_report_of_a_moved_run_without_its_data_says_what_is_missing(tiny_run, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved, ignore=shutil.ignore_patterns("tensorboard", "overlays"))
    metrics = json.loads((moved / "metrics.json").read_text())
    metrics["data"] = str(tmp_path / "gone")
    (moved / "metrics.json").write_text(json.dumps(metrics))
    config = yaml.safe_load((moved / "resolved_config.yaml").read_text())
    config["data_root"] = str(tmp_path / "gone")
    (moved / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    text = write_report(moved).read_text()
    assert "is not there (give --data)" in text and 'id="metrics-table"' in text
    assert _page_data(moved / "report.html")["cases"] == []


def test_report_from_metrics_and_log_alone(tmp_path):
    """No checkpoint: tables and curves from metrics.json and log.jsonl, and a page that says
    what it lacks."""
    from simmpnet.evaluation import evaluate_case, summarize
    from simmpnet.evaluation.report import write_json

    truth = np.zeros((4, 16, 16), np.uint8)
    truth[1:3, 2:8, 2:8] = 1
    truth[1:3, 9:14, 9:14] = 2
    cases = {}
    for i in range(2):
        prediction = truth.copy()
        prediction[1, 2 + i : 8, 2:8] = 0
        cases[f"case{i}"] = evaluate_case(prediction, truth, 3, spacing=(1.0, 1.0, 1.0))
    write_json(summarize(cases, ["liver", "spleen"]), tmp_path / "metrics.json")
    records = [
        {"event": "step", "epoch": 0, "step": 10, "loss": 2.0, "k": 50, "lr": 1e-3},
        {"event": "epoch", "epoch": 1, "step": 14, "train_loss": 1.5, "val_dsc": 0.5, "memory": {}},
        {"event": "step", "epoch": 1, "step": 20, "loss": 1.0, "k": 48, "lr": 5e-4},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    text = write_report(tmp_path).read_text()
    assert "no checkpoint in this folder" in text and 'id="memory"' not in text
    assert _page_data(tmp_path / "report.html") == {"cases": [], "blocks": []}
    table = text.split('id="metrics-table"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td data-sort=\"(\w+)\">", table)
    assert rows == ["liver", "spleen"]
    expected = summarize(cases, ["liver", "spleen"])["per_class"]["liver"]["dsc"]
    assert f'data-sort="{float(expected)!r}">{100 * expected:.2f}</td>' in table
    case_rows = text.split('id="case-table"')[1].split("</table>")[0].count("<tr><td")
    assert case_rows == 4  # two cases, two classes
    # One curve per chart: the learning rate's polyline goes through both logged steps.
    assert text.count("<polyline") == 5  # step loss, epoch mean, val DSC, K, lr
    assert "not in this log" not in text


# ------------------------------------------------------------------------------ the browser
def _chromedriver() -> str:
    """Debian's chromedriver, installed with apt-get when missing."""
    return debian_tool(["chromium", "chromium-driver"], lambda: shutil.which("chromedriver"))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = _chromedriver()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        options.add_argument(flag)
    binary = shutil.which("chromium")
    if binary:
        options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


@slow
def test_report_in_a_real_browser(tiny_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get((tiny_run / "report.html").resolve().as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []

    # The class table sorts by the clicked column, both ways, n/a last.
    table = browser.find_element(By.ID, "metrics-table")
    header = table.find_elements(By.CSS_SELECTOR, "thead th")[1]  # DSC of the headline convention

    def column() -> list[float | None]:
        cells = table.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(2)")
        return [float(c.get_attribute("data-sort")) if c.get_attribute("data-sort") else None for c in cells]

    before = column()
    header.click()
    ascending = column()
    header.click()
    descending = column()
    numbers = sorted(v for v in before if v is not None)
    assert ascending[: len(numbers)] == numbers and descending[: len(numbers)] == numbers[::-1]
    assert all(v is None for v in ascending[len(numbers):])
    assert "asc" not in header.get_attribute("class") and "desc" in header.get_attribute("class")

    # The slider (and the arrow keys on it) change the slice on show, memory layer included.
    case = browser.find_element(By.CSS_SELECTOR, ".case")
    slider = case.find_element(By.CSS_SELECTOR, ".slice-slider")
    caption = case.find_element(By.CSS_SELECTOR, ".slice-caption")
    layers = [case.find_element(By.CSS_SELECTOR, f".layer-{k}") for k in ("image", "truth", "memory")]
    first = (caption.text, [img.get_attribute("src") for img in layers], case.get_attribute("data-shown-z"))
    assert first[1][2].startswith("data:image/png;base64,")
    browser.execute_script("arguments[0].focus()", slider)
    slider.send_keys(Keys.ARROW_RIGHT)
    second = (caption.text, [img.get_attribute("src") for img in layers], case.get_attribute("data-shown-z"))
    assert slider.get_attribute("value") == "1"
    assert second[0] != first[0] and second[2] != first[2] and second[1][0] != first[1][0]
    data = _page_data(tiny_run / "report.html")
    assert int(second[2]) == data["cases"][0]["slices"][1]["z"]

    # The block chooser swaps the memory layer and the usage table shown.
    select = browser.find_element(By.ID, "block-select")
    memory_before = layers[2].get_attribute("src")
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'))", select, data["blocks"][-1]
    )
    assert layers[2].get_attribute("src") != memory_before
    shown = browser.find_elements(By.CSS_SELECTOR, ".usage.shown")
    assert [u.get_attribute("data-block") for u in shown] == [data["blocks"][-1]]

    # Every chart legend wraps inside its chart: one entry per DMW-LA block in the drift chart.
    legends = browser.find_elements(By.CSS_SELECTOR, ".chart-legend")
    drift = browser.find_element(By.CSS_SELECTOR, "#memory .chart-legend")
    logged = list(dict.fromkeys(b for r in _records(tiny_run, "epoch") for b, e in r["memory"].items() if e.get("drift")))
    assert [i.text for i in drift.find_elements(By.CSS_SELECTOR, ".legend-item")] == logged
    assert len(logged) > 1 and len(legends) == 2  # the drift chart and the training loss
    for legend in legends:
        assert browser.execute_script(
            "const l=arguments[0], s=l.parentElement.querySelector('svg');"
            "return l.scrollWidth <= l.clientWidth && l.getBoundingClientRect().right <= s.getBoundingClientRect().right + 1;",
            legend,
        )

    # A screenshot of the viewer is not blank.
    from PIL import Image

    browser.execute_script("document.getElementById('viewer').scrollIntoView()")
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=np.float64)
    assert shot.std() > 20 and (shot < 50).mean() > 0.05  # dark MRI panels on a white page
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
