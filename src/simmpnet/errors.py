"""Exceptions that carry a message meant for the user, not a traceback."""
from __future__ import annotations


class SimMPNetError(Exception):
    """Base class for every error simmpnet raises on purpose."""


class InputError(SimMPNetError, ValueError):
    """Bad user input: a file, an array or an argument that cannot be used.

    The message names the offending file (when there is one) and the problem, so that the
    CLI can print it as one line.
    """


class CheckpointError(SimMPNetError, ValueError):
    """A checkpoint that is missing, corrupt, or was written for another configuration."""
