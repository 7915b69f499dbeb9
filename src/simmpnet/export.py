"""Export of the evaluation network to ONNX or TorchScript, and of a checkpoint's model to the
weights-only folder of `SimMPNet.save_pretrained` (``--format safetensors``).

What is exported is the network of ``eval()`` mode: for Sim-MPNet the sum of the four heads,
``(B, C, S, S) -> (B, n_classes, S, S)`` logits at the input size ``S`` it was trained at
(the size `simmpnet.evaluation.inference.predict_slices` feeds it), with a dynamic batch
dimension.  The spatial size is fixed in the exported graph.

Both formats are produced by tracing (``torch.jit.trace``; the ONNX file through the
TorchScript-based ONNX exporter, which needs only the ``onnx`` package, not ``onnxscript``).
While tracing, `simmpnet.models.memory.PrototypeMemory.read` switches to its dense
formulation (same mathematics, static shapes), and the warm-up state of every DMW-LA block is
frozen into the graph as it is at export time (inference never changes it).

Exporting never changes the model (its ``state_dict`` is checked before and after) and writes
the file atomically (temporary file in the same folder, then rename).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, split_training_checkpoint
from .files import atomic_write
from .pretrained import save_pretrained
from .errors import InputError, SimMPNetError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "ExportCheck",
    "export_model",
    "export_checkpoint",
    "check_export",
    "format_from_path",
    "onnxruntime_session",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_OPSET = 17
_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}


@dataclass(frozen=True)
class ExportCheck:
    """Agreement of an exported file with the PyTorch model on one batch."""

    max_abs_diff: float
    label_agreement: float  # share of pixels with the same argmax label
    batch_size: int


def format_from_path(path: str | os.PathLike) -> str:
    """The export format a file name asks for (``.onnx`` -> onnx; ``.pt``/``.ts`` -> torchscript)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError(
            f"{path}: cannot tell the export format from the suffix; pass --format onnx or torchscript "
            "(or safetensors, a folder)"
        )
    return _SUFFIXES[suffix]


def _example_input(model: nn.Module, input_size: int, batch_size: int, in_channels: int | None) -> torch.Tensor:
    channels = in_channels or int(getattr(model, "in_channels", 0) or getattr(model, "peer_kwargs", {}).get("in_channels", 0))
    if channels < 1:
        raise InputError("cannot tell the model's input channels; pass in_channels")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, channels, input_size, input_size, generator=generator).to(device)


@contextlib.contextmanager
def _unchanged(model: nn.Module) -> Iterator[None]:
    """Fail loudly if anything in ``model.state_dict()`` changes inside the block, and restore
    the model's train/eval mode afterwards.  Parameters are compared through their in-place
    version counters, buffers (the memory banks, BN statistics) by value."""
    was_training = model.training
    state = model.state_dict(keep_vars=True)
    versions = {name: tensor._version for name, tensor in state.items()}
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        model.train(was_training)
    after = model.state_dict(keep_vars=True)
    changed = sorted(set(state) ^ set(after))
    for name, tensor in state.items():
        if name not in after:
            continue
        if after[name] is not tensor:
            changed.append(name)
        elif name in buffers:
            if not torch.equal(tensor, buffers[name]):
                changed.append(name)
        elif tensor._version != versions[name]:
            changed.append(name)
    if changed:
        raise RuntimeError(f"export changed the model's state: {changed[:5]}")


def _kthvalue_symbolic(g, self, k, dim, keepdim):  # pragma: no cover - called by the exporter
    """ONNX has no kthvalue: the k-th smallest value is the last of TopK(k, largest=0).  ``k``
    may be a traced value (DS-GIM computes it from the map size)."""
    one = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
    k = g.op("Reshape", g.op("Cast", k, to_i=7), one)  # int64, shape (1,)
    values, indices = g.op("TopK", self, k, axis_i=dim, largest_i=0, outputs=2)
    start, axes = g.op("Sub", k, one), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64))
    values = g.op("Slice", values, start, k, axes)
    indices = g.op("Slice", indices, start, k, axes)
    if not keepdim:
        values, indices = (g.op("Squeeze", t, axes) for t in (values, indices))
    return values, indices


