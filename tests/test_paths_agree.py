"""Same model, same answer: every way to run a trained model gives its labels (issue 28).

Two networks trained by ``simmpnet train`` on the real demo MRI, both past their DMW-LA warm-up
(so every forward reads the memory): a ``tiny`` at 64 px and the ``paper`` network at its own
256 / 224 px.  For each, ``simmpnet predict`` on a PNG (8 and 16 bit), a NIfTI volume and a
DICOM series gives the reference labels; every other path must give them: ``model.predict``
on each input type a user holds, the ``save_pretrained`` folder, the DICOM-SEG read back with
highdicom (eager paths: bitwise), and the ONNX Runtime and TorchScript exports (at least
99.99 % of pixels, logits within 1e-4).  nnU-Net's own predictor is held to the package's in
tests/test_nnunet.py.  ``SIMMPNET_PATHS_TABLE=FILE`` writes the table of what was measured
(conftest.py; docs/paths-agree.md).
"""
from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import check_dicom_seg, small_train_config
from PIL import Image

from simmpnet import SimMPNet
from simmpnet.cli import main
from simmpnet.data.dicom_seg import segment_classes
from simmpnet.data.io import read_image
from simmpnet.data.network_input import as_input, network_slices
from simmpnet.data.transforms import resize_image

pytestmark = pytest.mark.slow

SLICES = 4  # of the first test volume: the paper network predicts them in seconds
EXPORT_PIXELS, EXPORT_LOGITS = 0.9999, 1e-4


def _train(brain_data, folder, **changes):
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump(small_train_config(brain_data, folder / "run", val_list=None, **changes)))
    assert main(["--quiet", "train", "--config", str(config)]) == 0
    return folder / "run" / "last.pt"


