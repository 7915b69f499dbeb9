"""A study on a DICOMweb server in, its DICOM-SEG back: `simmpnet predict --dicomweb` against
Debian's Orthanc with its DICOMweb plugin (installed with apt-get when missing), started here
on free ports with authentication on; and the failures that need no server, each one line
before a model is loaded."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import check_dicom_seg, cli_env, debian_tool
from simmpnet.cli import main
from simmpnet.data.dicom_seg import segment_classes
from simmpnet.data.dicomweb import PASSWORD_VARIABLE, TOKEN_VARIABLE, DicomWebServer
from test_dicom import _expect_clean_error, model_dir, phantom, write_series  # noqa: F401 (model_dir: a fixture)

sitk = pytest.importorskip("SimpleITK")

#: Orthanc's users: one that may do everything, one that may only read (the Lua filter below).
USER, PASSWORD = "alice", "correct horse battery staple"
READER, READER_PASSWORD = "reader", "read only"

#: Orthanc refuses every request of READER but GET: STOW-RS refused, as by a read-only account.
READ_ONLY_FILTER = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return method == 'GET' or username ~= '{READER}'
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client(url: str, user: str = USER, password: str = PASSWORD):
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client = DICOMwebClient(url, session=create_session_from_user_pass(user, password))
    client.set_http_retry_params(retry=False)  # the start-up wait below polls by itself
    return client


# ---------------------------------------------------------------------------------------------
# no server needed
# ---------------------------------------------------------------------------------------------
def test_failures_without_a_server_are_one_line_before_the_model_is_loaded(tmp_path: Path, capfd, monkeypatch) -> None:
    """The checkpoint does not exist: each error below comes before the model is loaded, and
    none shows a secret."""
    pytest.importorskip("dicomweb_client")
    out = tmp_path / "out"
    common = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(out), "--study", "1.2.3"]
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"  # nothing listens there
    _expect_clean_error(capfd, [*common, "--dicomweb", url], url, "searching study 1.2.3", "cannot reach the server")

    monkeypatch.setenv(PASSWORD_VARIABLE, PASSWORD)
    with_password = f"http://{USER}:{PASSWORD}@127.0.0.1:8042/dicom-web"
    _expect_clean_error(capfd, [*common, "--dicomweb", with_password], "holds a user or password", PASSWORD_VARIABLE)
    assert PASSWORD not in repr(DicomWebServer(url, USER, PASSWORD)) and "secret" not in repr(DicomWebServer(url, token="secret"))
    monkeypatch.delenv(PASSWORD_VARIABLE)
    _expect_clean_error(capfd, [*common, "--dicomweb", url, "--dicomweb-user", USER], PASSWORD_VARIABLE, "not set")
    _expect_clean_error(capfd, [*common, "--dicomweb", url, "--dicomweb-token"], TOKEN_VARIABLE, "not set")

    _expect_clean_error(capfd, [*common[:-2], "--dicomweb", url, "--study", "1.2/../3"], "'1.2/../3' is not a DICOM UID")
    _expect_clean_error(capfd, [*common[:-2], "--dicomweb", url], "--dicomweb needs --study")
    _expect_clean_error(capfd, [*common, "--input", str(tmp_path), "--store"], "--study, --store: only with --dicomweb")
    skipping = [*common, "--dicomweb", url, "--store", "--skip-existing"]
    _expect_clean_error(capfd, skipping, "skipping existing outputs does not go with storing")
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)  # as if not installed: import raises ImportError
    _expect_clean_error(capfd, [*common, "--dicomweb", url], 'pip install "simmpnet[dicomweb]"')
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------------------------
def _plugin() -> Path | None:
    """The DICOMweb plugin of the orthanc-dicomweb package, where dpkg says it put it."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, encoding="utf-8", errors="replace", check=False)
    except OSError:
        return None
    return next((Path(line) for line in listed.stdout.splitlines() if line.endswith(".so")), None)


def _installed() -> tuple[str, Path] | None:
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    plugin = _plugin()
    return (binary, plugin) if binary and plugin else None


