"""DICOM series in, DICOM-SEG out: `simmpnet predict` on a DICOM series written here with
SimpleITK/GDCM (oblique orientation, anisotropic spacing, files named against slice order),
label maps in the series' geometry, the DICOM-SEG read back by highdicom, and the bad inputs
refused in one line before a model is loaded."""
import hashlib
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import check_dicom_seg

from simmpnet import Preprocessing, SimMPNet
from simmpnet.cli import main
from simmpnet.data.dicom import DicomSeries, series_of_files
from simmpnet.data.dicom_seg import default_seg_path, require_highdicom, segment_classes, write_dicom_seg
from simmpnet.data.io import list_inputs, read_image
from simmpnet.errors import InputError, SimMPNetError
from simmpnet.predict import predict_array

sitk = pytest.importorskip("SimpleITK")

CLASS_NAMES = ("background", "liver", "kidney", "spleen")
#: What write_dicom_seg records as the model (the SHA-256 of its weights).
MODEL_ID = hashlib.sha256(b"test model").hexdigest()
SHAPE = (6, 40, 48)  # D x H x W: slices, rows, columns
SPACING = (0.7, 0.8, 2.5)  # ITK order: column spacing, row spacing, slice gap (mm)
ORIGIN = np.array([-120.5, 33.25, 410.0])
_ANGLE = 0.5
ROW = np.array([np.cos(_ANGLE), np.sin(_ANGLE), 0.0])  # direction along a row (increasing column)
COL = np.array([-0.8 * np.sin(_ANGLE), 0.8 * np.cos(_ANGLE), 0.6])  # along a column; oblique
NORMAL = np.cross(ROW, COL)
#: ITK's row-major direction: columns = row, column and slice directions.
DIRECTION = tuple(np.stack([ROW, COL, NORMAL], axis=1).reshape(-1))


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def phantom(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A CT-like int16 volume in HU: air, a body, an organ, a bone, brighter slice by slice."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    h, w = shape[1], shape[2]
    vol = np.full(shape, -1000, np.int16)
    vol[((y - h / 2) / (0.4 * h)) ** 2 + ((x - w / 2) / (0.42 * w)) ** 2 < 1] = 40
    vol[((y - 0.4 * h) / (0.15 * h)) ** 2 + ((x - 0.37 * w) / (0.17 * w)) ** 2 < 1] = 150
    vol[((y - 0.65 * h) / (0.1 * h)) ** 2 + ((x - 0.67 * w) / (0.09 * w)) ** 2 < 1] = 700
    return (vol + 10 * z).astype(np.int16)


def write_series(
    folder: Path,
    volume: np.ndarray,
    *,
    origin: np.ndarray = ORIGIN,
    series_uid: str | None = None,
    study_uid: str | None = None,
    suffix: str = "",
) -> dict:
    """Write ``volume`` (D x H x W, int16 HU) as a CT series, one file per slice, slice ``k`` at
    ``origin + k * 2.5 mm * NORMAL``. The files are named against the slice order (slice 0 is
    the last name), so reading them in name order would be wrong. Returns the UIDs, with the
    SOPInstanceUIDs in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {
        "study": study_uid or _uid(),
        "series": series_uid or _uid(),
        "frame": _uid(),
        "sops": [_uid() for _ in range(volume.shape[0])],
    }
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, plane in enumerate(volume):
        image = sitk.GetImageFromArray(plane[None])
        image.SetSpacing(SPACING)
        position = origin + k * SPACING[2] * NORMAL
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": uids["sops"][k],
            "0008|0060": "CT",
            "0008|0020": "20260101",
            "0008|0030": "120000",
            "0008|0050": "ACC001",
            "0008|0090": "",
            "0008|103e": "tiny CT",
            "0010|0010": "Test^Patient",
            "0010|0020": "P001",
            "0010|0030": "19700101",
            "0010|0040": "O",
            "0020|000d": uids["study"],
            "0020|000e": uids["series"],
            "0020|0052": uids["frame"],
            "0020|0010": "1",
            "0020|0011": "3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.9f}" for v in (*ROW, *COL)),
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",  # DICOM: row spacing, then column spacing
            "0018|0050": str(SPACING[2]),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"IM{volume.shape[0] - k:04d}{suffix}"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    uids["files"] = files
    return uids


def read_series(folder: Path) -> sitk.Image:
    """The series as SimpleITK reads it on its own: the reference geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def save_varied_model(folder: Path, bias: dict[int, float] | None = None) -> Path:
    """A `tiny` Sim-MPNet saved with save_pretrained in ``folder/model`` (a valid --checkpoint).
    Untrained, it would predict one class everywhere; heads with large random weights make the
    label map vary, so that the per-class checks compare something.  ``bias``: per class, added
    to every head (summed over the heads: a large one wins or loses everywhere)."""
    torch.manual_seed(0)
    net = SimMPNet.from_variant("tiny", n_classes=len(CLASS_NAMES), img_size_a=64, img_size_b=56, warmup_iters=1)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in net.heads:
            head.bias.zero_()
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 5)
            for c, value in (bias or {}).items():
                head.bias[c] = value
    net.preprocessing = Preprocessing(64, 1, (-125.0, 275.0), CLASS_NAMES, "labels")
    return net.save_pretrained(folder / "model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_varied_model(tmp_path_factory.mktemp("dicom_model"))


def _expect_clean_error(capfd: pytest.CaptureFixture, args: list[str], *needles: str) -> None:
    """Exit code 2 and exactly one line on the process's stderr (so no ITK warning either)."""
    code = main(args)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("simmpnet: error:"), err
    for needle in needles:
        assert needle in err[0], err[0]


# ---------------------------------------------------------------------------------------------
# finding and reading series
# ---------------------------------------------------------------------------------------------
def test_series_read_as_one_volume_in_slice_order_with_its_geometry(tmp_path: Path) -> None:
    volume = phantom()
    uids = write_series(tmp_path / "CT", volume)
    (series,) = list_inputs(tmp_path / "CT")
    assert isinstance(series, DicomSeries) and series.name == "CT" and series.series_uid == uids["series"]
    assert series.files == tuple(uids["files"])  # along the normal (IM0006 first), not by name
    loaded = read_image(series)
    assert loaded.kind == "dicom" and loaded.path == tmp_path / "CT" and loaded.series == series
    np.testing.assert_array_equal(loaded.array, volume.astype(np.float32))
    reference = read_series(tmp_path / "CT")
    assert loaded.origin == reference.GetOrigin() and loaded.direction == reference.GetDirection()
    np.testing.assert_allclose(loaded.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(loaded.direction, DIRECTION, atol=1e-6)
    np.testing.assert_allclose(loaded.file_spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(loaded.spacing, SPACING[::-1], rtol=1e-6)  # D, H, W


def test_series_names_and_grouping(tmp_path: Path) -> None:
    """A folder's only series is named after the folder; several series, or a series next to
    other inputs, after the SeriesInstanceUID; files given together after their folder; a
    single file after itself; files with a .dcm suffix are found like those without."""
    two = tmp_path / "two"
    a = write_series(two, phantom(), series_uid="1.2.3.4.1")
    b = write_series(two, phantom()[:3], series_uid="1.2.3.4.2", origin=ORIGIN + 100, suffix=".dcm")
    found = list_inputs(two)
    assert [s.name for s in found] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert [len(s.files) for s in found] == [6, 3]
    both = series_of_files([*a["files"][:2], *b["files"]])
    assert [(s.name, len(s.files)) for s in both] == [("1.2.3.4.1", 2), ("1.2.3.4.2", 3)]

    mixed = tmp_path / "mixed"
    write_series(mixed, phantom(), series_uid="1.2.3.5")
    (mixed / "photo.png").write_bytes(b"x")
    assert [getattr(i, "name", None) for i in list_inputs(mixed)] == ["photo.png", "1.2.3.5"]

    uids = write_series(tmp_path / "CT", phantom())
    (tmp_path / "CT" / ".IM0003.partial").write_bytes(uids["files"][3].read_bytes())  # hidden: not a slice
    (series,) = list_inputs(tmp_path / "CT")
    assert series.files == tuple(uids["files"])
    (series,) = list_inputs([str(p) for p in uids["files"]])
    assert series.name == "CT" and len(series.files) == 6
    (single,) = list_inputs(uids["files"][0])
    assert single.name == uids["files"][0].name and single.shape == (48, 40, 1)
    assert read_image(single).array.shape == (1, 40, 48)


def test_bad_series_are_refused_naming_the_folder_and_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "a.dcm").write_bytes(b"not dicom" * 50)
    (garbage / "b").write_bytes(b"\0" * 128 + b"DICM" + b"junk" * 50)
    with pytest.raises(InputError, match=r"garbage: holds 1 DICOM file\(s\) \(b\) but no readable DICOM image"):
        list_inputs(garbage)  # a.dcm is no DICOM file at all: skipped with a warning (tests/test_dicom_seg_edges.py)

    sizes = tmp_path / "sizes"
    uids = write_series(sizes, phantom())
    write_series(sizes, phantom((1, 30, 30)), series_uid=uids["series"], origin=ORIGIN + 6 * 2.5 * NORMAL, suffix="x")
    with pytest.raises(InputError, match=r"sizes: DICOM series .* mixes image sizes: .* IM0001x is 30 x 30"):
        list_inputs(sizes)

    gap = tmp_path / "gap"
    uids = write_series(gap, phantom())
    uids["files"][2].unlink()
    uneven = r"gap: DICOM series .*: slices are not evenly spaced \(5 mm between IM0005 and IM0003, 2.5 mm"
    with pytest.raises(InputError, match=uneven):
        list_inputs(gap)

    with pytest.raises(InputError, match="several inputs must all be DICOM files"):
        list_inputs([uids["files"][0], tmp_path / "garbage" / "a.dcm", tmp_path / "sizes"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt: unsupported file extension '.txt' and not a DICOM file"):
        list_inputs(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------
# predict: label map in the series' geometry, DICOM-SEG referencing the series
# ---------------------------------------------------------------------------------------------
def test_predict_series_writes_label_map_in_its_geometry_and_a_dicom_seg(model_dir: Path, tmp_path: Path, capfd) -> None:
    hd = pytest.importorskip("highdicom")
    uids = write_series(tmp_path / "CT", phantom())
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(model_dir), "--input", str(tmp_path / "CT"), "--output", str(out)]
    capfd.readouterr()
    assert main([*args, "--device", "cpu", "--dicom-seg", "--overlays"]) == 0  # predict_array below runs on the CPU
    err = capfd.readouterr().err
    assert "highdicom" not in err and "site-packages" not in err, err  # a quiet log: no library INFO lines or paths
    assert sorted(p.name for p in out.iterdir()) == ["CT.nii.gz", "CT_seg.dcm", "overlays", "prediction_summary.json"]
    assert [p.name for p in (out / "overlays").iterdir()] == ["CT.png"]
    # which weights made the outputs: the summary, the NIfTI description and the SEG all say it
    sha = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert summary["model"]["sha256"] == sha and summary["written"] == 1 and summary["failed"] == 0
    assert summary["model"]["command"] == "simmpnet " + " ".join([*args, "--device", "cpu", "--dicom-seg", "--overlays"])
    import nibabel as nib

    assert sha[:16] in nib.load(out / "CT.nii.gz").header["descrip"].item().decode()

    label_map = sitk.ReadImage(str(out / "CT.nii.gz"))
    source = read_series(tmp_path / "CT")
    assert label_map.GetSize() == source.GetSize() == (48, 40, 6)
    assert label_map.GetPixelID() == sitk.sitkUInt8
    for geometry in (source, label_map):  # NIfTI stores the geometry in float32
        np.testing.assert_allclose(geometry.GetOrigin(), ORIGIN, atol=1e-4)
        np.testing.assert_allclose(geometry.GetSpacing(), SPACING, rtol=1e-6)
        np.testing.assert_allclose(geometry.GetDirection(), DIRECTION, atol=1e-6)
    labels = sitk.GetArrayFromImage(label_map)  # D x H x W, slice k on source file k
    expected = predict_array(SimMPNet.from_pretrained(model_dir), sitk.GetArrayFromImage(source), volume=True)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) >= 2, "the model predicts one class everywhere: the checks below would be trivial"

    check_dicom_seg(out / "CT_seg.dcm")
    seg = hd.seg.segread(out / "CT_seg.dcm")
    present = [int(c) for c in np.unique(labels) if c > 0]
    assert seg.Modality == "SEG" and segment_classes(seg) == {n: c for n, c in enumerate(present, start=1)}
    labelled = [seg.get_segment_description(n).segment_label for n in segment_classes(seg)]
    assert labelled == [CLASS_NAMES[c] for c in present]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series"]
    assert seg.StudyInstanceUID == uids["study"] and seg.FrameOfReferenceUID == uids["frame"]
    assert seg.PatientID == "P001"
    assert seg.DeviceSerialNumber == sha[:16] and sha[:16] in seg.SeriesDescription
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert sha[:16] in algorithm.AlgorithmVersion and sha in algorithm.AlgorithmParameters
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids["sops"], segment_numbers=list(segment_classes(seg))
    )
    assert masks.shape == (*labels.shape, len(present))
    for number, c in segment_classes(seg).items():
        np.testing.assert_array_equal(masks[..., number - 1], labels == c, err_msg=CLASS_NAMES[c])


def test_predict_dicom_files_of_two_series_given_together(model_dir: Path, tmp_path: Path) -> None:
    """`--input` takes several DICOM files: grouped into one volume per series, each named
    after its SeriesInstanceUID, a subset of a series in its own geometry."""
    folder = tmp_path / "study"
    first = write_series(folder, phantom(), series_uid="1.2.3.6.1")
    second = write_series(folder, phantom()[:2], series_uid="1.2.3.6.2", origin=ORIGIN - 50, suffix=".dcm")
    files = [str(p) for p in (*first["files"][1:4], *second["files"])]
    out = tmp_path / "pred"
    assert main(["--quiet", "predict", "--checkpoint", str(model_dir), "--input", *files, "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1.2.3.6.1.nii.gz", "1.2.3.6.2.nii.gz", "prediction_summary.json"]
    picked = sitk.ReadImage(str(out / "1.2.3.6.1.nii.gz"))
    assert picked.GetSize() == (48, 40, 3)
    np.testing.assert_allclose(picked.GetOrigin(), ORIGIN + 2.5 * NORMAL, atol=1e-4)
    np.testing.assert_allclose(sitk.ReadImage(str(out / "1.2.3.6.2.nii.gz")).GetOrigin(), ORIGIN - 50, atol=1e-4)


def test_dicom_seg_of_a_known_label_map_in_both_orientations(tmp_path: Path) -> None:
    """Two classes present and one absent, written from a volume read in RAS order: the frames
    must still lie on their source images; the absent class gets no segment, and the segments
    of classes 1 and 3 are numbered 1 and 2 and named after their classes."""
    hd = pytest.importorskip("highdicom")
    volume = phantom()
    uids = write_series(tmp_path / "CT", volume)
    (series,) = list_inputs(tmp_path / "CT")
    classes = np.select([volume > 600, volume > 100], [3, 1], 0).astype(np.uint8)  # class 2 absent
    for orientation in ("native", "ras"):
        loaded = read_image(series, orientation=orientation)
        labels = np.select([loaded.array > 600, loaded.array > 100], [3, 1], 0).astype(np.uint8)
        path = write_dicom_seg(labels, loaded, tmp_path / orientation / "seg.dcm", CLASS_NAMES, MODEL_ID)
        check_dicom_seg(path)
        seg = hd.seg.segread(path)
        assert segment_classes(seg) == {1: 1, 2: 3}
        assert [(item.SegmentLabel, item.SegmentDescription) for item in seg.SegmentSequence] == [
            ("liver", "class 1: liver"), ("spleen", "class 3: spleen")
        ]
        masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids["sops"], segment_numbers=[1, 2])
        for number, c in segment_classes(seg).items():
            np.testing.assert_array_equal(masks[..., number - 1], classes == c, err_msg=f"{orientation}: class {c}")
        # empty frames are left out: one frame per source image that holds the segment
        assert int(seg.NumberOfFrames) == sum(int(np.any(plane == c)) for c in (1, 3) for plane in classes)
    assert default_seg_path(loaded, tmp_path) == tmp_path / "CT_seg.dcm"
    with pytest.raises(InputError, match="label 3 has no class name"):
        write_dicom_seg(labels, loaded, tmp_path / "few.dcm", CLASS_NAMES[:3], MODEL_ID)


def test_bad_inputs_fail_in_one_line_before_the_model_is_loaded(tmp_path: Path, capfd, monkeypatch) -> None:
    """The checkpoint does not exist: each error below must come from the input checks."""
    missing_model = str(tmp_path / "nope.pt")
    out = tmp_path / "out"
    common = ["predict", "--checkpoint", missing_model, "--output", str(out)]

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (garbage / name).write_bytes(b"not a DICOM file" * 20)
    needles = (str(garbage), "2 file(s) named .dcm that are not DICOM files (a.dcm, b.dcm", "nothing else to predict")
    _expect_clean_error(capfd, [*common, "--input", str(garbage)], *needles)
    (broken := tmp_path / "broken").mkdir()
    (broken / "b").write_bytes(b"\0" * 128 + b"DICM" + b"junk" * 50)
    _expect_clean_error(capfd, [*common, "--input", str(broken)], str(broken), "no readable DICOM image series")

    sizes = tmp_path / "sizes"
    uids = write_series(sizes, phantom())
    write_series(sizes, phantom((1, 30, 30)), series_uid=uids["series"], origin=ORIGIN - 2.5 * NORMAL, suffix="x")
    _expect_clean_error(capfd, [*common, "--input", str(sizes)], str(sizes), "mixes image sizes", "IM0001x")

    png = tmp_path / "slice.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 48), np.uint8)).save(png)
    needles = (str(png), "DICOM-SEG output needs DICOM series")
    _expect_clean_error(capfd, [*common, "--input", str(png), "--dicom-seg"], *needles)

    series = tmp_path / "CT"
    write_series(series, phantom())
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed: import raises ImportError
    _expect_clean_error(capfd, [*common, "--input", str(series), "--dicom-seg"], 'pip install "simmpnet[dicom]"')
    with pytest.raises(SimMPNetError):
        require_highdicom()
    assert not out.exists()
