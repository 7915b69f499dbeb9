"""DICOM inputs at the edges of what a DICOM-SEG can say, and what a PACS then receives: a
prediction without foreground (no SEG), classes absent from the prediction (no segment), a
single image without a plane position (a SEG without one), a Siemens MOSAIC (refused), the
SEG's equipment (real values), GDCM's stderr lines (debug log only), a text file named
``.dcm`` (refused as not DICOM), and dciodvfy (dicom3tools) run on a SEG of every kind of
series these tests build."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import check_dicom_seg, dciodvfy_findings, debian_tool
from test_dicom import CLASS_NAMES, MODEL_ID, _expect_clean_error, _uid, phantom, save_varied_model, write_series

from simmpnet import __version__
from simmpnet.cli import main
from simmpnet.data.dicom_seg import segment_classes, write_dicom_seg
from simmpnet.data.io import list_inputs, read_image
from simmpnet.errors import InputError

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def background_model(tmp_path_factory) -> Path:
    """Predicts background everywhere."""
    return save_varied_model(tmp_path_factory.mktemp("background_model"), {0: 1e4})


@pytest.fixture(scope="module")
def partial_model(tmp_path_factory) -> Path:
    """Never predicts class 2 (kidney)."""
    return save_varied_model(tmp_path_factory.mktemp("partial_model"), {2: -1e4})


def _predict(model: Path, source: Path, out: Path, *extra: str) -> int:
    return main(["--quiet", "predict", "--checkpoint", str(model), "--input", str(source), "--output", str(out),
                 "--device", "cpu", "--dicom-seg", *extra])


def pydicom_series(name: str, folder: Path, count: int = 3) -> list[Path]:
    """``count`` slices of one of pydicom's test images (a real scanner's header), one behind
    the other along the slice normal, one SliceThickness apart: a multi-slice series."""
    source = pydicom.dcmread(TEST_FILES / name)
    row, col = np.array(source.ImageOrientationPatient[:3], float), np.array(source.ImageOrientationPatient[3:], float)
    normal = np.cross(row, col)
    series_uid = _uid()
    folder.mkdir(parents=True)
    files = []
    for k in range(count):
        ds = pydicom.dcmread(TEST_FILES / name)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid()
        ds.InstanceNumber = k + 1
        position = np.array(ds.ImagePositionPatient, float) + k * float(ds.SliceThickness) * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        files.append(folder / f"slice{k}.dcm")
        ds.save_as(files[-1])
    return files


def secondary_capture(path: Path, *, frame_of_reference: bool = False, pixel_spacing: bool = False,
                      patient_orientation: tuple[str, str] | None = None, series_uid: str | None = None) -> Path:
    """A grey Secondary Capture image: no Image Position/Orientation (Patient), so no plane
    position for its pixels; optionally with a Frame of Reference and a Pixel Spacing, as a
    radiograph has."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(), series_uid or _uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^SC", "P002", "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = "OT", 1, 1, "WSD"
    ds.PatientOrientation = list(patient_orientation) if patient_orientation else ""
    if frame_of_reference:
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = _uid(), ""
    if pixel_spacing:
        ds.PixelSpacing = [0.5, 0.5]
    pixels = phantom((1, 40, 48))[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", *pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _known_labels(loaded) -> np.ndarray:
    """Classes 1 and 3 from the phantom's intensities (class 2 absent)."""
    return np.select([loaded.array > 600, loaded.array > 100], [3, 1], 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# what the prediction holds
# ---------------------------------------------------------------------------------------------
def test_no_foreground_gives_no_seg_a_warning_and_a_skipped_input(background_model: Path, tmp_path: Path, capfd):
    """A SEG must hold a segment and a frame: a series without foreground gets its label map,
    no SEG, one warning line naming it, `skipped` in the summary, exit 0."""
    uids = write_series(tmp_path / "CT", phantom())
    out = tmp_path / "pred"
    capfd.readouterr()
    assert _predict(background_model, tmp_path / "CT", out) == 0
    captured = capfd.readouterr()
    shown = f"{tmp_path / 'CT'} (DICOM series {uids['series']}, 6 file(s))"
    assert captured.err.strip().splitlines() == [f"no foreground predicted in {shown}: no DICOM-SEG written"]
    assert "0 label map(s) written" in captured.out and "1 label map(s) without a DICOM-SEG" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["CT.nii.gz", "prediction_summary.json"]
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "CT.nii.gz"))).any()
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 1, 0)
    (item,) = summary["inputs"]
    assert item["status"] == "skipped" and item["outputs"] == [str(out / "CT.nii.gz")]
    assert item["input"] == shown and item["reason"] == f"no foreground predicted in {shown}: no DICOM-SEG written"

    # a SEG left by an earlier run would contradict the new label map
    (out / "CT_seg.dcm").write_bytes(b"an earlier run's SEG")
    assert _predict(background_model, tmp_path / "CT", out) == 0
    assert capfd.readouterr().err.strip().splitlines() == [
        f"no foreground predicted in {shown}: no DICOM-SEG written (CT_seg.dcm of an earlier run removed)"
    ]
    assert not (out / "CT_seg.dcm").exists()

    loaded = read_image(list_inputs(tmp_path / "CT")[0])
    with pytest.raises(InputError, match=r"empty.dcm: no foreground in the label map of .*CT.*at least one segment"):
        write_dicom_seg(np.zeros(loaded.label_shape, np.uint8), loaded, tmp_path / "empty.dcm", CLASS_NAMES, MODEL_ID)
    assert not (tmp_path / "empty.dcm").exists()