def _orthanc_with_dicomweb() -> tuple[str, Path]:
    """Debian's Orthanc and its DICOMweb plugin, installed with apt-get when missing."""
    return debian_tool(["orthanc", "orthanc-dicomweb"], _installed)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """Orthanc on free ports, its storage in a temporary folder, remote access off and HTTP
    basic authentication on: ``url`` of its DICOMweb service, ``client`` logged in as USER."""
    pytest.importorskip("dicomweb_client")
    import requests

    binary, plugin = _orthanc_with_dicomweb()
    root = tmp_path_factory.mktemp("orthanc")
    (root / "read_only.lua").write_text(READ_ONLY_FILTER)
    http = _free_port()
    config = {
        "Name": "simmpnet-test",
        "HttpPort": http,
        "DicomPort": _free_port(),
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "Plugins": [str(plugin)],
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD, READER: READER_PASSWORD},
        "LuaScripts": [str(root / "read_only.lua")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config, indent=2))
    url = f"http://127.0.0.1:{http}/dicom-web"
    client = _client(url)
    with open(root / "orthanc.log", "w") as log:
        process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.search_for_studies()
                    break
                except requests.exceptions.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
                    time.sleep(0.2)
            yield SimpleNamespace(url=url, client=client)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _upload(orthanc: SimpleNamespace, folder: Path, **changes: str) -> dict:
    """Write a CT series (tests/test_dicom.py) and store it on the server with STOW-RS;
    ``changes`` set attributes of every instance (e.g. PatientID)."""
    import pydicom

    uids = write_series(folder, phantom())
    datasets = [pydicom.dcmread(path) for path in uids["files"]]
    for dataset in datasets:
        for keyword, value in changes.items():
            setattr(dataset, keyword, value)
    orthanc.client.store_instances(datasets)
    return uids


def _seg_series(orthanc: SimpleNamespace, study: str) -> list[str]:
    found = orthanc.client.search_for_series(study, search_filters={"Modality": "SEG"})
    return [item["0020000E"]["Value"][0] for item in found]


@pytest.mark.slow
def test_predict_a_study_from_dicomweb_and_store_the_seg(orthanc, model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """The CLI in a process of its own, as a user runs it: the series retrieved over WADO-RS
    gives the labels the same series gives from files, the SEG stored with STOW-RS is found in
    the study by QIDO-RS and holds those labels; a second run without --store sends nothing
    and leaves the SEG series out."""
    hd = pytest.importorskip("highdicom")
    uids = _upload(orthanc, tmp_path / "CT")
    study, series = uids["study"], uids["series"]
    out = tmp_path / "remote"
    args = [
        sys.executable, "-m", "simmpnet", "predict", "--checkpoint", str(model_dir), "--dicomweb", orthanc.url,
        "--study", study, "--dicomweb-user", USER, "--device", "cpu",
    ]
    env = cli_env(**{PASSWORD_VARIABLE: PASSWORD})
    run = subprocess.run([*args, "--output", str(out), "--store"], capture_output=True, text=True, encoding="utf-8",
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"1 of 1 DICOM-SEG(s) stored in study {study} on {orthanc.url}" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{series}.nii.gz", f"{series}_seg.dcm", "prediction_summary.json"]
    summary_text = (out / "prediction_summary.json").read_text()
    assert PASSWORD not in run.stdout + run.stderr + summary_text
    summary = json.loads(summary_text)
    assert summary["source"] == {"dicomweb": orthanc.url, "study": study, "series": [series], "store": True}
    (outcome,) = summary["inputs"]
    assert outcome["input"] == f"{orthanc.url}/studies/{study}/series/{series}"
    assert outcome["status"] == "written" and outcome["stored"] is True

    # the same series from its files: the same label map, geometry included
    local = tmp_path / "local"
    cpu = ["--device", "cpu"]
    assert main(["--quiet", "predict", "--checkpoint", str(model_dir), "--input", str(tmp_path / "CT"), "--output", str(local), *cpu]) == 0
    remote_map, local_map = sitk.ReadImage(str(out / f"{series}.nii.gz")), sitk.ReadImage(str(local / "CT.nii.gz"))
    labels = sitk.GetArrayFromImage(local_map)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(remote_map), labels)
    assert remote_map.GetOrigin() == local_map.GetOrigin() and remote_map.GetDirection() == local_map.GetDirection()
    assert remote_map.GetSpacing() == local_map.GetSpacing()
    assert len(np.unique(labels)) >= 2, "the model predicts one class everywhere: the comparison would be trivial"

    # the SEG on the server: found by QIDO-RS in the study, pointing to the series, holding the labels
    (seg_series,) = _seg_series(orthanc, study)
    (instance,) = orthanc.client.retrieve_series(study, seg_series)
    seg = hd.seg.Segmentation.from_dataset(instance)
    assert seg.StudyInstanceUID == study and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    check_dicom_seg(out / f"{series}_seg.dcm")  # dciodvfy: the SEG that was sent
    classes = segment_classes(seg)  # segments only for the classes predicted, numbered 1..k
    assert sorted(classes.values()) == [int(c) for c in np.unique(labels) if c > 0]
    numbers = sorted(classes)
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids["sops"], segment_numbers=numbers)
    for k, number in enumerate(numbers):
        np.testing.assert_array_equal(masks[..., k], labels == classes[number], err_msg=f"segment {number}")

    # again without --store: the SEG series is no input, and nothing is sent
    again = subprocess.run([*args, "--output", str(tmp_path / "again")], capture_output=True, text=True,
                           encoding="utf-8", env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "prediction_summary.json").read_text())["source"]["series"] == [series]
    assert _seg_series(orthanc, study) == [seg_series]


