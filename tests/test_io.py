"""Tests of simmpnet.data.io: format round trips, geometry preservation, refusal of bad input,
atomic writes."""
from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from simmpnet.data import io as sio
from simmpnet.data.io import (
    LoadedImage,
    default_label_path,
    list_inputs,
    read_image,
    write_label_map,
)
from simmpnet.errors import InputError

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")
h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """3 x 3 rotation from angles (radians) about x, y, z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(zooms=(0.7, 0.85, 2.5), angles=(0.3, -0.2, 0.5), offset=(-90.0, 12.5, 40.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = rotation(*angles) @ np.diag(zooms)
    aff[:3, 3] = offset
    return aff


def index_volume(shape=(6, 5, 4)) -> np.ndarray:
    """Every voxel holds a distinct value (its flat index), so voxel correspondence is testable."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, slope: float | None = None) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"test input"
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
        img.header.set_data_dtype(np.int16)
    nib.save(img, str(path))
    return path


def assert_input_error(exc_info: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(exc_info.value)
    assert path.name in msg, msg
    assert "\n" not in msg, msg
    for word in words:
        assert word.lower() in msg.lower(), msg


def folder_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------------------------
# 2-D pictures
# ---------------------------------------------------------------------------------------------
def test_png_grayscale_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(13, 17), dtype=np.uint8)
    src = tmp_path / "slice.png"
    Image.fromarray(pixels, mode="L").save(src)
    loaded = read_image(src)
    assert loaded.kind == "image2d" and loaded.file_format == "PNG"
    assert loaded.array.dtype == np.float32 and loaded.array.shape == (13, 17)
    assert loaded.channel_axis is None and loaded.spacing is None
    np.testing.assert_allclose(loaded.array, pixels / 255.0, atol=1e-7)

    labels = (pixels % 5).astype(np.uint8)
    out = write_label_map(labels, loaded, tmp_path / "out" / "slice.png")
    with Image.open(out) as im:
        # a palette picture: the pixel values are the class ids, shown in the overlay colours
        assert im.mode == "P" and im.size == (17, 13)
        np.testing.assert_array_equal(np.asarray(im), labels)
        palette = im.getpalette()
    from simmpnet.evaluation.report import label_color

    assert palette[:3] == [0, 0, 0]
    assert palette[6:9] == [round(255 * v) for v in label_color(2)]