def test_only_the_predicted_classes_become_segments(partial_model: Path, tmp_path: Path) -> None:
    """Class 2 is never predicted: segments 1 and 2 are classes 1 and 3, named after them,
    and each holds exactly its class's pixels; frames without the class are left out."""
    uids = write_series(tmp_path / "CT", phantom())
    out = tmp_path / "pred"
    assert _predict(partial_model, tmp_path / "CT", out) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "CT.nii.gz")))
    assert set(np.unique(labels)) == {0, 1, 3}, "the model must predict classes 1 and 3 for this test to mean anything"
    check_dicom_seg(out / "CT_seg.dcm")
    seg = hd.seg.segread(out / "CT_seg.dcm")
    assert segment_classes(seg) == {1: 1, 2: 3}
    assert [int(item.SegmentNumber) for item in seg.SegmentSequence] == [1, 2]
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "spleen"]
    assert [item.SegmentDescription for item in seg.SegmentSequence] == ["class 1: liver", "class 3: spleen"]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids["sops"], segment_numbers=[1, 2])
    for number, c in segment_classes(seg).items():
        np.testing.assert_array_equal(masks[..., number - 1], labels == c)
    frames = sum(int((labels[k] == c).any()) for c in (1, 3) for k in range(len(labels)))
    assert int(seg.NumberOfFrames) == frames < 2 * len(labels)


# ---------------------------------------------------------------------------------------------
# images without a plane position, MOSAIC
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind",
    [
        {},
        {"patient_orientation": ("L", "P")},
        {"frame_of_reference": True, "pixel_spacing": True},  # as a radiograph: no SliceThickness to give
    ],
    ids=["bare", "patient-orientation", "frame-of-reference-and-spacing"],
)
def test_single_image_without_position_gets_a_seg_placed_by_reference(tmp_path: Path, kind: dict) -> None:
    source = secondary_capture(tmp_path / "sc.dcm", **kind)
    (series,) = list_inputs(source)
    loaded = read_image(series)
    labels = _known_labels(loaded)
    path = write_dicom_seg(labels, loaded, tmp_path / "sc_seg.dcm", CLASS_NAMES, MODEL_ID)
    check_dicom_seg(path)
    seg = hd.seg.segread(path)
    dataset = pydicom.dcmread(path)
    # The General Image module requires PatientOrientation where there is no plane orientation:
    # the source's own (the SEG's frame is the source's pixel grid), empty where it has none.
    assert "PlaneOrientationSequence" not in dataset.SharedFunctionalGroupsSequence[0]
    assert list(dataset.PatientOrientation or []) == list(kind.get("patient_orientation") or [])
    if kind.get("frame_of_reference"):
        assert dataset.FrameOfReferenceUID == pydicom.dcmread(source).FrameOfReferenceUID
        # a Frame of Reference makes SliceThickness required in Pixel Measures; there is none to give
        assert "PixelMeasuresSequence" not in dataset.SharedFunctionalGroupsSequence[0]
    sop = pydicom.dcmread(source).SOPInstanceUID
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop], segment_numbers=[1, 2])
    for number, c in segment_classes(seg).items():
        np.testing.assert_array_equal(masks[..., number - 1], labels == c)


