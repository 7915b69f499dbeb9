"""nnU-Net as its users run it: nnU-Net's own console scripts as subprocesses (issue 29), on a
synthetic dataset, with Sim-MPNet's trainers registered by ``simmpnet nnunet install``:
plan and preprocess, train (``_1epoch``), predict, evaluate, find the best configuration, export
the model to a zip, install it into a fresh ``nnUNet_results`` and predict again.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="the nnunet extra (pip install 'simmpnet[nnunet]') is not installed")

from test_nnunet import DATASET, make_shapes_dataset  # noqa: E402

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerSimMPNetTiny_1epoch"
BIN = Path(sys.executable).parent


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """A console script of this environment (or an absolute program path) with ``args``."""
    done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, encoding="utf-8",
                          errors="replace", env=env, timeout=1200)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture()
def registered():
    from simmpnet.nnunet.registration import install, registration, uninstall

    was_installed = registration().installed
    install()
    yield
    if not was_installed:
        uninstall()


def test_nnunets_console_scripts_train_predict_export_and_install(tmp_path, registered):
    root = tmp_path / "nnunet"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
        "OMP_NUM_THREADS": "1",
    }
    raw = make_shapes_dataset(root / "raw")
    # (nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA: positive there)
    _run({**env, "nnUNet_n_proc_DA": "1"}, "nnUNetv2_plan_and_preprocess", "-d", "42", "-c", "2d", "-np", "1", "-npfp", "1")
    trained = _run(env, "nnUNetv2_train", "42", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--npz")
    fold = root / "results" / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Sim-MPNet tiny" in log and "DMW-LA warm-up" in log

    images = raw / "imagesTs"
    predict = ["nnUNetv2_predict", "-i", str(images), "-d", "42", "-c", "2d", "-f", "0", "-tr", TRAINER,
               "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]
    _run(env, *predict, "-o", str(tmp_path / "pred"))
    _run(env, "nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(tmp_path / "pred"),
         "-djfile", str(fold.parent / "dataset.json"), "-pfile", str(fold.parent / "plans.json"))
    assert (tmp_path / "pred" / "summary.json").is_file()
    best = _run(env, "nnUNetv2_find_best_configuration", "42", "-c", "2d", "-tr", TRAINER, "-f", "0")
    assert TRAINER in best.stdout

    # the model folder as a zip, installed into an empty nnUNet_results on "another machine"
    _run(env, "nnUNetv2_export_model_to_zip", "-d", "42", "-o", str(tmp_path / "model.zip"), "-c", "2d", "-tr",
         TRAINER, "-f", "0")
    fresh = {**env, "nnUNet_results": str(tmp_path / "fresh_results")}
    _run(fresh, "nnUNetv2_install_pretrained_model_from_zip", str(tmp_path / "model.zip"))
    installed = tmp_path / "fresh_results" / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    assert (installed / "checkpoint_final.pth").is_file()
    _run(fresh, *predict, "-o", str(tmp_path / "pred_fresh"))
    for case in sorted((tmp_path / "pred").glob("*.nii.gz")):
        np.testing.assert_array_equal(_read(tmp_path / "pred_fresh" / case.name), _read(case), err_msg=case.name)

    # the package's own loader reads the installed folder too (no simmpnet_network.json needed)
    for extra in installed.glob("simmpnet_network.json"):
        extra.unlink()
    probe = ("import sys; from simmpnet.nnunet.trainer import load_simmpnet; "
             "m = load_simmpnet(sys.argv[1]); print(m.config.img_size_a, m.in_warmup)")
    done = _run(fresh, sys.executable, "-c", probe, str(installed / "checkpoint_final.pth"))
    assert done.stdout.split() == ["64", "False"]
    shutil.rmtree(root / "preprocessed")  # the largest part; tmp_path goes with pytest's retention