def _patch_for_onnxruntime(path: Path) -> None:
    """ONNX Runtime has no boolean EyeLike (DS-GIM's diagonal mask): make it a float EyeLike
    followed by a Cast to bool.  Rewrites the file in place (it is still the temporary file)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(path))
    nodes = list(proto.graph.node)
    patched = []
    for node in nodes:
        if node.op_type != "EyeLike":
            patched.append(node)
            continue
        # Without a dtype attribute the output takes the input's type (bool in DS-GIM):
        # compute in float, then cast back like the input (or to the requested dtype).
        dtype = next((a for a in node.attribute if a.name == "dtype"), None)
        source, target = node.input[0], node.output[0]
        as_float = helper.make_node("Cast", [source], [f"{target}_in"], to=TensorProto.FLOAT, name=f"{node.name}_in")
        node.input[0], node.output[0] = f"{target}_in", f"{target}_float"
        if dtype is None:
            back = helper.make_node("CastLike", [node.output[0], source], [target], name=f"{node.name}_out")
        else:
            back = helper.make_node("Cast", [node.output[0]], [target], to=dtype.i, name=f"{node.name}_out")
            dtype.i = TensorProto.FLOAT
        patched.extend([as_float, node, back])
    if len(patched) != len(nodes):
        del proto.graph.node[:]
        proto.graph.node.extend(patched)
        onnx.save(proto, str(path))


def _register_symbolics(opset: int) -> None:
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    register_custom_op_symbolic("aten::kthvalue", symbolic_helper.parse_args("v", "v", "i", "b")(_kthvalue_symbolic), opset)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's expected warnings (sizes become constants of the graph) and the
    deprecation notices of TorchScript and of the TorchScript-based ONNX exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _write_torchscript(model: nn.Module, example: torch.Tensor, target: Path) -> None:
    with _quiet_tracing():
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(target))


def _write_onnx(model: nn.Module, example: torch.Tensor, target: Path, opset: int, dynamic_batch: bool) -> None:
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
    except ImportError as err:
        raise SimMPNetError("ONNX export needs the onnx package: pip install 'simmpnet[export]'") from err
    _register_symbolics(opset)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet_tracing():
        torch.onnx.export(
            model,
            (example,),
            str(target),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    _patch_for_onnxruntime(target)


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    format: str = "onnx",
    input_size: int | None = None,
    in_channels: int | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export the ``eval()`` network of ``model`` to ``path``.

    Args:
        model: a Sim-MPNet (or any network whose eval forward maps ``(B, C, S, S)`` to
            ``(B, n_classes, S, S)`` logits); it is left unchanged and in its original mode.
        path: the file to write (atomically).
        format: ``"onnx"`` or ``"torchscript"``.
        input_size: side ``S`` of the square input; defaults to Sim-MPNet's ``img_size_a``.
        in_channels: input channels; defaults to ``model.in_channels``.
        dynamic_batch: ONNX only: leave the batch dimension free (TorchScript traces keep it
            free anyway).
        opset: ONNX opset.

    Returns:
        ``path`` as a `Path`.
    """
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    if input_size is None:
        config = getattr(model, "config", None)
        input_size = getattr(config, "img_size_a", None)
        if input_size is None:
            raise InputError("cannot tell the model's input size; pass input_size")
    if int(input_size) < 8:
        raise InputError(f"input size must be at least 8 pixels, got {input_size}")
    if getattr(model, "in_warmup", False):
        logger.warning("the model is still in memory warm-up: the export uses plain non-local attention, as eval() does")
    # Batch 2 for tracing so that no size-1 dimension can be specialised into the graph.
    example = _example_input(model, int(input_size), 2, in_channels)
    with _unchanged(model), torch.no_grad():
        model.eval()

        def writer(tmp: Path) -> None:
            if format == "onnx":
                _write_onnx(model, example, tmp, opset, dynamic_batch)
            else:
                _write_torchscript(model, example, tmp)

        # Only OS errors are write failures; an exporter's own error propagates as it is.
        target = atomic_write(path, writer, suffix=".onnx" if format == "onnx" else ".pt", writer_errors=())
    return target


