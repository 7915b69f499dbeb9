"""Atomic, pickle-free checkpoint files.

Checkpoints are written to a temporary file in the target folder and renamed over the target,
so a crash or a full disk never leaves a half-written checkpoint in place of a good one.  They
are read with ``torch.load(weights_only=True)``: only tensors and plain containers, never
arbitrary pickled objects.  A checkpoint from a newer simmpnet (a ``version`` above
`CHECKPOINT_VERSION`), a training checkpoint without its model part and one whose
tensors hold NaN or Inf values are refused with a message naming the file; so is a file of
another kind often passed for a checkpoint (a TorchScript archive, an ONNX model, a safetensors
file), named as what it is.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write
from .errors import CheckpointError, InputError, one_line

__all__ = [
    "CHECKPOINT_VERSION", "MODEL_FORMAT", "PEER_FORMAT", "TRAIN_FORMAT", "check_format_version", "foreign_file_kind",
    "load_checkpoint", "save_checkpoint", "split_training_checkpoint",
]

#: Newest checkpoint ``version`` this code reads (the trainer and ``SimMPNet.save`` write 1).
CHECKPOINT_VERSION = 1
#: The ``format`` of every checkpoint kind, decoded here and nowhere else: a ``last.pt`` /
#: ``best.pt`` of ``simmpnet train`` (the model part, the optimiser, the training config), a
#: file of ``SimMPNet.save``, and the model part of a run of a peer network (MONAI's U-Net).
TRAIN_FORMAT = "simmpnet-train"
MODEL_FORMAT = "simmpnet-model"
PEER_FORMAT = "simmpnet-peer"
#: Entries a checkpoint of a known ``format`` must hold as dictionaries.
_REQUIRED_PARTS: dict[str, tuple[str, ...]] = {"simmpnet-train": ("model", "config")}


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (`atomic_write`);
    returns the path.

    Temporary files that killed earlier writes of ``path`` left behind are removed once the
    new checkpoint is in place.

    Raises:
        CheckpointError: the folder or the file cannot be written (full disk, no permission);
            the temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    try:
        atomic_write(path, write)
    except InputError as err:
        # torch.save reports a failed write to a file object as RuntimeError
        cause = err.__cause__ or err
        kept = "the previous checkpoint is unchanged" if path.is_file() else "nothing was written"
        reason = one_line(getattr(cause, "strerror", None) or cause)
        raise CheckpointError(f"{path}: cannot write checkpoint ({reason}); {kept}") from err
    _remove_stale_temporaries(path)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` that were killed before their
    rename (a preempted run would otherwise leave one checkpoint-sized file per kill)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass  # vanished meanwhile, or not ours to delete: harmless either way


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, refusing anything but tensors
    and plain containers."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty")
    kind = foreign_file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: this is {kind}, not a simmpnet checkpoint; {_FOREIGN_ADVICE[kind]}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(err)})") from err
        # torch's message spans several lines; the line naming the refused object is the one to show
        detail = next((line for line in str(err).splitlines() if "GLOBAL" in line or "unsupported" in line), "")
        raise CheckpointError(
            f"{path}: refused, the file holds Python objects other than tensors and plain containers"
            + (f" ({one_line(detail)})" if detail else "")
        ) from err
    except Exception as err:  # a hostile file can make the unpickler fail in many ways (KeyError, OSError ...)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {one_line(err)})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dictionary checkpoint, found {type(obj).__name__}")
    _check_contents(path, obj)
    return obj


#: What to do with a file of another kind (`foreign_file_kind`) than a checkpoint.
_TAKES = (
    "simmpnet reads the last.pt / best.pt of `simmpnet train`, a file of SimMPNet.save, or (with "
    "SimMPNet.from_pretrained) a folder of SimMPNet.save_pretrained"
)
_FOREIGN_ADVICE = {
    "a TorchScript archive": (
        f"run it with torch.jit.load (`simmpnet export --format torchscript` writes these); {_TAKES}"
    ),
    "an ONNX model": f"run it with onnxruntime, e.g. simmpnet.export.onnxruntime_session; {_TAKES}",
    "a safetensors weights file": (
        "SimMPNet.from_pretrained reads it from its folder, next to the config.json that "
        "SimMPNet.save_pretrained (or `simmpnet export --format safetensors`) writes with it"
    ),
}


_ONNX_SECOND_FIELDS = b"\x12\x1a\x22\x28\x32\x3a\x42"  # ModelProto fields 2-8, wire type included


def foreign_file_kind(path: str | os.PathLike) -> str | None:
    """Name the kind of a file that is not a ``torch.save`` checkpoint but is often mistaken
    for one: ``"a TorchScript archive"`` (a zip with ``constants.pkl`` or ``code/``, as
    ``torch.jit.save`` writes), ``"an ONNX model"`` (a protobuf ``ModelProto`` starting with its
    ``ir_version``), ``"a safetensors weights file"`` (an 8-byte header length, then a JSON
    header); ``None`` for anything else (a checkpoint, or a file `load_checkpoint`
    reports as unreadable).  Reads only the file's first bytes and, for a zip, its index."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        # torch.save archives hold data.pkl, data/, version ...; torch.jit.save adds the code
        if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
            return "a TorchScript archive"
        return None
    if len(head) >= 9 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 2 <= header <= size - 8:
            return "a safetensors weights file"
    # ModelProto: field 1 (ir_version, a small varint) first, then producer_name (0x12),
    # producer_version (0x1a), domain (0x22), model_version (0x28), doc_string (0x32),
    # graph (0x3a) or opset_import (0x42).  A pickle starts with 0x80 (protocol 2+) or an
    # ASCII opcode, a zip with "PK": none of them with 0x08.
    if len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x40 and head[2] in _ONNX_SECOND_FIELDS:
        return "an ONNX model"
    return None


def check_format_version(version: Any, newest: int, what: str) -> None:
    """Refuse a file ``version`` that is not a positive integer or is newer than ``newest``;
    ``what`` names the file in the message (e.g. ``"run/last.pt: checkpoint"``)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{what} version {version!r} is not a positive integer")
    if version > newest:
        raise CheckpointError(
            f"{what} version {version} was written by a newer simmpnet; this one reads version {newest} or older"
        )


def _check_contents(path: Path, obj: dict[str, Any]) -> None:
    """Refuse what no reader of simmpnet can use: a newer version, missing parts, NaN/Inf."""
    check_format_version(obj.get("version", CHECKPOINT_VERSION), CHECKPOINT_VERSION, f"{path}: checkpoint")
    for part in _REQUIRED_PARTS.get(str(obj.get("format")), ()):
        if not isinstance(obj.get(part), dict):
            raise CheckpointError(f"{path}: {obj['format']} checkpoint without its {part!r} entry")
    bad = next(_nonfinite_tensors(obj, ""), None)
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or Inf values; the checkpoint is unusable")


def _nonfinite_tensors(obj: Any, where: str) -> Iterator[str]:
    """Names (``model/state_dict/conv.weight``) of floating-point tensors with NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            yield where or "(top level)"
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _nonfinite_tensors(value, f"{where}/{key}" if where else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _nonfinite_tensors(value, f"{where}[{index}]")


def split_training_checkpoint(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(model part, training config)`` of a checkpoint dictionary: for a ``simmpnet train``
    checkpoint its ``model`` and ``config`` entries, for a model file the payload itself and
    ``None`` (no training config)."""
    if payload.get("format") == TRAIN_FORMAT:
        return payload.get("model"), payload.get("config") or {}
    return payload, None
