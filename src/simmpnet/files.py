"""Files the package writes: atomic replacement, output-folder checks, content hashes.

The bottom layer: every other module may import it, it imports none of them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InputError, one_line

__all__ = ["atomic_write", "check_output_folder", "default_mode", "sha256_file"]

logger = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_mode(base: int = 0o666) -> int:
    """The mode ``open()`` / ``mkdir()`` would give under the current umask (``base`` 0o666 for
    files, 0o777 for folders); ``mkstemp``/``mkdtemp`` create 0600/0700 instead."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def check_output_folder(path: Path) -> None:
    """Refuse, before any work is done, an output folder that exists as a file."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output exists and is not a folder")


def atomic_write(
    path: str | os.PathLike[str],
    writer: Callable[[Path], object],
    *,
    suffix: str = ".tmp",
    writer_errors: tuple[type[BaseException], ...] = (Exception,),
) -> Path:
    """Write ``path`` atomically.

    Args:
        path: final file name; missing parent folders are created.
        writer: called with the path of a fresh temporary file (created with
            `tempfile.mkstemp` in the same folder); it must write the complete file
            there. The temporary file is then synced and moved over ``path`` with
            `os.replace`, so readers never see a half-written file.
        suffix: suffix of the temporary name; writers that pick the format from the name
            (nibabel, SimpleITK) need the real extension (e.g. ``".nii.gz"``).
        writer_errors: exception types of ``writer`` that are write failures (default: any,
            since image libraries report a full disk in their own types); others propagate
            unchanged.  ``OSError`` always counts.

    Returns:
        ``path`` as a `Path`.

    Raises:
        InputError: the folder or file cannot be written (the message names ``path``). On any
            failure the temporary file is removed and an existing ``path`` is left unchanged.
            An `InputError` raised by ``writer``, and an exception outside
            ``writer_errors``, propagates unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        writer(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
        tmp = None
    except InputError:
        raise
    except (OSError, *writer_errors) as exc:  # OSError, or a library's own exception type
        raise InputError(one_line(f"{path}: cannot write file ({type(exc).__name__}: {one_line(exc)})")) from exc
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - folder vanished or became read-only
                logger.warning("%s: could not remove temporary file %s", path, tmp)
    return path
