"""Make nnU-Net's own console scripts find Sim-MPNet's trainers (``nnUNetv2_train -tr
nnUNetTrainerSimMPNetTiny``, ``nnUNetv2_predict``, ``nnUNetPredictor``).

nnU-Net looks a trainer up by name only among the modules of its own
``nnunetv2/training/nnUNetTrainer`` folder (``recursive_find_python_class`` scans that folder
on disk), so no entry point, path setting or import hook reaches it: a module has to be there.
`install` writes one small, marked module into it that imports the trainers from this
package (it holds no code of its own, so it never goes stale when simmpnet is upgraded);
`uninstall` removes it, and only a module this package wrote.  When simmpnet is no longer
importable the module defines nothing, so nnU-Net's own trainers are still found.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["MODULE_NAME", "Registration", "install", "registration", "trainer_folder", "uninstall"]

#: The module written into nnU-Net's trainer folder.
MODULE_NAME = "simmpnet_trainers.py"
#: First line of that module: what `uninstall` checks before removing a file.
MARKER = "# Written by `simmpnet nnunet install`; `simmpnet nnunet uninstall` removes it."

_MODULE_TEXT = f'''{MARKER}
"""Sim-MPNet's nnU-Net trainers (simmpnet.nnunet.trainer.TRAINERS), for nnU-Net's own scripts.

nnU-Net finds trainers only among the modules of this folder; the trainers live in the
installed simmpnet package, and this module only imports them.
"""
try:
    from simmpnet.nnunet.trainer import TRAINERS as _TRAINERS
except ImportError:  # simmpnet is gone: nnU-Net's own trainers must still be found
    _TRAINERS = {{}}
globals().update(_TRAINERS)
'''


@dataclass(frozen=True)
class Registration:
    """Where nnU-Net looks for trainers, and whether simmpnet's module is there."""

    folder: Path
    nnunet_version: str
    installed: bool
    foreign: bool  # a file of that name that simmpnet did not write

    @property
    def module(self) -> Path:
        return self.folder / MODULE_NAME


def trainer_folder() -> Path:
    """nnU-Net's ``training/nnUNetTrainer`` folder of the nnU-Net this Python imports."""
    try:
        import nnunetv2
    except ImportError as err:
        raise InputError("nnU-Net v2 is not installed (pip install 'simmpnet[nnunet]')") from err
    return Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"


def registration() -> Registration:
    """The state of the registration for the nnU-Net this Python imports."""
    from importlib.metadata import PackageNotFoundError, version

    folder = trainer_folder()
    try:
        nnunet_version = version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover - imported from a source tree
        nnunet_version = "unknown"
    module = folder / MODULE_NAME
    ours = module.is_file() and module.read_text(encoding="utf-8", errors="replace").startswith(MARKER)
    return Registration(folder, nnunet_version, installed=ours, foreign=module.exists() and not ours)


def install() -> Path:
    """Write the module (again, when it is there: idempotent); returns its path.

    Raises:
        InputError: nnU-Net's folder is not writable (name the fix), or a file of the module's
            name that simmpnet did not write is in the way.
    """
    state = registration()
    if state.foreign:
        raise InputError(f"{state.module}: exists and was not written by simmpnet; move it away first")
    if state.installed and state.module.read_text(encoding="utf-8") == _MODULE_TEXT:
        return state.module
    tmp = state.folder / f".{MODULE_NAME}.{os.getpid()}.tmp"
    try:
        tmp.write_text(_MODULE_TEXT, encoding="utf-8")
        tmp.replace(state.module)
    except OSError as err:
        with contextlib.suppress(OSError):  # nothing was written, or the folder is not there
            tmp.unlink()
        raise InputError(
            f"{state.folder}: cannot write {MODULE_NAME} into nnU-Net's trainer folder ({err.strerror or err}); "
            "run this command as the user that installed nnU-Net, or install nnU-Net into a virtual environment "
            "of your own"
        ) from err
    return state.module


def uninstall() -> Path | None:
    """Remove the module; returns its path, or None when it was not there.

    Raises:
        InputError: the file is not simmpnet's, or cannot be removed.
    """
    state = registration()
    if state.foreign:
        raise InputError(f"{state.module}: was not written by simmpnet; left in place")
    if not state.installed:
        return None
    try:
        state.module.unlink()
    except OSError as err:
        raise InputError(f"{state.module}: cannot remove it ({err.strerror or err})") from err
    return state.module