#: ONNX Runtime graph rewrites that `onnxruntime_session` turns off by default: they
#: can change the labels of an exported Sim-MPNet (see there).
ORT_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def onnxruntime_session(path: str | os.PathLike, threads: int | None = None, layout_rewrite: bool = False) -> Any:
    """An ONNX Runtime CPU session for an exported Sim-MPNet.

    ONNX Runtime's NCHWc layout rewrite (``NchwcTransformer``, part of its default
    ``ORT_ENABLE_ALL`` level) computes convolutions in blocked layouts whose last bits differ
    from position to position.  DS-GIM's median split and window ranking treat exactly equal
    values as ties, and a network that maps many positions to exactly the same features
    (a closed gate before encoder B does: its input is then zero everywhere) has such ties;
    last-bit differences break them and change the attention of whole rows, so that the file
    no longer predicts what the checkpoint predicts (docs/export.md;
    ``benchmarks/bench.py onnx`` measures it on a trained network).  The rewrite is
    therefore off by default (every other optimisation stays on); ``layout_rewrite=True`` turns
    it on for speed.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: ONNX Runtime's choice).
        layout_rewrite: keep ONNX Runtime's NCHWc layout rewrite on.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise SimMPNetError("running an ONNX export needs onnxruntime: pip install 'simmpnet[export]'") from err
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    disabled = [] if layout_rewrite else list(ORT_DISABLED_OPTIMIZERS)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _run_exported(path: Path, format: str, x: torch.Tensor) -> np.ndarray:
    if format == "onnx":
        session = onnxruntime_session(path)
        return session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
    with _quiet_tracing():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x.cpu()).numpy()


def check_export(
    model: nn.Module, path: str | os.PathLike, format: str | None = None, x: torch.Tensor | None = None,
    input_size: int | None = None,
) -> ExportCheck:
    """Run the exported file (ONNX Runtime on CPU, or TorchScript on CPU) and the PyTorch model
    in ``eval()`` mode on ``x`` (default: a random batch of 3) and compare their logits."""
    path = Path(path)
    format = format or format_from_path(path)
    if x is None:
        size = input_size or getattr(getattr(model, "config", None), "img_size_a", None)
        if size is None:
            raise InputError("cannot tell the model's input size; pass input_size or x")
        x = _example_input(model, int(size), 3, None)
    with _unchanged(model), torch.no_grad():
        model.eval()
        reference = model(x).float().cpu().numpy()
    exported = _run_exported(path, format, x)
    if exported.shape != reference.shape:
        raise SimMPNetError(f"{path}: exported model gives shape {exported.shape}, PyTorch {reference.shape}")
    return ExportCheck(
        max_abs_diff=float(np.abs(exported - reference).max()),
        label_agreement=float((exported.argmax(1) == reference.argmax(1)).mean()),
        batch_size=int(x.shape[0]),
    )


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    format: str | None = None,
    input_size: int | None = None,
    check: bool = True,
) -> tuple[Path, int, ExportCheck | None]:
    """Load a checkpoint (``last.pt`` / ``best.pt`` of training, or a file of
    `SimMPNet.save`) on the CPU and export its eval network; see `export_model`.

    Args:
        format: ``"onnx"``, ``"torchscript"`` (default: from ``output``'s suffix) or
            ``"safetensors"``: ``output`` is then a folder of `SimMPNet.save_pretrained`
            (weights without the optimiser, and the preprocessing), for
            `SimMPNet.from_pretrained`.
        input_size: defaults to the input size recorded in the checkpoint.
        check: also run the exported file on a random batch of 3 (`check_export`).

    Returns:
        ``(path written, input size, check or None)``.
    """
    from .loading import load_trained_model

    if format == "safetensors":
        return _export_pretrained(checkpoint, output, input_size, check)
    format = format or format_from_path(output)
    model, trained_size, _ = load_trained_model(checkpoint, "cpu")
    size = int(input_size or trained_size)
    path = export_model(model, output, format=format, input_size=size)
    result = check_export(model, path, format, input_size=size) if check else None
    return path, size, result


def _run_records(checkpoint: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The training config a ``last.pt`` / ``best.pt`` holds, and the ``metrics.json`` next to
    it when that evaluation scored this very checkpoint: what the model card reports."""
    if not checkpoint.is_file():
        return None, None
    _, training = split_training_checkpoint(load_checkpoint(checkpoint, map_location="cpu"))
    metrics_path = checkpoint.parent / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        try:
            found = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            found = None  # not an evaluation of ours: the card goes without scores
        scored = isinstance(found, dict) and found.get("checkpoint")
        if scored and Path(scored).resolve() == checkpoint.resolve():
            metrics = found
    return training, metrics


def _export_pretrained(
    checkpoint: str | os.PathLike, output: str | os.PathLike, input_size: int | None, check: bool
) -> tuple[Path, int, ExportCheck | None]:
    """``export_checkpoint(format="safetensors")``: the folder of `SimMPNet.save_pretrained`
    (config.json with the preprocessing, model.safetensors without the optimiser); the check
    reloads it with `SimMPNet.from_pretrained` and compares weights and logits."""
    from .models import SimMPNet

    model = SimMPNet.from_pretrained(checkpoint, device="cpu")
    size = model.preprocessing.input_size
    if input_size is not None and int(input_size) != size:
        raise InputError(
            f"--input-size does not apply to --format safetensors: the folder keeps the training size {size}"
        )
    training, metrics = _run_records(Path(checkpoint))
    folder = save_pretrained(model, output, training=training, metrics=metrics, source=str(checkpoint))
    if not check:
        return folder, size, None
    loaded = SimMPNet.from_pretrained(folder)
    state, again = model.state_dict(), loaded.state_dict()
    differing = [name for name in state if name not in again or not torch.equal(state[name], again[name])]
    if differing or set(again) != set(state) or loaded.preprocessing != model.preprocessing:
        raise SimMPNetError(f"{folder}: the written folder does not reload as the checkpoint's model ({differing[:3]})")
    x = _example_input(model, size, 3, None)
    with torch.no_grad():
        reference, exported = model(x), loaded(x)
    return folder, size, ExportCheck(
        max_abs_diff=float((exported - reference).abs().max()),
        label_agreement=float((exported.argmax(1) == reference.argmax(1)).float().mean()),
        batch_size=3,
    )
