"""nnU-Net's three folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).

nnU-Net reads the three environment variables once, when ``nnunetv2.paths`` is first imported,
and its modules keep copies of them.  So they must be set before anything imports nnU-Net, and
a process cannot switch to other folders afterwards: `use_folders` sets them and refuses
(naming both sets of folders) when nnU-Net was already imported with others.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["ENV_NAMES", "NnunetFolders", "use_folders"]

#: nnU-Net's environment variables, in the order raw, preprocessed, results.
ENV_NAMES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass(frozen=True)
class NnunetFolders:
    """The three folders nnU-Net works in."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> NnunetFolders:
        """``root/nnUNet_raw``, ``root/nnUNet_preprocessed`` and ``root/nnUNet_results``."""
        base = Path(root).expanduser().resolve()
        return cls(*(base / name for name in ENV_NAMES))

    @classmethod
    def from_environment(cls) -> NnunetFolders:
        """The folders the environment names; an error naming the variables that are unset."""
        missing = [name for name in ENV_NAMES if not os.environ.get(name)]
        if missing:
            raise InputError(
                f"nnU-Net's folders are not set: {', '.join(missing)} (export them as for nnU-Net, or pass --root DIR "
                "to use DIR/nnUNet_raw, DIR/nnUNet_preprocessed and DIR/nnUNet_results)"
            )
        return cls(*(Path(os.environ[name]).expanduser().resolve() for name in ENV_NAMES))


def use_folders(root: str | os.PathLike[str] | None = None, n_proc_da: int | None = None) -> NnunetFolders:
    """Point nnU-Net at ``root``'s three folders (created if missing), or at the ones the
    environment names when ``root`` is None; set ``nnUNet_n_proc_DA`` (data-augmentation worker
    processes per device) when given.

    Must run before nnU-Net is imported in this process, or with the folders it was imported
    with.

    Raises:
        InputError: the environment names no folders and ``root`` is None, or nnU-Net was
            already imported with other folders.
    """
    folders = NnunetFolders.under(root) if root is not None else NnunetFolders.from_environment()
    paths = sys.modules.get("nnunetv2.paths")
    if paths is not None:
        current = tuple(getattr(paths, name) for name in ENV_NAMES)
        wanted = (str(folders.raw), str(folders.preprocessed), str(folders.results))
        if tuple(str(Path(c).resolve()) if c else None for c in current) != wanted:
            raise InputError(
                f"nnU-Net was already imported in this process with the folders {current}; it cannot switch to "
                f"{wanted} (nnU-Net reads them once): run in a new process"
            )
    for name, path in zip(ENV_NAMES, (folders.raw, folders.preprocessed, folders.results)):
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    if n_proc_da is not None:
        if n_proc_da < 0:
            raise InputError(f"nnUNet_n_proc_DA must be >= 0, got {n_proc_da}")
        os.environ["nnUNet_n_proc_DA"] = str(n_proc_da)
    return folders