def test_several_images_without_position_are_refused(tmp_path: Path) -> None:
    series_uid = _uid()
    for name in ("a.dcm", "b.dcm"):
        secondary_capture(tmp_path / "sc" / name, series_uid=series_uid)
    with pytest.raises(InputError, match=r"sc: DICOM series .*: a.dcm has no Image Position \(Patient\), so its 2"):
        list_inputs(tmp_path / "sc")


@pytest.mark.parametrize("marker", ["image-type", "private-tag"])
def test_siemens_mosaic_is_refused_in_one_line(tmp_path: Path, capfd, marker: str) -> None:
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    if marker == "image-type":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        reason = r"ImageType ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC"
    else:
        # NumberOfImagesInMosaic of the "SIEMENS MR HEADER" block, here in the block at 0x11
        ds.private_block(0x0019, "ANOTHER CREATOR", create=True)
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", 16)
        assert (0x0019, 0x110A) in ds
        reason = "NumberOfImagesInMosaic 16"
    folder = tmp_path / "mosaic"
    folder.mkdir()
    ds.save_as(folder / "IM0001")
    with pytest.raises(InputError, match=rf"IM0001: Siemens MOSAIC image \({reason}\): its slices are tiled"):
        list_inputs(folder)
    needles = (str(folder / "IM0001"), "Siemens MOSAIC image", "dcm2niix")
    _expect_clean_error(capfd, ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o"),
                                "--input", str(folder)], *needles)


# ---------------------------------------------------------------------------------------------
# the SEG's equipment
# ---------------------------------------------------------------------------------------------
def test_equipment_fields_are_real(tmp_path: Path) -> None:
    """The Enhanced General Equipment module is mandatory in a SEG: the software and its
    version, and the model's weights for a serial number; never a placeholder."""
    write_series(tmp_path / "CT", phantom())
    loaded = read_image(list_inputs(tmp_path / "CT")[0])
    path = write_dicom_seg(_known_labels(loaded), loaded, tmp_path / "seg.dcm", CLASS_NAMES, MODEL_ID)
    seg = pydicom.dcmread(path)
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == ("simmpnet", "Sim-MPNet", __version__)
    assert seg.DeviceSerialNumber == MODEL_ID[:16]
    with pytest.raises(ValueError, match="model_id must name the model"):
        write_dicom_seg(_known_labels(loaded), loaded, tmp_path / "anonymous.dcm", CLASS_NAMES, "")


# ---------------------------------------------------------------------------------------------
# what the terminal shows, and files that are not what their name says
# ---------------------------------------------------------------------------------------------
def test_gdcm_jpeg_precision_lines_go_to_the_debug_log(tmp_path: Path, capfd, caplog) -> None:
    """GDCM tries its 8-bit JPEG decoder on a 12-bit image first, and libjpeg prints
    "Unsupported JPEG data precision 12" on the process's stderr before the 12-bit decoder
    reads it: a line for the debug log, not for the terminal."""
    source = TEST_FILES / "JPGExtended.dcm"  # 12-bit JPEG Extended Secondary Capture
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="simmpnet.data.dicom"):
        loaded = read_image(list_inputs(source)[0])
    assert capfd.readouterr().err == ""
    assert "GDCM: Unsupported JPEG data precision 12" in caplog.messages
    assert loaded.array.shape == (1, 1024, 256) and 0 < loaded.array.max() < 4096  # decoded, 12 bits


