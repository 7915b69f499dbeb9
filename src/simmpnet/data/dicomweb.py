"""A study on a DICOMweb server as prediction input, and the place its DICOM-SEGs go back to.

`simmpnet.predict.predict_paths` given a `DicomWebStudy` finds the study's image
series with QIDO-RS, retrieves their instances with WADO-RS into a temporary folder, one
folder per series named after its SeriesInstanceUID, and reads each folder as a folder of
files is read (`simmpnet.data.io.list_inputs`, `simmpnet.data.dicom`): the same
checks, the same volume, so the same labels. With `DicomWebStudy.store`, every
DICOM-SEG written is sent back with STOW-RS; otherwise nothing is sent: QIDO-RS and WADO-RS
only read.

Series whose Modality holds no image to segment (`NON_IMAGE_MODALITIES`: structured
reports, presentation states, segmentations ...) are left out, so that a study predicted
twice is not predicted on the SEG stored the first time.

Credentials never come from the command line: a password or a bearer token is read from an
environment variable (`PASSWORD_VARIABLE`, `TOKEN_VARIABLE`), and a URL holding a
user or a password is refused, so that neither ends up in a process list, a shell history, the
log, or the batch summary (which records the URL and the command). Every failure of the
server is one `DicomWebError` line naming the URL and what was asked.

The HTTP is dicomweb-client's, an optional dependency: ``pip install "simmpnet[dicomweb]"``.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..errors import DicomWebError, InputError, SimMPNetError, one_line

if TYPE_CHECKING:  # the command line's parser reads this module's names; the readers load when a study is retrieved
    from .dicom import DicomSeries

__all__ = [
    "NON_IMAGE_MODALITIES",
    "PASSWORD_VARIABLE",
    "TOKEN_VARIABLE",
    "DicomWebServer",
    "DicomWebStudy",
    "RetrievedStudy",
    "require_dicomweb_client",
]

logger = logging.getLogger(__name__)

#: The environment variable holding the password of `DicomWebServer.user`.
PASSWORD_VARIABLE = "SIMMPNET_DICOMWEB_PASSWORD"
#: The environment variable holding the bearer token (``DicomWebServer.from_environment(token=True)``).
TOKEN_VARIABLE = "SIMMPNET_DICOMWEB_TOKEN"

#: Modalities of series without an image to segment (DICOM PS3.3 C.7.3.1.1.1): documents,
#: reports, presentation states, registrations, radiotherapy objects, waveforms and
#: segmentations.
NON_IMAGE_MODALITIES: frozenset[str] = frozenset({
    "AU", "DOC", "ECG", "FID", "HD", "KO", "PLAN", "PR", "REG", "RTDOSE", "RTPLAN", "RTRECORD",
    "RTSTRUCT", "SEG", "SR",
})

#: Seconds to wait for a connection, and for each answer of the server: a large series or a
#: server transcoding it can take minutes to start sending.
_TIMEOUT_S: tuple[float, float] = (10.0, 300.0)

#: A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters. UIDs become parts of the
#: request URLs, so nothing else may pass.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_T = TypeVar("_T")


def require_dicomweb_client() -> Any:
    """The dicomweb_client module, or a one-line error saying how to install it."""
    try:
        import dicomweb_client
    except ImportError as exc:
        raise SimMPNetError('reading from a DICOMweb server needs dicomweb-client: pip install "simmpnet[dicomweb]"') from exc
    return dicomweb_client


def _check_uid(uid: str, what: str) -> None:
    if not (_UID.match(uid) and len(uid) <= 64):
        raise InputError(f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")


@dataclass(frozen=True)
class DicomWebServer:
    """A DICOMweb service and how to authenticate to it.

    Attributes:
        url: the base URL of the service, under which QIDO-RS, WADO-RS and STOW-RS answer
            (``http://host:8042/dicom-web`` for Orthanc); http or https, without a user or a
            password.
        user: HTTP basic authentication as this user, with ``password``.
        password: the password of ``user`` (not shown in the object's repr).
        token: a bearer token sent as ``Authorization: Bearer ...`` (not shown in the repr).
        ca_bundle: a PEM file of the certificate authorities that verify an https server's
            certificate (default: those of certifi, which requests uses). Certificates are
            always verified.

    Raises:
        InputError: a URL that is not http(s), holds a user, password, query or fragment; a
            user without a password; both a user and a token; a CA bundle that is not a file.
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: Path | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None:
            # Not the URL itself in the message: it holds the password.
            raise InputError(
                f"the DICOMweb URL holds a user or password; give the user with --dicomweb-user and the password in "
                f"the environment variable {PASSWORD_VARIABLE}"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{self.url}: not a DICOMweb URL (http:// or https://, then the server and path)")
        if parts.query or parts.fragment:
            raise InputError(f"{self.url}: a DICOMweb base URL has no query or fragment")
        if self.user is not None and not self.password:
            raise InputError(f"DICOMweb user {self.user!r} without a password (set {PASSWORD_VARIABLE})")
        if self.user is not None and self.token is not None:
            raise InputError("DICOMweb authentication: a user and password, or a bearer token, not both")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise InputError(f"{self.ca_bundle}: CA bundle not found")

    @classmethod
    def from_environment(
        cls, url: str, *, user: str | None = None, token: bool = False, ca_bundle: str | os.PathLike | None = None
    ) -> DicomWebServer:
        """The server at ``url``, the secrets read from the environment.

        Args:
            url: see `url`.
            user: HTTP basic authentication as ``user``, the password read from
                `PASSWORD_VARIABLE`.
            token: bearer token authentication, the token read from `TOKEN_VARIABLE`.
            ca_bundle: see `ca_bundle`.

        Raises:
            InputError: the variable needed is unset or empty, or the checks of the class.
        """
        password = secret = None
        if user is not None:
            password = os.environ.get(PASSWORD_VARIABLE) or None
            if password is None:
                raise InputError(f"--dicomweb-user {user}: the password is read from {PASSWORD_VARIABLE}, which is not set")
        if token:
            secret = os.environ.get(TOKEN_VARIABLE) or None
            if secret is None:
                raise InputError(f"--dicomweb-token: the token is read from {TOKEN_VARIABLE}, which is not set")
        return cls(url, user, password, secret, Path(ca_bundle) if ca_bundle is not None else None)

    @property
    def base(self) -> str:
        """`url` without a trailing slash."""
        return self.url.rstrip("/")

    def client(self) -> Any:
        """A ``dicomweb_client.DICOMwebClient`` for the service, authenticated as configured.

        Raises:
            SimMPNetError: dicomweb-client is not installed.
            InputError: a URL dicomweb-client cannot take apart.
        """
        require_dicomweb_client()
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import add_certs_to_session, create_session, create_session_from_user_pass

        session = create_session_from_user_pass(self.user, self.password) if self.user else create_session()
        if self.ca_bundle is not None:
            add_certs_to_session(session, ca_bundle=str(self.ca_bundle))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            return DICOMwebClient(self.base, session=session, headers=headers, timeout=_TIMEOUT_S)
        except ValueError as exc:  # a URL dicomweb-client cannot take apart
            raise InputError(f"{self.url}: not a DICOMweb URL ({one_line(exc)})") from exc

    def _call(self, what: str, request: Callable[[], _T]) -> _T:
        """Run ``request`` (dicomweb-client calls); a network or HTTP failure, or an answer
        that is not DICOM, becomes one `DicomWebError` line: `url`, ``what`` was
        asked, and what went wrong."""
        import requests
        from retrying import RetryError  # dicomweb-client's retries

        where = f"{self.base}: {what}"
        try:
            return request()
        except requests.exceptions.SSLError as exc:
            raise DicomWebError(
                f"{where}: the server's TLS certificate cannot be verified ({_reason(exc)}); give its certificate "
                "authority with --dicomweb-ca-bundle"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise DicomWebError(f"{where}: cannot reach the server ({_reason(exc)})") from exc
        except requests.exceptions.Timeout as exc:
            raise DicomWebError(f"{where}: no answer from the server") from exc
        except requests.exceptions.HTTPError as exc:
            response = exc.response
            if response is None:
                raise DicomWebError(f"{where}: refused ({one_line(exc)})") from exc
            hint = {
                401: f"; check --dicomweb-user and {PASSWORD_VARIABLE}, or --dicomweb-token and {TOKEN_VARIABLE}",
                403: "; the credentials given lack the permission",
            }.get(response.status_code, "")
            raise DicomWebError(f"{where}: refused (HTTP {response.status_code} {response.reason}){hint}") from exc
        except requests.exceptions.RequestException as exc:
            raise DicomWebError(f"{where}: failed ({type(exc).__name__}: {_reason(exc)})") from exc
        except RetryError as exc:  # the server stayed busy (HTTP 429, 503 ...) through every retry
            raise DicomWebError(f"{where}: the server stayed busy ({one_line(exc)})") from exc
        except (ValueError, TypeError, KeyError) as exc:  # an answer pydicom or the JSON decoder cannot read
            raise DicomWebError(f"{where}: unexpected answer ({type(exc).__name__}: {one_line(exc)})") from exc


def _reason(exc: BaseException) -> str:
    """The operating system's words for a network failure (``Connection refused``, ``Name or
    service not known``), without the pool, URL and class names requests wraps them in."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return found[-1].strip() if found else one_line(text, limit=200)


@dataclass(frozen=True)
class DicomWebStudy:
    """The image series of one study on a DICOMweb server, as an input of
    `simmpnet.predict.predict_paths`.

    Attributes:
        server: the server.
        study_uid: the StudyInstanceUID.
        series_uids: only these series of the study (each must be an image series); empty:
            every image series of the study.
        store: send every DICOM-SEG written back to the server (STOW-RS, into the study).

    Raises:
        InputError: a UID that is not a DICOM UID.
    """

    server: DicomWebServer
    study_uid: str
    series_uids: tuple[str, ...] = ()
    store: bool = False

    def __post_init__(self) -> None:
        _check_uid(self.study_uid, "study")
        for uid in self.series_uids:
            _check_uid(uid, "series")

    def address(self, series_uid: str) -> str:
        """Where a series of the study is on the server (its WADO-RS URL)."""
        return f"{self.server.base}/studies/{self.study_uid}/series/{series_uid}"

    def record(self, series_uids: Sequence[str]) -> dict[str, Any]:
        """What the batch summary says about the source: the server's URL (never credentials),
        the study, the series predicted and whether the DICOM-SEGs were to be stored."""
        return {"dicomweb": self.server.base, "study": self.study_uid, "series": list(series_uids), "store": self.store}

    @contextmanager
    def retrieved(self) -> Iterator[RetrievedStudy]:
        """Find the study's image series (QIDO-RS), retrieve and check them (WADO-RS, then the
        checks of `simmpnet.data.dicom`) into a temporary folder that lives as long as the
        context.

        Raises:
            SimMPNetError: dicomweb-client is not installed.
            DicomWebError: the server cannot be reached or refuses a request; the study is not
                found; a series asked for is not in it or is no image series; the study holds
                no image series.
            InputError: a retrieved series fails the checks of `simmpnet.data.dicom`
                (the message names its URL).
        """
        client = self.server.client()
        # The first request fails at once on a wrong URL or a server that is down; the
        # transfers after it ride out a busy server with dicomweb-client's retries.
        client.set_http_retry_params(retry=False)
        series = self._image_series(client)
        client.set_http_retry_params()
        with tempfile.TemporaryDirectory(prefix="simmpnet-dicomweb-") as folder:
            inputs = [(self.address(uid), self._retrieve(client, uid, Path(folder))) for uid in series]
            yield RetrievedStudy(self, client, inputs)

    def _image_series(self, client: Any) -> list[str]:
        """The UIDs of the series to predict, checked against what QIDO-RS finds in the study."""
        found = self.server._call(
            f"searching study {self.study_uid} (QIDO-RS)", lambda: client.search_for_series(self.study_uid)
        )
        modality = {_value(item, "0020000E"): _value(item, "00080060").upper() for item in found}
        modality.pop("", None)
        where = f"{self.server.base}: study {self.study_uid}"
        if not modality:
            raise DicomWebError(f"{where} not found (QIDO-RS finds no series in it)")
        for uid in self.series_uids:
            if uid not in modality:
                raise DicomWebError(f"{where}: series {uid} not found (the study holds {len(modality)} series)")
            if modality[uid] in NON_IMAGE_MODALITIES:
                raise DicomWebError(f"{where}: series {uid} is a {modality[uid]} series, not an image series")
        if self.series_uids:
            return list(dict.fromkeys(self.series_uids))
        images = sorted(uid for uid, kind in modality.items() if kind not in NON_IMAGE_MODALITIES)
        if not images:
            kinds = ", ".join(sorted(set(modality.values())))
            raise DicomWebError(f"{where} holds no image series (only {kinds})")
        logger.info("%s: %d image series of %d", where, len(images), len(modality))
        return images

    def _retrieve(self, client: Any, series_uid: str, folder: Path) -> DicomSeries:
        """Retrieve one series into ``folder / series_uid`` and read it as a folder of files."""
        from .io import list_inputs

        target = folder / series_uid
        target.mkdir()
        address = self.address(series_uid)

        def download() -> int:
            count = 0
            # Files named by their order, not by a UID the server sends: nothing it sends
            # becomes a path.
            for count, dataset in enumerate(client.iter_series(self.study_uid, series_uid), start=1):
                dataset.save_as(target / f"{count:05d}.dcm", enforce_file_format=True)
            return count

        count = self.server._call(f"retrieving series {series_uid} of study {self.study_uid} (WADO-RS)", download)
        if not count:
            raise DicomWebError(f"{address}: WADO-RS returned no instance of the series")
        logger.info("%s: %d instance(s) retrieved", address, count)
        try:
            (series,) = list_inputs(target)
        except InputError as err:
            # The temporary folder is gone once the run ends: name the series' URL instead.
            raise InputError(str(err).replace(str(target), address)) from err
        return series


def _value(item: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object, or an empty string."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


@dataclass(frozen=True)
class RetrievedStudy:
    """The series of a `DicomWebStudy` retrieved into a temporary folder, and the
    client that stores their DICOM-SEGs.

    Attributes:
        study: what was retrieved.
        client: the ``DICOMwebClient`` that retrieved it.
        inputs: ``(address, series)`` for each series: its URL on the server, and the checked
            `DicomSeries` of its retrieved files.
    """

    study: DicomWebStudy
    client: Any
    inputs: list[tuple[str, DicomSeries]]

    def record(self) -> dict[str, Any]:
        """`DicomWebStudy.record` of the series retrieved."""
        return self.study.record([series.series_uid for _, series in self.inputs])

    def store_seg(self, path: Path) -> None:
        """Send the DICOM-SEG file ``path`` into the study (STOW-RS).

        Raises:
            DicomWebError: the server refuses it, or accepts the request but lists the
                instance as failed.
        """
        import pydicom

        dataset = pydicom.dcmread(path)
        server, study = self.study.server, self.study.study_uid
        what = f"storing {path} in study {study} (STOW-RS)"
        result = server._call(what, lambda: self.client.store_instances([dataset], study_instance_uid=study))
        failed = result.get("FailedSOPSequence")  # one instance sent: any item is this one
        if failed:
            reason = failed[0].get("FailureReason", "none given")
            raise DicomWebError(f"{server.base}: {what}: refused (failure reason {reason})")
        logger.info("%s: stored %s in study %s", server.base, path.name, study)