def test_png_rgb_and_label_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    src = tmp_path / "rgb.png"
    Image.fromarray(pixels, mode="RGB").save(src)
    loaded = read_image(src)
    assert loaded.array.shape == (9, 11, 3) and loaded.channel_axis == -1
    assert loaded.label_shape == (9, 11) and not loaded.is_volume
    np.testing.assert_allclose(loaded.array, pixels / 255.0, atol=1e-7)
    labels = np.zeros((9, 11), np.uint8)
    labels[2:5, 3:8] = 2
    out = write_label_map(labels, loaded, tmp_path / "rgb_label.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), labels)
    with pytest.raises(InputError) as exc:
        write_label_map(np.zeros((9, 11, 3), np.uint8), loaded, tmp_path / "bad.png")
    assert_input_error(exc, tmp_path / "bad.png", "shape")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_gray_and_rgb(tmp_path: Path, mode: str) -> None:
    yy, xx = np.mgrid[0:32, 0:40]
    base = ((xx * 5 + yy * 2) % 256).astype(np.uint8)
    pixels = base if mode == "L" else np.stack([base, 255 - base, base // 2], axis=-1)
    src = tmp_path / "photo.jpg"
    Image.fromarray(pixels, mode=mode).save(src, quality=95)
    loaded = read_image(src)
    assert loaded.file_format == "JPEG"
    assert loaded.array.shape == pixels.shape
    assert 0.0 <= loaded.array.min() and loaded.array.max() <= 1.0
    assert np.abs(loaded.array - pixels / 255.0).mean() < 0.03  # lossy, but close
    labels = (loaded.array.reshape(32, 40, -1)[..., 0] > 0.5).astype(np.uint8)
    out = write_label_map(labels, loaded, default_label_path(loaded, tmp_path / "pred"))
    assert out.name == "photo.png"
    np.testing.assert_array_equal(np.asarray(Image.open(out)), labels)
    with pytest.raises(InputError) as exc:
        write_label_map(labels, loaded, tmp_path / "pred" / "photo.jpg")
    assert_input_error(exc, tmp_path / "pred" / "photo.jpg", ".png")


def test_png_16bit_scaled_and_rgba_alpha_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    src16 = tmp_path / "deep.png"
    Image.fromarray(deep).save(src16)
    loaded16 = read_image(src16)
    np.testing.assert_allclose(loaded16.array, deep / 65535.0, rtol=1e-6)

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    src = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(src)
    with caplog.at_level(logging.WARNING, logger="simmpnet.data.io"):
        loaded = read_image(src)
    assert loaded.array.shape == (4, 5, 3)
    np.testing.assert_allclose(loaded.array[..., 0], 200 / 255.0, atol=1e-7)
    assert any("alpha" in r.getMessage() and "rgba.png" in r.getMessage() for r in caplog.records)


def test_float_tiff_unscaled(tmp_path: Path) -> None:
    values = np.linspace(-3.5, 1000.0, 20, dtype=np.float32).reshape(4, 5)
    src = tmp_path / "ct.tif"
    Image.fromarray(values, mode="F").save(src)
    loaded = read_image(src)
    np.testing.assert_array_equal(loaded.array, values)


# ---------------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_native_axes_and_exact_overlay(tmp_path: Path, ext: str) -> None:
    data = index_volume((6, 5, 4))  # X x Y x Z
    affine = oblique_affine()
    src = save_nifti(tmp_path / f"case_0000{ext}", data, affine)
    loaded = read_image(src)
    assert loaded.kind == "nifti" and loaded.orientation == "native"
    assert loaded.array.shape == (4, 5, 6)  # D x H x W = Z x Y X
    assert loaded.perm == (2, 1, 0) and loaded.flips == (False, False, False)
    for d, h, w in [(0, 0, 0), (3, 1, 5), (2, 4, 1)]:
        assert loaded.array[d, h, w] == data[w, h, d]
    np.testing.assert_allclose(loaded.spacing, (2.5, 0.85, 0.7), rtol=1e-6)

    labels = (loaded.array % 7).astype(np.uint8)
    out_path = default_label_path(loaded, tmp_path / "pred")
    assert out_path.name == f"case{ext}"
    out = write_label_map(labels, loaded, out_path)

    inp, res = nib.load(str(src)), nib.load(str(out))
    assert res.shape == inp.shape
    assert res.get_data_dtype() == np.uint8
    assert np.array_equal(res.affine, inp.affine)
    assert np.array_equal(res.header.get_zooms(), inp.header.get_zooms())
    q_in, qc_in = inp.header.get_qform(coded=True)
    q_out, qc_out = res.header.get_qform(coded=True)
    s_in, sc_in = inp.header.get_sform(coded=True)
    s_out, sc_out = res.header.get_sform(coded=True)
    assert (int(qc_out), int(sc_out)) == (int(qc_in), int(sc_in)) == (1, 2)
    assert np.array_equal(q_out, q_in) and np.array_equal(s_out, s_in)
    # label voxel [i, j, k] lies on input voxel [i, j, k]
    written = np.asarray(res.dataobj)
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written, (data % 7).astype(np.uint8))


def test_nifti_scaling_applied_on_read_and_reset_on_write(tmp_path: Path) -> None:
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    src = save_nifti(tmp_path / "scaled.nii.gz", raw, np.diag([1.0, 1.0, 3.0, 1.0]), slope=2.0)
    loaded = read_image(src)
    np.testing.assert_allclose(loaded.array, np.transpose(raw * 2.0, (2, 1, 0)))
    labels = np.ones(loaded.label_shape, np.uint8)
    out = write_label_map(labels, loaded, tmp_path / "scaled_label.nii.gz")
    res = nib.load(str(out))
    np.testing.assert_array_equal(res.get_fdata(), 1.0)
    slope, inter = res.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)


def test_nifti_ras_orientation_matches_brain_demo_and_inverts(tmp_path: Path) -> None:
    from simmpnet.data.brain_demo import to_dhw

    data = index_volume((5, 6, 7))
    # voxel i -> posterior, j -> inferior-ish (with a 10 degree tilt), k -> left: storage order PIL
    rot = np.array([[0.0, 0.0, -1.2], [-0.9, 0.0, 0.0], [0.0, -2.0, 0.0]])
    aff = np.eye(4)
    aff[:3, :3] = rotation(0.17, 0.0, 0.0) @ rot
    aff[:3, 3] = (10.0, 20.0, -30.0)
    src = save_nifti(tmp_path / "tilted.nii.gz", data, aff)
    loaded = read_image(src, orientation="ras")
    canonical = nib.as_closest_canonical(nib.load(str(src)))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    expected = to_dhw(np.asarray(canonical.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(loaded.array, expected)
    canon_zooms = canonical.header.get_zooms()
    np.testing.assert_allclose(loaded.spacing, (canon_zooms[2], canon_zooms[1], canon_zooms[0]), rtol=1e-6)

    labels = (loaded.array % 11).astype(np.uint8)
    out = write_label_map(labels, loaded, tmp_path / "tilted_label.nii.gz")
    res = nib.load(str(out))
    assert np.array_equal(res.affine, nib.load(str(src)).affine)
    np.testing.assert_array_equal(np.asarray(res.dataobj), (data % 11).astype(np.uint8))


def test_nifti_2d_and_singleton_4d(tmp_path: Path) -> None:
    flat = index_volume((6, 5))
    src = save_nifti(tmp_path / "flat.nii", flat, np.diag([0.5, 0.6, 1.0, 1.0]))
    loaded = read_image(src)
    assert loaded.array.shape == (1, 5, 6)
    out = write_label_map((loaded.array % 3).astype(np.uint8), loaded, tmp_path / "flat_label.nii")
    res = nib.load(str(out))
    assert res.shape == (6, 5)
    np.testing.assert_array_equal(np.asarray(res.dataobj), (flat % 3).astype(np.uint8))

    vol4 = index_volume((4, 3, 2))[..., None]
    src4 = save_nifti(tmp_path / "single.nii.gz", vol4, np.eye(4))
    loaded4 = read_image(src4)
    assert loaded4.array.shape == (2, 3, 4)
    out4 = write_label_map(np.zeros((2, 3, 4), np.uint8), loaded4, tmp_path / "single_label.nii.gz")
    assert nib.load(str(out4)).shape == (4, 3, 2)


# ---------------------------------------------------------------------------------------------
# SimpleITK formats
# ---------------------------------------------------------------------------------------------
def make_sitk_image(shape_dhw=(4, 5, 6)) -> "sitk.Image":
    img = sitk.GetImageFromArray(index_volume(shape_dhw))
    img.SetOrigin((12.5, -40.0, 7.25))
    img.SetSpacing((0.75, 0.9, 2.5))
    img.SetDirection(tuple(rotation(0.2, 0.1, -0.4).reshape(-1)))
    return img


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_sitk_round_trip_keeps_origin_spacing_direction(tmp_path: Path, ext: str) -> None:
    img = make_sitk_image()
    src = tmp_path / f"vol{ext}"
    sitk.WriteImage(img, str(src))
    loaded = read_image(src)
    assert loaded.kind == "sitk" and loaded.file_format == ext[1:]
    np.testing.assert_array_equal(loaded.array, sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(loaded.spacing, (2.5, 0.9, 0.75))
    labels = (loaded.array % 5).astype(np.uint8)
    out = write_label_map(labels, loaded, tmp_path / f"vol_label{ext}")
    res = sitk.ReadImage(str(out))
    assert res.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(res.GetOrigin(), img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(res.GetSpacing(), img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(res.GetDirection(), img.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res), labels)


def test_sitk_and_nifti_agree_in_ras_orientation(tmp_path: Path) -> None:
    img = make_sitk_image((5, 4, 3))
    mha, nii = tmp_path / "same.mha", tmp_path / "same.nii.gz"
    sitk.WriteImage(img, str(mha))
    sitk.WriteImage(img, str(nii))  # SimpleITK converts LPS -> RAS in the NIfTI header
    a, b = read_image(mha, orientation="ras"), read_image(nii, orientation="ras")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    labels = (a.array % 4).astype(np.uint8)
    out = write_label_map(labels, a, tmp_path / "same_label.mha")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out))), (sitk.GetArrayFromImage(img) % 4).astype(np.uint8)
    )


# ---------------------------------------------------------------------------------------------
# npz / h5
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["image", "img"])
@pytest.mark.parametrize("shape", [(7, 8), (3, 7, 8)])
def test_npz_round_trip(tmp_path: Path, key: str, shape: tuple[int, ...]) -> None:
    arr = index_volume(shape) / 100.0
    src = tmp_path / "case.npz"
    np.savez(src, **{key: arr, "label": np.zeros(shape, np.uint8)})
    loaded = read_image(src)
    assert loaded.kind == "npz" and loaded.key == key and loaded.spacing is None
    np.testing.assert_array_equal(loaded.array, arr.astype(np.float32))
    labels = (np.arange(arr.size) % 9).reshape(shape).astype(np.int64)
    out = write_label_map(labels, loaded, tmp_path / "pred" / "case.npz")
    with np.load(out) as res:
        assert res["label"].dtype == np.uint8
        np.testing.assert_array_equal(res["label"], labels)