@pytest.fixture(scope="module", params=["tiny", "paper"])
def trained(request, brain_data, tmp_path_factory):
    """(name, checkpoint, model): a short run whose warm-up ended in training."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "tiny":
        checkpoint = _train(brain_data, folder, warmup_iters=2, max_steps=6)
    else:
        checkpoint = _train(
            brain_data, folder, variant="paper", model_overrides={}, input_size=256, batch_size=2, warmup_iters=1,
            max_steps=2,
        )
    model = SimMPNet.from_pretrained(checkpoint)
    assert not any(block.in_warmup for block in model.dmwla_blocks()), "the run must end its warm-up"
    return request.param, checkpoint, model


@pytest.fixture(scope="module")
def inputs(brain_data, tmp_path_factory):
    """The same slices as an 8-bit and a 16-bit PNG, an int16 NIfTI volume and a DICOM series."""
    from test_dicom import write_series

    folder = tmp_path_factory.mktemp("inputs")
    with h5py.File(sorted((brain_data / "test_vol_h5").glob("*.h5"))[0], "r") as f:
        unit = np.asarray(f["image"][:SLICES], dtype=np.float64)  # [0, 1]
    raw = np.round(unit * 800).astype(np.int16)
    picture = unit[SLICES // 2]
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(folder / "slice8.png")
    Image.fromarray(np.round(picture * 65535).astype(np.uint16)).save(folder / "slice16.png")
    assert Image.open(folder / "slice16.png").mode.startswith("I;16")
    nib.save(nib.Nifti1Image(raw.transpose(2, 1, 0), np.diag([0.9, 0.9, 1.2, 1.0])), folder / "scan.nii.gz")
    uids = write_series(folder / "series", raw)
    return {"folder": folder, "raw": raw, "sops": uids["sops"]}


def _cli_predict(checkpoint, source, out, *extra):
    assert main(["--quiet", "predict", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                 "--device", "cpu", *extra]) == 0
    return out


def _labels(path):
    if path.suffix == ".png":  # a label PNG holds the class ids (as palette indices)
        return np.asarray(Image.open(path))
    return read_image(path).array.astype(np.uint8)


def test_every_path_gives_the_labels_of_simmpnet_predict(trained, inputs, tmp_path, paths_agree):
    name, checkpoint, model = trained
    folder = inputs["folder"]
    out = tmp_path / "cli"
    png8, png16, nifti = folder / "slice8.png", folder / "slice16.png", folder / "scan.nii.gz"
    for source in (png8, png16, nifti):
        _cli_predict(checkpoint, source, out)
    reference = {"png8": _labels(out / "slice8.png"), "png16": _labels(out / "slice16.png"),
                 "volume": _labels(out / "scan.nii.gz")}
    assert len(np.unique(reference["volume"])) >= 2, "one class everywhere: the comparisons would be trivial"

    def check(path, got, ref, reference_name):
        equal, _ = paths_agree(name, path, reference_name, got, reference[ref])
        assert equal == 1.0, f"{name}: {path}: {100 * (1 - equal):.3f} % of pixels differ from {reference_name}"

    # Turning an input type into the network's slices does not depend on the network: the
    # paper network (seconds per forward on a CPU) takes one input of each kind.
    every_type = name == "tiny"

    samples8 = np.array(Image.open(png8))
    assert samples8.dtype == np.uint8
    check("`model.predict(uint8 array)`", model.predict(samples8), "png8", "`simmpnet predict` PNG")
    samples16 = np.asarray(Image.open(png16)).astype(np.uint16)
    check("`model.predict(uint16 array)`", model.predict(samples16), "png16", "`simmpnet predict` 16-bit PNG")
    raw = inputs["raw"]
    check("`model.predict(int16 volume)`", model.predict(raw), "volume", "`simmpnet predict` NIfTI")
    if every_type:
        check("`model.predict(path)`, 8-bit PNG", model.predict(png8), "png8", "`simmpnet predict` PNG")
        check("`model.predict(PIL.Image)`", model.predict(Image.open(png8)), "png8", "`simmpnet predict` PNG")
        check("`model.predict(torch uint8 tensor)`", model.predict(torch.from_numpy(samples8)), "png8",
              "`simmpnet predict` PNG")
        check("`model.predict(float array / 255)`", model.predict(samples8 / np.float32(255)), "png8",
              "`simmpnet predict` PNG")
        check("`model.predict(path)`, NIfTI", model.predict(nifti), "volume", "`simmpnet predict` NIfTI")
        check("`model.predict(float volume)`", model.predict(raw.astype(np.float32)), "volume",
              "`simmpnet predict` NIfTI")
        check("`model.predict(torch float volume)`", model.predict(torch.from_numpy(raw.astype(np.float32))),
              "volume", "`simmpnet predict` NIfTI")

    # a DICOM series of the same voxels, with its DICOM-SEG read back by highdicom
    hd = pytest.importorskip("highdicom")
    dicom_out = _cli_predict(checkpoint, folder / "series", tmp_path / "dicom", "--dicom-seg")
    check("`simmpnet predict` DICOM series", _labels(dicom_out / "series.nii.gz"), "volume", "`simmpnet predict` NIfTI")
    check_dicom_seg(dicom_out / "series_seg.dcm")
    seg = hd.seg.segread(dicom_out / "series_seg.dcm")
    classes = segment_classes(seg)  # {segment number: class id}: segments only for the classes present
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=inputs["sops"], segment_numbers=list(classes))
    from_seg = np.zeros(raw.shape, np.uint8)
    for index, c in enumerate(classes.values()):
        from_seg[masks[..., index] > 0] = c
    check("DICOM-SEG read back with highdicom", from_seg, "volume", "`simmpnet predict` NIfTI")

    # the save_pretrained folder, by the CLI and by one line of Python
    pretrained = model.save_pretrained(tmp_path / "pretrained")
    _cli_predict(pretrained, nifti, tmp_path / "from_folder")
    check("`simmpnet predict` on the save_pretrained folder", _labels(tmp_path / "from_folder" / "scan.nii.gz"),
          "volume", "`simmpnet predict` NIfTI (last.pt)")
    check("`SimMPNet.from_pretrained(folder).predict(path)`", SimMPNet.from_pretrained(pretrained).predict(nifti),
          "volume", "`simmpnet predict` NIfTI (last.pt)")


def test_exports_give_the_logits_and_labels_of_the_network(trained, inputs, tmp_path, paths_agree):
    """ONNX Runtime and TorchScript on the slices ``simmpnet predict`` gives the network."""
    from simmpnet.export import export_checkpoint, onnxruntime_session

    name, checkpoint, model = trained
    size = model.preprocessing.input_size
    slices = network_slices(as_input(inputs["folder"] / "scan.nii.gz"), 1, model.preprocessing.intensity_window)
    batch = torch.from_numpy(np.stack([resize_image(s, (size, size)) for s in slices])[:, None].copy())
    with torch.no_grad():
        reference = model.eval()(batch).numpy()
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        path, _, _ = export_checkpoint(checkpoint, tmp_path / f"model{suffix}", fmt, check=False)
        if fmt == "onnx":
            session = onnxruntime_session(path)
            logits = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        else:
            with torch.no_grad():
                logits = torch.jit.load(str(path), map_location="cpu")(batch).numpy()
        equal, diff = paths_agree(
            name, f"{'ONNX Runtime' if fmt == 'onnx' else 'TorchScript'} export", "the PyTorch network, same input",
            logits.argmax(1), reference.argmax(1), logits, reference, rule=f">= {100 * EXPORT_PIXELS:g} %, <= {EXPORT_LOGITS:g}",
        )
        assert equal >= EXPORT_PIXELS and diff <= EXPORT_LOGITS, (fmt, equal, diff)


def test_a_network_built_with_another_warmup_loads_the_trained_function(trained, inputs):
    """What nnU-Net's predictor, ``--val`` and every loader do: build the network from its
    class (any warm-up length) and load the state dict.  The phase comes with the weights."""
    name, checkpoint, model = trained
    size_a, size_b = model.config.img_size_a, model.config.img_size_b
    rebuilt = SimMPNet.from_variant(name, model.n_classes, img_size_a=size_a, img_size_b=size_b, warmup_iters=100_000)
    assert all(block.in_warmup for block in rebuilt.dmwla_blocks())
    rebuilt.load_state_dict(model.state_dict())
    assert not any(block.in_warmup for block in rebuilt.dmwla_blocks())
    x = torch.from_numpy(network_slices(as_input(inputs["raw"]), 1)[:2, None].copy())
    x = torch.nn.functional.interpolate(x, size=(size_a, size_a), mode="bilinear")
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("trained", ["tiny"], indirect=True)  # one network is enough for the refusal
def test_sliding_window_on_a_model_trained_on_resized_slices_is_refused(trained, inputs, tmp_path, capsys):
    name, checkpoint, model = trained
    args = ["predict", "--checkpoint", str(checkpoint), "--input", str(inputs["folder"] / "scan.nii.gz"),
            "--output", str(tmp_path / "out"), "--device", "cpu", "--inference", "sliding-window"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sliding-window" in err and "resized" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "scan.nii.gz").exists()
    with pytest.raises(Exception, match="resized"):
        model.predict(inputs["raw"], inference="sliding-window")
