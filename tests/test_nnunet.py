"""Sim-MPNet inside nnU-Net v2 (simmpnet.nnunet): nnU-Net's own planning, preprocessing,
training loop, predictor and evaluation on a small synthetic dataset in nnU-Net's raw layout.

nnU-Net reads its folders once per process, so this module points it at one temporary root
for the whole session (the ``nnunet`` fixture); the dataset is planned and preprocessed once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="the nnunet extra (pip install 'simmpnet[nnunet]') is not installed")

from simmpnet import SimMPNet  # noqa: E402
from simmpnet.errors import InputError  # noqa: E402
from simmpnet.nnunet.convert import write_case  # noqa: E402

DATASET = "Dataset042_Shapes"
LABELS = {"background": 0, "disk": 1, "square": 2}


def make_shapes_dataset(raw: Path, n_train: int = 5, n_test: int = 2) -> Path:
    """Volumes of 8 x 64 x 64 voxels (2 x 1 x 1 mm): a disk (intensity +1) and a square (+2)
    through every slice, at random places, on noise."""
    rng = np.random.default_rng(42)
    folder = raw / DATASET
    yy, xx = np.mgrid[:64, :64]
    for i in range(n_train + n_test):
        cy, cx = rng.integers(18, 46, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 90
        square = (abs(yy - (63 - cy)) < 6) & (abs(xx - (63 - cx)) < 6) & ~disk
        label = np.zeros((8, 64, 64), np.uint8)
        label[:, disk], label[:, square] = 1, 2
        image = rng.normal(0.0, 0.2, label.shape).astype(np.float32) + label.astype(np.float32)
        write_case(folder, "Tr" if i < n_train else "Ts", f"case{i:02d}", image, label, (2.0, 1.0, 1.0))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": n_train, "file_ending": ".nii.gz",
    }))
    return folder


@pytest.fixture(scope="module", autouse=True)
def nnunet(tmp_path_factory):
    """nnU-Net's folders under one temporary root, set before any test imports nnU-Net (it reads
    them once per process, on import); augmentation in the main process."""
    from simmpnet.nnunet.folders import ENV_NAMES, use_folders

    saved = {k: os.environ.get(k) for k in (*ENV_NAMES, "nnUNet_n_proc_DA", "nnUNet_def_n_proc")}
    folders = use_folders(tmp_path_factory.mktemp("nnunet"), n_proc_da=0)
    os.environ["nnUNet_def_n_proc"] = "1"
    yield folders
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def shapes(nnunet):
    """The shapes dataset, planned and preprocessed by nnU-Net (2d)."""
    from simmpnet.nnunet.run import plan_and_preprocess

    make_shapes_dataset(nnunet.raw)
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA, which must be positive
    os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        plan_and_preprocess(DATASET)
    finally:
        os.environ["nnUNet_n_proc_DA"] = "0"
    return nnunet


def new_trainer(trainer: str = "nnUNetTrainerSimMPNetTiny", epochs: int = 2, iterations: int = 2, fold: int = 0):
    from nnunetv2.paths import nnUNet_preprocessed

    from simmpnet.nnunet.run import find_trainer

    base = Path(nnUNet_preprocessed) / DATASET
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    cls = find_trainer(trainer)
    t = cls(plans=plans, configuration="2d", fold=fold, dataset_json=json.loads((base / "dataset.json").read_text()),
            device=torch.device("cpu"))
    t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = epochs, iterations, 1
    return t


def memory_buffers(model: SimMPNet) -> dict[str, torch.Tensor]:
    return {
        name: value.detach().clone() for name, value in model.state_dict().items()
        if any(key in name for key in ("bank", "prototypes", "warmup_counter", "key_weight", "update_count"))
    }


# ----------------------------------------------------------------------- fast
def test_encoder_side_rounds_the_longer_side_up_to_a_multiple_of_32():
    from simmpnet.nnunet.trainer import encoder_side

    assert encoder_side((64, 64)) == 64
    assert encoder_side([224, 192]) == 224
    assert encoder_side((200, 150)) == 224
    with pytest.raises(InputError, match="2d configuration"):
        encoder_side((8, 64, 64))


def test_head_subset_loss_is_the_mean_over_the_15_subsets_of_nnunets_loss():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from simmpnet.nnunet.trainer import HeadSubsetLoss

    criterion = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                               weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    heads = tuple(torch.randn(2, 3, 16, 16) for _ in range(4))
    target = torch.randint(0, 3, (2, 1, 16, 16)).float()
    expected = 0.0
    for mask in range(1, 16):
        subset = [h for i, h in enumerate(heads) if mask >> i & 1]
        expected += float(criterion(sum(subset), target))
    loss = HeadSubsetLoss(criterion)
    assert float(loss(heads, target)) == pytest.approx(expected / 15, rel=1e-5)
    # eval mode: the summed logits, scored once
    assert float(loss(sum(heads), target)) == pytest.approx(float(criterion(sum(heads), target)), rel=1e-6)
    with pytest.raises(InputError, match="full-resolution target"):
        loss(heads, [target, target])


def test_use_folders_refuses_other_folders_once_nnunet_is_imported(nnunet, tmp_path):
    import nnunetv2.paths  # noqa: F401 - nnU-Net imported: its folders are fixed now

    from simmpnet.nnunet.folders import use_folders

    with pytest.raises(InputError, match="already imported"):
        use_folders(tmp_path)
    assert use_folders(nnunet.raw.parent) == nnunet


def test_convert_brain_demo_writes_nnunets_raw_layout_with_the_projects_split(tmp_path):
    import h5py
    import SimpleITK as sitk

    from simmpnet.nnunet.convert import DEMO_DATASET_NAME, convert_brain_demo

    demo = tmp_path / "demo"
    (demo / "train_npz").mkdir(parents=True)
    (demo / "test_vol_h5").mkdir()
    rng = np.random.default_rng(0)
    train = rng.random((3, 12, 10)).astype(np.float32), rng.integers(0, 3, (3, 12, 10)).astype(np.uint8)
    for j in range(3):
        np.savez(demo / "train_npz" / f"brain_slab00_slice{j:03d}.npz", image=train[0][j], label=train[1][j])
    test = rng.random((2, 12, 10)).astype(np.float32), rng.integers(0, 3, (2, 12, 10)).astype(np.uint8)
    with h5py.File(demo / "test_vol_h5" / "brain_slab01.npy.h5", "w") as f:
        f["image"], f["label"] = test
    (demo / "dataset.json").write_text(json.dumps({
        "class_names": ["background", "a", "b"], "spacing": [3.0, 1.0, 0.5],
        "cases": [{"name": "brain_slab00", "split": "train", "n_slices": 3},
                  {"name": "brain_slab01", "split": "test", "n_slices": 2}],
    }))
    out = convert_brain_demo(demo, tmp_path / "raw")
    assert out.name == DEMO_DATASET_NAME
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "a": 1, "b": 2} and dataset["numTraining"] == 1
    image = sitk.ReadImage(str(out / "imagesTr" / "brain_slab00_0000.nii.gz"))
    assert image.GetSpacing() == (0.5, 1.0, 3.0)  # SimpleITK's (W, H, D)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), train[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTs" / "brain_slab01.nii.gz"))), test[1])
    with pytest.raises(InputError, match="not a prepared brain demo"):
        convert_brain_demo(tmp_path / "nothing", tmp_path / "raw")


# ----------------------------------------------------------------------- slow
@pytest.mark.slow
def test_a_step_commits_the_memory_and_a_nonfinite_step_leaves_everything(shapes):
    trainer = new_trainer(epochs=30, iterations=10, fold=1)  # 300 steps: warm-up min(2000, 100)
    trainer.initialize()
    assert trainer.warmup_iters == 100 and trainer.wld.start_epoch == 10
    assert trainer.enable_deep_supervision is False
    model = trainer.simmpnet
    assert model.config.img_size_a == 64 and model.config.img_size_b == 56
    trainer.on_train_start()
    try:
        trainer.on_train_epoch_start()
        before = memory_buffers(model)
        for _ in range(2):
            trainer.train_step(next(trainer.dataloader_train))
        after = memory_buffers(model)
        counters = [k for k in after if k.endswith("warmup_counter")]
        assert counters and all(int(after[k]) == 2 for k in counters)  # one commit per optimiser step
        assert any(not torch.equal(before[k], after[k]) for k in after if "bank" in k)

        batch = next(trainer.dataloader_train)
        batch["data"] = torch.full_like(batch["data"], float("nan"))
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        out = trainer.train_step(batch)
        assert not np.isfinite(out["loss"])
        for key, value in model.state_dict().items():  # weights, BatchNorm statistics, memory
            assert torch.equal(value, weights[key]), key
        assert trainer._finite_losses and len(trainer._finite_losses) == 2
    finally:
        trainer.on_train_end()


@pytest.mark.slow
def test_train_resume_predict_evaluate_and_load(shapes, tmp_path, caplog):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from simmpnet.nnunet.run import evaluate_folder, make_predictor, predict_folder, results_folder
    from simmpnet.nnunet.trainer import NETWORK_FILE, load_simmpnet

    # one epoch, then a resumed run to two (nnU-Net's --c)
    first = new_trainer(epochs=1, iterations=2)
    first.run_training()
    fold = Path(first.output_folder)
    assert (fold / "checkpoint_final.pth").is_file() and (fold / NETWORK_FILE).is_file()
    after_first = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after_first["current_epoch"] == 1
    counter_key = next(k for k in after_first["network_weights"] if k.endswith("warmup_counter"))
    assert all(int(v) == 1 for k, v in after_first["network_weights"].items() if k.endswith("warmup_done"))

    # extended to three epochs: the longer run scales to a longer warm-up (2 steps, not 1), but
    # the phase travels with the weights, so no block goes back into warm-up or k-means
    resumed = new_trainer(epochs=3, iterations=2)
    maybe_load_checkpoint(resumed, True, False, None)
    assert resumed.current_epoch == 1 and resumed.warmup_iters > int(after_first["network_weights"][counter_key])
    assert resumed.wld.previous_loss == pytest.approx(float(after_first["logging"]["train_losses"][-1]))
    for key, value in memory_buffers(resumed.simmpnet).items():
        assert torch.equal(value, after_first["network_weights"][key]), key
    assert not resumed.simmpnet.in_warmup
    with caplog.at_level(logging.INFO, logger="simmpnet.models.memory"):
        resumed.run_training()
    assert "k-means" not in caplog.text
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    for key in final["network_weights"]:
        if key.endswith("warmup_counter") or key.endswith("warmup_done"):
            assert torch.equal(final["network_weights"][key], after_first["network_weights"][key]), key
    changed = [k for k in memory_buffers(resumed.simmpnet) if "bank" in k
               and not torch.equal(final["network_weights"][k], after_first["network_weights"][k])]
    assert changed  # the second epoch's steps wrote the memory

    # nnU-Net's predictor with the network of simmpnet_network.json; prediction leaves it unchanged
    model = results_folder(DATASET, "nnUNetTrainerSimMPNetTiny")
    predictor = make_predictor(model, (0,), device="cpu", mirroring=False)
    images = shapes.raw / DATASET / "imagesTs"
    out = tmp_path / "pred"
    out.mkdir()
    predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=False, overwrite=True)
    for key, value in predictor.network.state_dict().items():
        assert torch.equal(value, final["network_weights"][key]), key
    import SimpleITK as sitk

    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case05.nii.gz")))
    assert predicted.shape == (8, 64, 64) and set(np.unique(predicted)) <= {0, 1, 2}
    again = predict_folder(model, images, tmp_path / "pred2", (0,), device="cpu", mirroring=False)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / "case05.nii.gz"))), predicted)

    # nnU-Net's evaluation (Dice) plus HD95: perfect predictions score 1 and 0 mm
    labels = shapes.raw / DATASET / "labelsTs"
    perfect = tmp_path / "perfect"
    shutil.copytree(labels, perfect)
    result = evaluate_folder(labels, perfect, model / "dataset.json", model / "plans.json")
    assert result["dice"] == {"1": 1.0, "2": 1.0} and result["mean_dice"] == 1.0
    assert result["hd95_mm"] == {"1": 0.0, "2": 0.0} and result["n_cases"] == 2
    scored = evaluate_folder(labels, out, model / "dataset.json", model / "plans.json")
    assert (out / "summary.json").is_file() and (out / "hd95.json").is_file()
    assert all(0.0 <= v <= 1.0 for v in scored["dice"].values())

    # the checkpoint as a SimMPNet, and through save_pretrained / from_pretrained
    net = load_simmpnet(fold / "checkpoint_final.pth")
    for key, value in net.state_dict().items():
        assert torch.equal(value, final["network_weights"][key]), key
    reloaded = SimMPNet.from_pretrained(net.save_pretrained(tmp_path / "pretrained"))
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), net(x))


@pytest.mark.slow
def test_the_command_line_trains_predicts_and_evaluates_in_a_fresh_process(shapes, tmp_path):
    """`simmpnet nnunet` end to end in a new process, nnU-Net's folders from --root."""
    root = tmp_path / "root"
    shutil.copytree(shapes.raw, root / "nnUNet_raw")
    shutil.copytree(shapes.preprocessed, root / "nnUNet_preprocessed")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(name, None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "simmpnet", "nnunet", *args, "--root", str(root), "--workers", "0"],
                              capture_output=True, text=True, encoding="utf-8", env=env, timeout=900)

    done = run("train", "-d", "42", "-tr", "nnUNetTrainerSimMPNetTiny_AdamW", "--epochs", "1", "--iterations", "1",
               "--val-iterations", "1", "--device", "cpu", "--no-validation")
    assert done.returncode == 0, done.stderr[-3000:]
    fold = root / "nnUNet_results" / DATASET / "nnUNetTrainerSimMPNetTiny_AdamW__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "AdamW (paper)" in log and "Current learning rate: 0.0001" in log
    done = run("predict", "-d", "42", "-tr", "nnUNetTrainerSimMPNetTiny_AdamW", "-i",
               str(root / "nnUNet_raw" / DATASET / "imagesTs"), "-o", str(tmp_path / "pred"), "--device", "cpu",
               "--disable-tta")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run("evaluate", "-d", "42", "--labels", str(root / "nnUNet_raw" / DATASET / "labelsTs"),
               "--predictions", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mean DSC" in done.stdout and "mean HD95 (mm)" in done.stdout
    assert json.loads((tmp_path / "pred" / "evaluation.json").read_text())["n_cases"] == 2
    done = run("train", "-d", "42", "-tr", "NoSuchTrainer", "--epochs", "1")
    assert done.returncode == 2 and "NoSuchTrainer" in done.stderr


_PREDICT_IN_A_FRESH_PROCESS = """
import sys

import numpy as np
import torch

torch.set_num_threads(1)
mode, model_folder, fold, image, out = sys.argv[1:]
if mode == "nnunet":  # nnU-Net's own way: the trainer class looked up by name, the network rebuilt from it
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (int(fold),), "checkpoint_final.pth")
else:
    from simmpnet.nnunet.run import make_predictor

    predictor = make_predictor(model_folder, (int(fold),), device="cpu", mirroring=False)
preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
data, _, _ = preprocessor.run_case([image], None, predictor.plans_manager, predictor.configuration_manager,
                                   predictor.dataset_json)
np.save(out, predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).numpy())
"""


@pytest.mark.slow
def test_nnunets_own_predictor_in_a_fresh_process_gives_the_package_predictors_logits(shapes, tmp_path, paths_agree):
    """nnU-Net rebuilds the network from the trainer class alone (the variant's 2000-step
    warm-up): the memory's phase must come with the weights, or its blocks skip the memory read."""
    from simmpnet.cli import main
    from simmpnet.nnunet.registration import install, registration, uninstall
    from simmpnet.nnunet.run import results_folder

    trainer, fold = "nnUNetTrainerSimMPNetTiny_AdamW", "3"
    assert main(["--quiet", "nnunet", "train", "-d", "42", "-tr", trainer, "-f", fold, "--epochs", "2", "--iterations",
                 "3", "--val-iterations", "1", "--device", "cpu", "--no-validation", "--workers", "0"]) == 0
    model = results_folder(DATASET, trainer)
    weights = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(int(v) == 1 for k, v in weights["network_weights"].items() if k.endswith("warmup_done"))
    image = shapes.raw / DATASET / "imagesTs" / "case05_0000.nii.gz"
    script = tmp_path / "predict.py"
    script.write_text(_PREDICT_IN_A_FRESH_PROCESS)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    was_installed = registration().installed
    install()  # nnU-Net finds trainers only in its own folder
    try:
        logits = {}
        for mode in ("nnunet", "package"):
            out = tmp_path / f"{mode}.npy"
            done = subprocess.run([sys.executable, str(script), mode, str(model), fold, str(image), str(out)],
                                  capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                                  timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            logits[mode] = np.load(out)
    finally:
        if not was_installed:
            uninstall()
    ours, theirs = logits["package"], logits["nnunet"]
    assert ours.shape == theirs.shape and ours.shape[0] == len(LABELS)
    equal, diff = paths_agree(
        "tiny (nnU-Net trainer)", "nnU-Net's `nnUNetPredictor.initialize_from_trained_model_folder`, fresh process",
        "`simmpnet nnunet predict`'s predictor, fresh process", theirs.argmax(0), ours.argmax(0), theirs, ours,
        rule="logits <= 1e-5",
    )
    assert diff <= 1e-5 and equal == 1.0, (diff, equal)


@pytest.mark.slow
def test_install_makes_nnunets_own_lookup_find_the_trainers_and_uninstall_undoes_it(tmp_path, monkeypatch, capsys):
    from simmpnet.cli import main
    from simmpnet.nnunet import registration as reg

    lookup = (
        "import os, nnunetv2\n"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class as find\n"
        "folder = os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer')\n"
        "print(find(folder, 'nnUNetTrainerSimMPNetTiny', 'nnunetv2.training.nnUNetTrainer'))\n"
        "print(find(folder, 'nnUNetTrainer_5epochs', 'nnunetv2.training.nnUNetTrainer'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def found() -> list[str]:
        done = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, encoding="utf-8",
                              errors="replace", env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split("\n")[-3:-1]

    was_installed = reg.registration().installed
    try:
        assert main(["nnunet", "install"]) == 0 and main(["nnunet", "install"]) == 0  # idempotent
        assert reg.registration().installed
        assert main(["nnunet", "status"]) == 0 and "installed for nnU-Net" in capsys.readouterr().out
        ours, theirs = found()
        assert ours == "<class 'simmpnet.nnunet.trainer.nnUNetTrainerSimMPNetTiny'>" and "5epochs" in theirs
        assert main(["nnunet", "uninstall"]) == 0
        assert not reg.registration().installed and not (reg.trainer_folder() / reg.MODULE_NAME).exists()
        ours, theirs = found()
        assert ours == "None" and "5epochs" in theirs
    finally:
        if was_installed:
            reg.install()

    # a file of that name that simmpnet did not write is neither replaced nor removed
    folder = tmp_path / "nnUNetTrainer"
    folder.mkdir()
    monkeypatch.setattr(reg, "trainer_folder", lambda: folder)
    (folder / reg.MODULE_NAME).write_text("# someone else's\n")
    for command in ("install", "uninstall"):
        assert main(["nnunet", command]) == 2
        assert "not written by simmpnet" in capsys.readouterr().err
    assert (folder / reg.MODULE_NAME).read_text() == "# someone else's\n"
    # a folder that cannot be written (here: a path through a file, which fails for root too)
    (folder / reg.MODULE_NAME).unlink()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setattr(reg, "trainer_folder", lambda: blocked / "nnUNetTrainer")
    assert main(["nnunet", "install"]) == 2
    err = capsys.readouterr().err
    assert "cannot write simmpnet_trainers.py" in err and len(err.strip().splitlines()) == 1


def test_plans_that_do_not_fit_are_refused_before_nnunet_creates_a_folder(shapes):
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

    from simmpnet.nnunet.run import find_trainer

    base = Path(nnUNet_preprocessed) / DATASET
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    cls = find_trainer("nnUNetTrainerSimMPNetTiny")
    results = Path(nnUNet_results) / DATASET / "nnUNetTrainerSimMPNetTiny__nnUNetPlans__3d_fullres"
    with pytest.raises(InputError, match="3D configuration.*train the 2d configuration"):
        cls(plans=plans, configuration="3d_fullres", fold=4, dataset_json=dataset_json, device=torch.device("cpu"))
    assert not results.exists()
    resenc = json.loads(json.dumps(plans))
    resenc["plans_name"] = "nnUNetResEncUNetMPlans"
    resenc["configurations"]["2d"]["architecture"]["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    )
    with pytest.raises(InputError, match="planned for ResidualEncoderUNet.*-p nnUNetPlans"):
        cls(plans=resenc, configuration="2d", fold=4, dataset_json=dataset_json, device=torch.device("cpu"))
    assert not (Path(nnUNet_results) / DATASET / "nnUNetTrainerSimMPNetTiny__nnUNetResEncUNetMPlans__2d").exists()


def test_short_run_variants_and_the_network_inside_the_checkpoint(shapes):
    from simmpnet.nnunet.trainer import SHORT_RUN_EPOCHS, TRAINERS, network_from_description

    for base in ("nnUNetTrainerSimMPNet", "nnUNetTrainerSimMPNetTiny_AdamW"):
        for epochs in SHORT_RUN_EPOCHS:
            name = f"{base}_{'1epoch' if epochs == 1 else f'{epochs}epochs'}"
            assert TRAINERS[name].run_epochs == epochs and issubclass(TRAINERS[name], TRAINERS[base]), name
    from nnunetv2.paths import nnUNet_preprocessed

    base_folder = Path(nnUNet_preprocessed) / DATASET
    plans = json.loads((base_folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # (nnU-Net's run_training sets it)
    trainer = TRAINERS["nnUNetTrainerSimMPNetTiny_5epochs"](
        plans=plans, configuration="2d", fold=4,
        dataset_json=json.loads((base_folder / "dataset.json").read_text()), device=torch.device("cpu"),
    )
    assert trainer.num_epochs == 5 and type(trainer).variant == "tiny"
    trainer.initialize()
    description = trainer.my_init_kwargs["simmpnet_network"]
    assert description["trainer"] == "nnUNetTrainerSimMPNetTiny_5epochs"
    rebuilt = network_from_description(description, "init_args")
    assert rebuilt.config == trainer.simmpnet.config