def test_h5_round_trip_with_spacing(tmp_path: Path) -> None:
    arr = index_volume((3, 6, 5))
    src = tmp_path / "case0001.npy.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("image", data=arr)
        f.attrs["spacing"] = np.array([3.0, 0.8, 0.8])
    loaded = read_image(src)
    assert loaded.kind == "h5" and loaded.spacing == (3.0, 0.8, 0.8)
    labels = (arr % 4).astype(np.uint8)
    out = write_label_map(labels, loaded, tmp_path / "case0001_label.h5")
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["label"][()], labels)
        np.testing.assert_allclose(f.attrs["spacing"], (3.0, 0.8, 0.8))


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A PNG signature + IHDR declaring ``width x height`` + a tiny IDAT, no real pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def valid_nifti_gz_bytes(tmp_path: Path) -> bytes:
    p = save_nifti(tmp_path / "ok_src.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    data = p.read_bytes()
    p.unlink()
    return data


def _build_bad(tmp_path: Path, case: str) -> Path:
    rng = np.random.default_rng(0)
    if case == "missing":
        return tmp_path / "nothere.nii.gz"
    if case == "folder":
        p = tmp_path / "afolder.png"
        p.mkdir()
        return p
    if case.startswith("zero"):
        p = tmp_path / f"empty{case.split(':')[1]}"
        p.write_bytes(b"")
        return p
    if case == "unknown_ext":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
        return p
    if case == "truncated_nii_gz":
        data = valid_nifti_gz_bytes(tmp_path)
        p = tmp_path / "cut.nii.gz"
        p.write_bytes(data[: len(data) // 2])
        return p
    if case == "truncated_nii":
        p = save_nifti(tmp_path / "cut.nii", rng.random((20, 20, 20)).astype(np.float32), np.eye(4))
        p.write_bytes(p.read_bytes()[:2000])
        return p
    if case == "truncated_png":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
        p = tmp_path / "cut.png"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        return p
    if case == "truncated_jpg":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
        p = tmp_path / "cut.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        return p
    if case == "truncated_mha":
        p = tmp_path / "cut.mha"
        sitk.WriteImage(make_sitk_image((8, 8, 8)), str(p))
        p.write_bytes(p.read_bytes()[:-1000])
        return p
    if case.startswith("magic"):
        ext = case.split(":")[1]
        p = tmp_path / f"garbage{ext}"
        p.write_bytes(b"this is not an image at all, just text " * 20)
        return p
    if case == "nan_nifti":
        vol = rng.random((4, 4, 4)).astype(np.float32)
        vol[1, 2, 3] = np.nan
        return save_nifti(tmp_path / "nan.nii.gz", vol, np.eye(4))
    if case == "inf_npz":
        arr = np.ones((5, 5), np.float32)
        arr[0, 0] = np.inf
        p = tmp_path / "inf.npz"
        np.savez(p, image=arr)
        return p
    if case == "nan_h5":
        p = tmp_path / "nan.h5"
        arr = np.ones((2, 5, 5), np.float64)
        arr[1, 1, 1] = np.nan
        with h5py.File(p, "w") as f:
            f.create_dataset("image", data=arr)
        return p
    if case == "4d_nifti":
        return save_nifti(tmp_path / "series.nii.gz", rng.random((4, 4, 4, 3)).astype(np.float32), np.eye(4))
    if case == "1d_npz":
        p = tmp_path / "line.npz"
        np.savez(p, image=np.arange(10.0))
        return p
    if case == "4d_npz":
        p = tmp_path / "four.npz"
        np.savez(p, image=np.zeros((2, 2, 2, 2)))
        return p
    if case == "empty_npz":
        p = tmp_path / "nothing.npz"
        np.savez(p, image=np.zeros((0, 5)))
        return p
    if case == "object_npz":
        p = tmp_path / "objects.npz"
        np.savez(p, image=np.array([{"a": 1}, None], dtype=object))
        return p
    if case == "nokey_npz":
        p = tmp_path / "nokey.npz"
        np.savez(p, data=np.zeros((3, 3)))
        return p
    if case == "npy_as_npz":
        p = tmp_path / "bare.npz"
        with open(p, "wb") as handle:
            np.save(handle, np.zeros((3, 3)))
        return p
    if case == "nokey_h5":
        p = tmp_path / "nokey.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("volume", data=np.zeros((3, 3)))
        return p
    if case == "group_h5":
        p = tmp_path / "group.h5"
        with h5py.File(p, "w") as f:
            f.create_group("image")
        return p
    if case == "string_h5":
        p = tmp_path / "strings.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("image", data=np.array([b"ab", b"cd"] * 4).reshape(2, 4))
        return p
    if case == "huge_png":
        p = tmp_path / "huge.png"
        p.write_bytes(png_declaring(20000, 20000))
        return p
    if case == "huge_nifti":
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((2048, 2048, 2048))
        hdr.set_data_dtype(np.uint8)
        p = tmp_path / "huge.nii"
        p.write_bytes(hdr.binaryblock + b"\x00" * 4)
        return p
    if case == "huge_h5":
        p = tmp_path / "huge.h5"
        with h5py.File(p, "w") as f:  # a chunked, never-written dataset: tiny file, huge shape
            f.create_dataset("image", shape=(1024, 1024, 1024), dtype="f4", chunks=(1, 64, 64))
        return p
    if case == "multipage_tiff":
        p = tmp_path / "pages.tif"
        frames = [Image.fromarray(np.full((4, 4), i, np.uint8)) for i in range(3)]
        frames[0].save(p, save_all=True, append_images=frames[1:])
        return p
    if case == "vector_mha":
        p = tmp_path / "rgb.mha"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True), str(p))
        return p
    raise AssertionError(case)


BAD_CASES = {
    "missing": ("not found",),
    "folder": ("folder",),
    "zero:.png": ("empty",),
    "zero:.nii.gz": ("empty",),
    "zero:.nii": ("empty",),
    "zero:.npz": ("empty",),
    "zero:.h5": ("empty",),
    "zero:.mha": ("empty",),
    "unknown_ext": ("extension",),
    "truncated_nii_gz": ("nifti",),
    "truncated_nii": ("nifti",),
    "truncated_png": ("truncated",),
    "truncated_jpg": ("truncated",),
    "truncated_mha": ("corrupt",),
    "magic:.png": ("magic",),
    "magic:.jpg": ("magic",),
    "magic:.nii": ("nifti",),
    "magic:.nii.gz": ("nifti",),
    "magic:.npz": ("npz",),
    "magic:.h5": ("hdf5",),
    "magic:.mha": ("magic",),
    "magic:.nrrd": ("magic",),
    "nan_nifti": ("nan",),
    "inf_npz": ("infinite",),
    "nan_h5": ("nan",),
    "4d_nifti": ("3 volumes",),
    "1d_npz": ("shape (10,)",),
    "4d_npz": ("shape (2, 2, 2, 2)",),
    "empty_npz": ("empty",),
    "object_npz": ("pickled",),
    "nokey_npz": ("'image'",),
    "npy_as_npz": (".npy",),
    "nokey_h5": ("'image'",),
    "group_h5": ("group",),
    "string_h5": ("numeric",),
    "huge_png": ("limit",),
    "huge_nifti": ("8589934592 voxels", "limit"),
    "huge_h5": ("voxels", "limit"),
    "multipage_tiff": ("3 frames",),
    "vector_mha": ("components",),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = _build_bad(tmp_path, case)
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert_input_error(exc, path, *BAD_CASES[case])


def test_max_pixels_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(src)
    assert read_image(src, max_pixels=10_000).array.shape == (100, 100)
    # refused from the header: decoding must never start (file-backed pictures decode in ImageFile.load)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded despite the limit"))
    with pytest.raises(InputError) as exc:
        read_image(src, max_pixels=9_999)
    assert_input_error(exc, src, "10000 pixels", "limit")


def test_bad_orientation_argument(tmp_path: Path) -> None:
    src = save_nifti(tmp_path / "v.nii", index_volume((2, 2, 2)), np.eye(4))
    with pytest.raises(InputError) as exc:
        read_image(src, orientation="LPS")
    assert_input_error(exc, src, "orientation")


# ---------------------------------------------------------------------------------------------
# bad label maps and failing writes
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def png_reference(tmp_path: Path) -> LoadedImage:
    src = tmp_path / "in" / "ref.png"
    src.parent.mkdir()
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(src)
    return read_image(src)


@pytest.mark.parametrize(
    "labels, word",
    [
        (np.zeros((7, 6), np.uint8), "shape"),
        (np.full((6, 7), 300, np.int32), "[0, 255]"),
        (np.full((6, 7), -1, np.int16), "[0, 255]"),
        (np.full((6, 7), 0.5), "whole numbers"),
        (np.full((6, 7), "a"), "dtype"),
    ],
)
def test_bad_label_maps_refused_and_nothing_written(tmp_path: Path, png_reference: LoadedImage, labels, word) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InputError) as exc:
        write_label_map(labels, png_reference, out_dir / "ref.png")
    assert_input_error(exc, out_dir / "ref.png", word)
    assert folder_names(out_dir) == set()


def test_refuses_to_overwrite_input(png_reference: LoadedImage) -> None:
    before = png_reference.path.read_bytes()
    with pytest.raises(InputError) as exc:
        write_label_map(np.zeros((6, 7), np.uint8), png_reference, png_reference.path)
    assert_input_error(exc, png_reference.path, "overwrite")
    assert png_reference.path.read_bytes() == before


def _reference_of(kind: str, folder: Path) -> tuple[LoadedImage, str]:
    if kind == "png":
        p = folder / "r.png"
        Image.fromarray(np.zeros((6, 7), np.uint8)).save(p)
        return read_image(p), ".png"
    if kind == "nifti":
        return read_image(save_nifti(folder / "r.nii.gz", index_volume((4, 5, 6)), oblique_affine())), ".nii.gz"
    if kind == "mha":
        p = folder / "r.mha"
        sitk.WriteImage(make_sitk_image(), str(p))
        return read_image(p), ".mha"
    if kind == "h5":
        p = folder / "r.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("image", data=np.zeros((2, 3, 4)))
        return read_image(p), ".h5"
    p = folder / "r.npz"
    np.savez(p, image=np.zeros((3, 4)))
    return read_image(p), ".npz"


@pytest.mark.parametrize("kind", ["png", "nifti", "mha", "h5", "npz"])
def test_failed_replace_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    ref, ext = _reference_of(kind, in_dir)
    target = out_dir / f"pred{ext}"
    target.write_bytes(b"previous result")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio.os, "replace", broken_replace)
    with pytest.raises(InputError) as exc:
        write_label_map(np.ones(ref.label_shape, np.uint8), ref, target)
    assert_input_error(exc, target, "cannot write", "no space left")
    assert folder_names(out_dir) == {target.name}  # no temporary file left behind
    assert target.read_bytes() == b"previous result"  # old content untouched
    monkeypatch.undo()
    write_label_map(np.ones(ref.label_shape, np.uint8), ref, target)  # works again
    assert folder_names(out_dir) == {target.name}
    assert target.read_bytes() != b"previous result"


