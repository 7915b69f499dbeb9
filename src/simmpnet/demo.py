"""The demo: Sim-MPNet (or a peer network) trained on the embedded brain MRI for a fixed
number of steps, then evaluated and drawn (``make demo``, ``simmpnet demo``, ``simmpnet compare``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .data.brain_demo import CLASS_NAMES, prepare_brain_demo
from .evaluate import evaluate_checkpoint
from .models.factory import MODEL_NAMES
from .training import Trainer, TrainConfig

__all__ = ["DEMO_CONFIG", "demo_config", "run_demo"]

DEMO_CONFIG = Path(__file__).parent / "configs" / "brain_demo.yaml"


def demo_config(
    model: str,
    data: Path,
    output: Path,
    device: str,
    overrides: Mapping[str, Any] | None = None,
    steps: int | None = None,
    budget: float | None = None,
) -> TrainConfig:
    """The `TrainConfig` of the demo for ``model``: ``configs/brain_demo.yaml``, its
    section for that model, then the command line (``steps`` replaces the config's step count,
    ``budget`` adds a wall-clock limit, then ``device`` and ``overrides`` (the ``--set`` pairs); an
    override replaces the whole value of its key, e.g. all of ``model_overrides``)."""
    values = yaml.safe_load(DEMO_CONFIG.read_text())
    sections = {name: values.pop(name, None) or {} for name in MODEL_NAMES}
    values.update(sections[model])
    values.update(
        data_root=str(data), output_dir=str(output), class_names=list(CLASS_NAMES), n_classes=len(CLASS_NAMES),
        device=device, model=model,
    )
    if steps is not None:
        values["max_steps"] = steps
    if budget is not None:
        values["time_budget_s"] = budget
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def run_demo(
    model: str,
    output: Path,
    *,
    data: Path | None = None,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    steps: int | None = None,
    budget: float | None = None,
    resume: bool = False,
) -> tuple[dict, list[Path]]:
    """Prepare the brain data (into ``data``, default next to ``output``), train ``model`` for
    the demo's steps into ``output``, evaluate its last checkpoint on the test volumes; returns
    the summary and the overlay pictures (`simmpnet.evaluate.evaluate_checkpoint`)."""
    data = prepare_brain_demo(data if data is not None else output.parent / "brain_demo_data")
    # The demo's folder is its own: a new demo replaces the last one unless --resume continues it.
    trainer = Trainer(
        demo_config(model, data, output, device, overrides, steps, budget), overwrite=True
    )
    if resume and (output / "last.pt").is_file():
        trainer.resume()
    result = trainer.fit()
    if result["stop"] == "interrupted":  # a Ctrl-C: last.pt is saved, and `--resume` continues the demo
        raise KeyboardInterrupt
    # The last checkpoint is scored: selecting one on the test cases would flatter the figure.
    return evaluate_checkpoint(output / "last.pt", data, "test_vol", output, device, overlays=10, extra={"training": result})