@pytest.mark.slow
def test_server_refusals_are_one_line_naming_the_url_and_uids(orthanc, model_dir: Path, tmp_path: Path, capfd, monkeypatch) -> None:  # noqa: F811
    """A wrong password, a study or series that is not there, a study without images: one
    line before the model is loaded (its checkpoint does not exist). A STOW-RS the server
    refuses: the SEG stays in the output folder, the summary says it was not stored."""
    import pydicom

    uids = _upload(orthanc, tmp_path / "CT")
    study = uids["study"]
    missing = ["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "out"),
               "--dicomweb", orthanc.url, "--dicomweb-user", USER]
    monkeypatch.setenv(PASSWORD_VARIABLE, "wrong")
    _expect_clean_error(capfd, [*missing, "--study", study], orthanc.url, study, "HTTP 401", PASSWORD_VARIABLE)
    monkeypatch.setenv(PASSWORD_VARIABLE, PASSWORD)
    _expect_clean_error(capfd, [*missing, "--study", "1.2.3.4"], orthanc.url, "study 1.2.3.4 not found")
    _expect_clean_error(capfd, [*missing, "--study", study, "--series", "1.2.3.4"], study, "series 1.2.3.4 not found")

    # a read-only account: predicted and written, the STOW-RS refused
    monkeypatch.setenv(PASSWORD_VARIABLE, READER_PASSWORD)
    out = tmp_path / "refused"
    store = ["predict", "--checkpoint", str(model_dir), "--output", str(out), "--dicomweb", orthanc.url,
             "--study", study, "--dicomweb-user", READER, "--store", "--device", "cpu"]
    capfd.readouterr()
    assert main(["--quiet", *store]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("simmpnet: failed:") and "STOW-RS): refused (HTTP 403" in err[0], err
    seg_file = out / f"{uids['series']}_seg.dcm"
    assert seg_file.is_file() and _seg_series(orthanc, study) == []
    (outcome,) = json.loads((out / "prediction_summary.json").read_text())["inputs"]
    assert outcome["status"] == "failed" and outcome["stored"] is False and str(seg_file) in outcome["outputs"]

    # that SEG alone in a study of its own: a study without image series; in the first one,
    # the SEG series asked for by UID is no image series
    monkeypatch.setenv(PASSWORD_VARIABLE, PASSWORD)
    seg = pydicom.dcmread(seg_file)
    orthanc.client.store_instances([seg])
    _expect_clean_error(capfd, [*missing, "--study", study, "--series", seg.SeriesInstanceUID], "is a SEG series")
    seg.StudyInstanceUID, seg.SeriesInstanceUID = "1.2.3.4.5", "1.2.3.4.5.1"
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.1.1"
    orthanc.client.store_instances([seg])
    _expect_clean_error(capfd, [*missing, "--study", "1.2.3.4.5"], "study 1.2.3.4.5 holds no image series (only SEG)")