def test_failing_library_writer_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _ = _reference_of("nifti", tmp_path)
    out_dir = tmp_path / "out"

    def broken_save(img, filename):
        Path(filename).write_bytes(b"half")
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(InputError) as exc:
        write_label_map(np.zeros(ref.label_shape, np.uint8), ref, out_dir / "lab.nii.gz")
    assert_input_error(exc, out_dir / "lab.nii.gz", "disk vanished")
    assert folder_names(out_dir) == set()


def test_unwritable_target_folder(tmp_path: Path, png_reference: LoadedImage) -> None:
    # A file where the output folder should be: the write fails for root too.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    before = folder_names(tmp_path)
    with pytest.raises(InputError) as exc:
        write_label_map(np.zeros((6, 7), np.uint8), png_reference, blocker / "x.png")
    assert_input_error(exc, blocker / "x.png", "cannot write")
    assert folder_names(tmp_path) == before


def test_written_file_has_normal_permissions(tmp_path: Path, png_reference: LoadedImage) -> None:
    out = write_label_map(np.zeros((6, 7), np.uint8), png_reference, tmp_path / "perm.png")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_output_extension_must_suit_reference(tmp_path: Path) -> None:
    ref, _ = _reference_of("npz", tmp_path)
    for name in ("x.nii.gz", "x.png", "x"):
        with pytest.raises(InputError) as exc:
            write_label_map(np.zeros(ref.label_shape, np.uint8), ref, tmp_path / name)
        assert_input_error(exc, tmp_path / name, "use")
    mhd = tmp_path / "v.mhd"
    sitk.WriteImage(make_sitk_image(), str(mhd))
    loaded = read_image(mhd)
    assert default_label_path(loaded, tmp_path / "o").name == "v.mha"
    with pytest.raises(InputError):
        write_label_map(np.zeros(loaded.label_shape, np.uint8), loaded, tmp_path / "o" / "v.mhd")


# ---------------------------------------------------------------------------------------------
# listing inputs
# ---------------------------------------------------------------------------------------------
def test_list_inputs(tmp_path: Path) -> None:
    names = ["case_0001_0000.nii.gz", "b.png", "a.npz", "C.h5", "z.mha", "img.JPG"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".b.png.tmp123.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"x")
    found = list_inputs(tmp_path)
    assert [p.name for p in found] == sorted(names)
    assert list_inputs(tmp_path / "b.png") == [tmp_path / "b.png"]
    for bad in (tmp_path / "notes.txt", tmp_path / "absent", tmp_path / "sub" / "x"):
        with pytest.raises(InputError) as exc:
            list_inputs(bad)
        assert bad.name in str(exc.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as exc:
        list_inputs(empty)
    assert_input_error(exc, empty, "no supported")