def test_text_file_named_dcm_is_not_dicom(tmp_path: Path, capfd, caplog) -> None:
    notes = tmp_path / "notes.dcm"
    notes.write_text("patient list\n")
    not_dicom = "named .dcm but not a DICOM file (no DICM marker after the 128-byte preamble"
    with pytest.raises(InputError) as refused:
        list_inputs(notes)
    assert str(refused.value).startswith(f"{notes}: {not_dicom}") and "ITK" not in str(refused.value)

    # next to a series: skipped with a warning naming it
    uids = write_series(tmp_path / "CT", phantom())
    shutil.copy(notes, tmp_path / "CT" / "notes.dcm")
    with caplog.at_level(logging.WARNING, logger="simmpnet.data.dicom"):
        (series,) = list_inputs(tmp_path / "CT")
    assert series.files == tuple(uids["files"])
    assert any("notes.dcm" in m and "not DICOM files" in m for m in caplog.messages), caplog.messages

    _expect_clean_error(capfd, ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o"),
                                "--input", str(notes)], str(notes), not_dicom)

    # a DICOM data set written without the Part 10 header is still DICOM
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")  # explicit VR little endian
    raw = tmp_path / "raw.dcm"
    with open(raw, "wb") as handle:
        stream = DicomFileLike(handle)
        stream.is_little_endian, stream.is_implicit_VR = True, False
        write_dataset(stream, ds)
    assert raw.read_bytes()[128:132] != b"DICM"
    (series,) = list_inputs(raw)
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(read_image(series).array[0], hounsfield)


# ---------------------------------------------------------------------------------------------
# dciodvfy on a SEG of every kind of series
# ---------------------------------------------------------------------------------------------
def _dciodvfy() -> str:
    """dicom3tools' dciodvfy, installed with apt-get when missing: the check must run in CI."""
    return debian_tool(["dicom3tools"], lambda: shutil.which("dciodvfy"), required=True)


@pytest.mark.slow
def test_dciodvfy_finds_no_error_in_any_kind_of_seg(partial_model: Path, tmp_path: Path) -> None:
    """A SEG of every kind of series the DICOM tests build, each checked by dciodvfy: any
    "Error -" line fails; the warnings are printed (pytest -s shows them)."""
    _dciodvfy()
    segs: dict[str, Path] = {}

    def known(name: str, source: Path | list[Path]) -> None:
        (series,) = list_inputs(source)
        loaded = read_image(series)
        labels = np.zeros(loaded.label_shape, np.uint8)
        labels[:, 8:20, 10:30] = 1  # a block on every slice, another on one, class 2 absent
        labels[-1, 22:30, 20:40] = 3
        segs[name] = write_dicom_seg(labels, loaded, tmp_path / "segs" / f"{name}.dcm", CLASS_NAMES, MODEL_ID)

    write_series(tmp_path / "oblique", phantom())
    assert _predict(partial_model, tmp_path / "oblique", tmp_path / "predicted") == 0
    segs["oblique CT, predicted (classes 1 and 3 only)"] = tmp_path / "predicted" / "oblique_seg.dcm"
    known("oblique CT, every third slice given", write_series(tmp_path / "subset", phantom())["files"][::3])
    known("CT from pydicom's CT_small, 3 slices", pydicom_series("CT_small.dcm", tmp_path / "ct_small"))
    known("MR from pydicom's MR_small, 3 slices", pydicom_series("MR_small.dcm", tmp_path / "mr_small"))
    known("Secondary Capture without position", secondary_capture(tmp_path / "sc.dcm"))
    known("Secondary Capture with frame of reference and spacing",
          secondary_capture(tmp_path / "sc_for.dcm", frame_of_reference=True, pixel_spacing=True))
    known("12-bit JPEG Secondary Capture (pydicom's JPGExtended)", TEST_FILES / "JPGExtended.dcm")

    errors = {}
    for name, path in segs.items():
        found, warnings = dciodvfy_findings(path)
        print(f"dciodvfy {name}: {len(found)} error(s), {len(warnings)} warning(s)")
        for line in found + warnings:
            print(f"    {line}")
        if found:
            errors[name] = found
    assert errors == {}
