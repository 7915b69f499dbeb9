"""The embedded brain-lobes demo, prepared from the real mricron-data files.

The source files are fetched for real (installed package, cache, or `apt-get download`);
if that fails these tests fail: the demo is the default data of the package.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from simmpnet.data import SynapseSliceDataset, SynapseVolumeDataset
from simmpnet.data import brain_demo as bd
from simmpnet.errors import InputError


@pytest.fixture(scope="session")
def template_dir() -> Path:
    """Folder with the verified ch2.nii.gz and aal.nii.gz (default cache, or installed)."""
    return bd.fetch_mricron_templates()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory, template_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("brain_demo")
    return bd.prepare_brain_demo(out, cache_dir=template_dir)


@pytest.fixture(scope="session")
def manifest(demo_root: Path) -> dict:
    return json.loads((demo_root / "dataset.json").read_text())


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln]


# ---------------------------------------------------------------- class merge and split
@pytest.mark.parametrize(
    ("aal", "cls"),
    [
        (0, 0),
        (1, 1),  # Precentral_L
        (19, 1),  # Supp_Motor_Area_L
        (28, 1),  # Rectus_R
        (29, 2),  # Insula_L
        (35, 2),  # Cingulum_Post_L
        (37, 3),  # Hippocampus_L
        (42, 3),  # Amygdala_R
        (43, 4),  # Calcarine_L
        (56, 4),  # Fusiform_R
        (57, 5),  # Postcentral_L
        (67, 5),  # Precuneus_L
        (70, 5),  # Paracentral_Lobule_R
        (71, 6),  # Caudate_L
        (78, 6),  # Thalamus_R
        (79, 7),  # Heschl_L
        (90, 7),  # Temporal_Inf_R
        (91, 8),  # Cerebelum_Crus1_L
        (108, 8),  # Cerebelum_10_R
        (109, 8),  # Vermis_1_2
        (116, 8),  # Vermis_10
    ],
)
def test_merge_table_hand_picked(aal: int, cls: int) -> None:
    assert bd.merge_aal_labels(np.array([aal]))[0] == cls
    assert bd.CLASS_NAMES[cls] == bd.CLASS_NAMES[bd.aal_lookup_table()[aal]]


def test_merge_is_vectorised_and_covers_every_label() -> None:
    aal = np.arange(117).reshape(9, 13)
    merged = bd.merge_aal_labels(aal)
    assert merged.shape == aal.shape and merged.dtype == np.uint8
    counts = np.bincount(merged.ravel(), minlength=9)
    assert counts.tolist() == [1, 28, 8, 6, 14, 14, 8, 12, 26]


@pytest.mark.parametrize("bad", [117, -1, 200])
def test_merge_rejects_values_outside_aal(bad: int) -> None:
    with pytest.raises(InputError, match="0..116"):
        bd.merge_aal_labels(np.array([[0, bad]]), source="x.nii.gz")


def test_split_rule_slabs_of_ten() -> None:
    slabs = bd.split_slabs(list(range(100, 246))[::-1])  # given unsorted: sorted first
    assert len(slabs) == 15
    assert [s.index for s in slabs if s.split == "test"] == [2, 7, 12]
    assert [len(s.z) for s in slabs] == [10] * 14 + [6]
    assert slabs[0].z == tuple(range(100, 110)) and slabs[2].z == tuple(range(120, 130))
    assert slabs[12].name == "brain_slab12"


# ---------------------------------------------------------------- fetching
def test_fetch_fails_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        bd.fetch_mricron_templates(tmp_path / "empty", use_system=False, allow_download=False)
    msg = str(err.value)
    assert "apt-get install mricron-data" in msg and str(tmp_path / "empty") in msg
    assert "\n" not in msg


def test_fetch_rejects_wrong_hash(tmp_path: Path, template_dir: Path) -> None:
    shutil.copy(template_dir / "aal.nii.gz", tmp_path / "aal.nii.gz")
    (tmp_path / "ch2.nii.gz").write_bytes(b"not the real file")
    with pytest.raises(InputError, match="SHA-256"):
        bd.fetch_mricron_templates(tmp_path, use_system=False, allow_download=False)


def test_fetch_accepts_copied_files(tmp_path: Path, template_dir: Path) -> None:
    for name in ("ch2.nii.gz", "aal.nii.gz"):
        shutil.copy(template_dir / name, tmp_path / name)
    assert bd.fetch_mricron_templates(tmp_path, use_system=False, allow_download=False) == tmp_path


def _ar_member(name: str, payload: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
    return header + payload + (b"\n" if len(payload) % 2 else b"")


def test_extract_deb_without_dpkg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in (("./usr/share/mricron/templates/aal.nii.gz", b"abc"), ("./etc/other", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = tmp_path / "pkg.deb"
    deb.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("data.tar.xz", buf.getvalue()))
    bd.extract_deb_members(deb, ["usr/share/mricron/templates/aal.nii.gz"], tmp_path / "x")
    assert (tmp_path / "x/usr/share/mricron/templates/aal.nii.gz").read_bytes() == b"abc"
    assert not (tmp_path / "x/etc").exists()
    with pytest.raises(InputError, match="lacks"):
        bd.extract_deb_members(deb, ["usr/share/missing"], tmp_path / "y")


# ---------------------------------------------------------------- prepared data
def test_manifest(manifest: dict) -> None:
    assert manifest["n_classes"] == 9 and manifest["class_names"] == list(bd.CLASS_NAMES)
    assert manifest["spacing"] == [1.0, 1.0, 1.0]
    assert manifest["sources"]["ch2.nii.gz"]["sha256"] == bd.SOURCE_SHA256["ch2.nii.gz"]
    assert manifest["sources"]["aal.nii.gz"]["sha256"] == bd.SOURCE_SHA256["aal.nii.gz"]
    cases = manifest["cases"]
    # Every labelled axial slice is used once, in z order, in blocks of 10.
    assert [c["name"] for c in cases] == [f"brain_slab{i:02d}" for i in range(len(cases))]
    assert all(c["n_slices"] == 10 for c in cases[:-1]) and 1 <= cases[-1]["n_slices"] <= 10
    assert all(b["z_first"] == a["z_first"] + 10 for a, b in zip(cases, cases[1:], strict=False))
    assert [i for i, c in enumerate(cases) if c["split"] == "test"] == [i for i in range(len(cases)) if i % 5 == 2]


def test_lists_match_files_and_split(demo_root: Path, manifest: dict) -> None:
    train = _lines(demo_root / "lists/train.txt")
    test = _lines(demo_root / "lists/test_vol.txt")
    # Every slab is on disk as slices and as a volume (the folds test each once); the fixed
    # split lists a part of them.
    every_slice = _lines(demo_root / "lists/all.txt")
    every_slab = _lines(demo_root / "lists/all_vol.txt")
    assert every_slab == [c["name"] for c in manifest["cases"]]
    assert len(every_slice) == manifest["n_slices"] == sum(c["n_slices"] for c in manifest["cases"])
    assert sorted(p.name for p in (demo_root / "train_npz").iterdir()) == sorted(f"{n}.npz" for n in every_slice)
    assert sorted(p.name for p in (demo_root / "test_vol_h5").iterdir()) == sorted(f"{n}.npy.h5" for n in every_slab)
    assert set(train) < set(every_slice) and set(test) < set(every_slab)
    test_cases = [c["name"] for c in manifest["cases"] if c["split"] == "test"]
    train_counts = {c["name"]: c["n_slices"] for c in manifest["cases"] if c["split"] == "train"}
    assert test == test_cases and len(test) >= 2
    assert len(train) == sum(train_counts.values()) == manifest["n_train_slices"]
    assert {n.rsplit("_slice", 1)[0] for n in train} == set(train_counts)
    assert not set(test) & {n.rsplit("_slice", 1)[0] for n in train}


def test_train_slices_on_disk(demo_root: Path) -> None:
    names = _lines(demo_root / "lists/train.txt")
    seen = np.zeros(9, dtype=bool)
    for name in names:
        with np.load(demo_root / "train_npz" / f"{name}.npz") as f:
            assert set(f.files) == {"image", "label"}
            image, label = f["image"], f["label"]
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (217, 181)
        assert 0.0 <= image.min() and image.max() <= 1.0 and np.isfinite(image).all()
        assert label.max() <= 8 and label.any()
        seen[np.unique(label)] = True
    assert seen.all(), "every class appears in the training slices"


def test_test_volumes_on_disk(demo_root: Path) -> None:
    for name in _lines(demo_root / "lists/test_vol.txt"):
        with h5py.File(demo_root / "test_vol_h5" / f"{name}.npy.h5", "r") as f:
            image, label = f["image"][()], f["label"][()]
            spacing = tuple(f.attrs["spacing"])
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.ndim == 3 and image.shape == label.shape and 1 <= image.shape[0] <= 10
        assert image.shape[1:] == (217, 181)
        assert 0.0 <= image.min() and image.max() <= 1.0 and label.max() <= 8
        assert spacing == (1.0, 1.0, 1.0)


def test_slices_match_source_and_are_upright(demo_root: Path, manifest: dict, template_dir: Path) -> None:
    t1, aal, _ = bd.load_brain_volumes(template_dir)
    case = next(c for c in manifest["cases"] if c["split"] == "train" and c["z_first"] > 60)
    with np.load(demo_root / "train_npz" / f"{case['name']}_slice003.npz") as f:
        image, label = f["image"], f["label"]
    z = case["z_first"] + 3
    np.testing.assert_array_equal(label, bd.merge_aal_labels(aal[z]))
    # The image is the same slice: monotone in the T1 intensity inside the clip range.
    inside = (image > 0.05) & (image < 0.95)
    assert np.corrcoef(image[inside], t1[z][inside])[0, 1] > 0.999
    # Face up: frontal lobe (1) above occipital lobe (4) in the rows of a mid-brain slice.
    rows = np.arange(label.shape[0])[:, None]
    frontal_row = (rows * (label == 1)).sum() / (label == 1).sum()
    occipital_row = (rows * (label == 4)).sum() / (label == 4).sum()
    assert frontal_row < occipital_row
    # D runs inferior -> superior: cerebellum low, parietal high.
    z_of = lambda c: np.flatnonzero((bd.merge_aal_labels(aal) == c).any(axis=(1, 2))).mean()  # noqa: E731
    assert z_of(8) < z_of(5)


def test_readers_on_demo(demo_root: Path) -> None:
    ds = SynapseSliceDataset(demo_root, n_classes=9)
    item = ds[0]
    assert item["image"].shape == (1, 217, 181) and item["label"].shape == (217, 181)
    vols = SynapseVolumeDataset(demo_root, n_classes=9)
    assert len(vols) == len(_lines(demo_root / "lists/test_vol.txt"))
    assert vols[0]["spacing"] == (1.0, 1.0, 1.0)


def test_idempotent_no_rewrite(demo_root: Path, template_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()}
    assert bd.prepare_brain_demo(demo_root, cache_dir=template_dir) == demo_root
    after = {p: p.stat().st_mtime_ns for p in demo_root.rglob("*") if p.is_file()}
    assert after == before


def test_redo_when_incomplete_and_no_temp_files(tmp_path: Path, template_dir: Path) -> None:
    out = bd.prepare_brain_demo(tmp_path / "demo", cache_dir=template_dir)
    victim = next((out / "train_npz").iterdir())
    victim.unlink()
    (out / "train_npz" / "brain_slab99_slice000.npz").write_bytes(b"stale")
    bd.prepare_brain_demo(out, cache_dir=template_dir)
    assert victim.is_file()
    assert not (out / "train_npz" / "brain_slab99_slice000.npz").exists()
    assert not [p for p in out.rglob(".*")]


def test_refuses_foreign_output_folder(tmp_path: Path, template_dir: Path) -> None:
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "train_npz" / "case0005_slice000.npz").write_bytes(b"synapse")
    with pytest.raises(InputError, match="case0005_slice000.npz"):
        bd.prepare_brain_demo(tmp_path, cache_dir=template_dir)


def test_fetch_prefers_installed_package(tmp_path: Path, template_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "usr_share_mricron_templates"
    system.mkdir()
    for name in ("ch2.nii.gz", "aal.nii.gz"):
        shutil.copy(template_dir / name, system / name)
    monkeypatch.setattr(bd, "SYSTEM_TEMPLATE_DIR", system)
    assert bd.fetch_mricron_templates(tmp_path / "unused_cache", allow_download=False) == system
    assert not (tmp_path / "unused_cache").exists()
