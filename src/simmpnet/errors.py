"""Exceptions that carry a message meant for the user, not a traceback, and the one-line form
of such messages."""
from __future__ import annotations


def one_line(text: object, limit: int | None = 300) -> str:
    """A message (often a library's) on one line, shortened to ``limit`` characters with
    "..." (``None``: not shortened)."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class SimMPNetError(Exception):
    """Base class for every error simmpnet raises on purpose."""


class InputError(SimMPNetError, ValueError):
    """Bad user input: a file, an array or an argument that cannot be used.

    The message names the offending file (when there is one) and the problem, so that the
    CLI can print it as one line.
    """


class CheckpointError(SimMPNetError, ValueError):
    """A checkpoint that is missing, corrupt, or was written for another configuration."""


class DicomWebError(SimMPNetError):
    """A DICOMweb server that cannot be reached, refuses a request, or does not hold what was
    asked (`simmpnet.data.dicomweb`); the message names the server's URL and the UIDs."""
