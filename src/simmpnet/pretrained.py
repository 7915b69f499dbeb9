"""Trained models as one folder, in the Hugging Face Hub convention: ``config.json`` (the
architecture and the preprocessing the model needs) next to ``model.safetensors`` (every
weight and buffer, the DMW-LA memory banks and counters included, without the optimiser).

`SimMPNet.save_pretrained` writes the folder,
`SimMPNet.from_pretrained` reads it, and also
a Hub repository id (``"user/repo"``, downloaded with ``huggingface_hub.snapshot_download``
where a network is), the ``last.pt`` / ``best.pt`` that ``simmpnet train`` writes and a file
of `SimMPNet.save`.

The preprocessing travels with the model as `Preprocessing` (``model.preprocessing``):
the slice side the network was trained at, the intensity window (or percentile
normalisation), the input channels, the class names and how predictions return to the
input's size.  `SimMPNet.predict` applies it.

``config.json``::

    {"format": "simmpnet-pretrained", "version": 1, "model_type": "simmpnet",
     "simmpnet_version": "0.1.0", "n_classes": 9, "in_channels": 1,
     "config": {... SimMPNetConfig ...},
     "preprocessing": {"input_size": 128, "in_channels": 1, "normalisation": "window",
                       "intensity_window": [-125.0, 275.0], "class_names": [...],
                       "resample": "labels", "trained_on": "resized-slices"}}

This module imports torch and safetensors only when a model is saved or loaded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import CheckpointError, InputError, one_line
from .evaluation.resample import RESAMPLE_MODES, TRAINED_ON, check_sliding_window
from .networks import NETWORK_TITLES

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The model class a folder is read into (`simmpnet.models.SimMPNet` passes itself):
#: this module never imports the network it serves.
Model = TypeVar("Model", bound="torch.nn.Module")

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "PRETRAINED_FORMAT", "TRAINED_ON", "Preprocessing", "check_sliding_window",
    "save_pretrained", "load_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PRETRAINED_FORMAT = "simmpnet-pretrained"
#: Newest ``config.json`` version this code reads.
PRETRAINED_VERSION = 1
#: Keys by which the config.json of other libraries names their model (transformers, timm, diffusers).
_FOREIGN_CONFIG_KEYS = ("model_type", "architecture", "architectures", "_class_name")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

@dataclass(frozen=True)
class Preprocessing:
    """What a model needs done to an image before the network sees it, and after.

    Attributes:
        input_size: side of the square every slice is resized to (the training size), or of
            the tiles of sliding-window prediction.
        in_channels: channels the network takes (colour images are converted to grey for a
            1-channel model, grey images repeated for a 3-channel one).
        intensity_window: ``(low, high)``: clip and scale to ``[0, 1]`` (e.g. a CT HU window);
            ``None``: percentile normalisation (images in ``[0, 1]`` unchanged, anything else
            clipped to its 0.5-99.5 percentiles and scaled); see
            `simmpnet.predict.normalise_intensity`.
        class_names: names of the classes, background first, or ``None``.
        resample: how predictions return to the input's size: ``"labels"`` (the paper's
            nearest resize of the label map) or ``"logits"``.
        trained_on: what the network saw in training: ``"resized-slices"`` (whole slices
            resized to ``input_size``: every ``simmpnet train`` run), ``"native-crops"``
            (patches at the data's own resolution: the nnU-Net trainers) or ``None`` (not
            recorded: a network trained by other code, or a file written before simmpnet
            recorded it).  Sliding-window prediction, which shows the network the image at its
            own resolution, is refused for ``"resized-slices"``
            (`check_sliding_window`).
    """

    input_size: int
    in_channels: int = 1
    intensity_window: tuple[float, float] | None = None
    class_names: tuple[str, ...] | None = None
    resample: str = "labels"
    trained_on: str | None = None

    def __post_init__(self) -> None:
        for name in ("input_size", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"preprocessing {name} must be a positive integer, got {value!r}")
        window = self.intensity_window
        if window is not None:
            if isinstance(window, (str, bytes)) or not isinstance(window, Sequence) or len(window) != 2:
                raise InputError(f"intensity_window must be (low, high) or None, got {window!r}")
            low, high = (float(v) for v in window)
            if not high > low:
                raise InputError(f"intensity window must be (low, high) with low < high, got {list(window)}")
            object.__setattr__(self, "intensity_window", (low, high))
        names = self.class_names
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise InputError(f"class_names must be a list of strings, got {names!r}")
            object.__setattr__(self, "class_names", tuple(names))
        if self.resample not in RESAMPLE_MODES:
            raise InputError(f"resample must be one of {list(RESAMPLE_MODES)}, got {self.resample!r}")
        if self.trained_on is not None and self.trained_on not in TRAINED_ON:
            raise InputError(f"trained_on must be one of {list(TRAINED_ON)} or None, got {self.trained_on!r}")

    @property
    def normalisation(self) -> str:
        """``"window"`` (clip to `intensity_window` and scale) or ``"percentile"``."""
        return "percentile" if self.intensity_window is None else "window"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "normalisation": self.normalisation,
            "intensity_window": None if self.intensity_window is None else list(self.intensity_window),
            "class_names": None if self.class_names is None else list(self.class_names),
            "resample": self.resample,
            "trained_on": self.trained_on,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """The inverse of `to_dict` (``normalisation`` is checked against the window)."""
        values = dict(data)
        normalisation = values.pop("normalisation", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InputError(f"unknown preprocessing keys: {sorted(unknown)}")
        if "input_size" not in values:
            raise InputError("preprocessing without its input_size")
        prep = cls(**values)
        if normalisation is not None and normalisation != prep.normalisation:
            raise InputError(
                f"preprocessing says normalisation {normalisation!r} but its intensity_window is "
                f"{values.get('intensity_window')!r}"
            )
        return prep

    @classmethod
    def for_training_config(
        cls, config: Mapping[str, Any], input_size: int, in_channels: int, source: str = "training config"
    ) -> Preprocessing:
        """The preprocessing of a ``simmpnet train`` run (its config as the checkpoint stores
        it), as ``simmpnet predict`` applies it.  Every layout of ``simmpnet train`` resizes
        whole slices to the input size.

        Raises:
            CheckpointError: the config's preprocessing keys are unusable (names ``source``).
        """
        try:
            return cls(
                input_size=int(input_size),
                in_channels=int(in_channels),
                intensity_window=config.get("intensity_window"),
                class_names=config.get("class_names"),
                resample=config.get("resample") or "labels",
                trained_on="resized-slices",
            )
        except (InputError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: the training config's preprocessing is unusable ({err})") from err



def check_preprocessing(model: Model, prep: Preprocessing, source: str = "model") -> Preprocessing:
    """``prep`` if it fits ``model`` (channels, number of class names), else a CheckpointError."""
    if not isinstance(prep, Preprocessing):
        raise InputError(f"{source}: preprocessing must be a simmpnet.Preprocessing, got {type(prep).__name__}")
    if prep.in_channels != model.in_channels:
        raise CheckpointError(
            f"{source}: preprocessing says {prep.in_channels} input channel(s), the network takes {model.in_channels}"
        )
    if prep.class_names is not None and len(prep.class_names) != model.n_classes:
        raise CheckpointError(
            f"{source}: {len(prep.class_names)} class names for a network of {model.n_classes} classes"
        )
    return prep


# ----------------------------------------------------------------------- writing
def save_pretrained(
    model: Model,
    directory: str | os.PathLike,
    *,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the model card ``README.md``
    (`simmpnet.model_card`: intended use, training, the run's scores) of ``model`` into
    ``directory`` (created if missing; other files in it, and a README.md simmpnet did not
    write, are left alone).  ``training``: the training run's config; ``metrics``: the
    ``metrics.json`` of ``simmpnet evaluate`` of this model; ``source``: where the weights come
    from; each goes into the card when given.  Each file is written atomically; the weights
    first, so that a ``config.json`` is never newer than its weights.  Returns the folder."""
    import torch
    from safetensors.torch import save_file

    from . import __version__
    from .files import atomic_write
    from .model_card import model_card, write_model_card

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a folder")
    prep = check_preprocessing(model, model.preprocessing)
    # safetensors refuses tensors sharing memory and non-contiguous ones: plain CPU copies
    state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()}
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise InputError("the model's state_dict holds non-tensor entries")
    config = {
        "format": PRETRAINED_FORMAT,
        "version": PRETRAINED_VERSION,
        "model_type": "simmpnet",
        "simmpnet_version": __version__,
        "n_classes": model.n_classes,
        "in_channels": model.in_channels,
        "config": model.config.to_dict(),
        "preprocessing": prep.to_dict(),
    }
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    card = model_card(
        config["config"], config["preprocessing"], model.n_classes, model.in_channels,
        training=training, metrics=metrics, source=source,
    )
    write_model_card(directory, card)
    return directory


# ----------------------------------------------------------------------- reading
def load_pretrained(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    cls: type[Model],
) -> Model:
    """The model at ``source``, on ``device`` (``"auto"``: CUDA when available) and in
    ``eval()`` mode, with its preprocessing.

    ``source`` is one of: a folder of `save_pretrained` (or its ``config.json`` or
    ``.safetensors`` file); a ``last.pt`` / ``best.pt`` of ``simmpnet train``; a file of
    `SimMPNet.save`; a Hugging Face Hub repository id (``"user/repo"``, only when no
    such local path exists), downloaded with ``huggingface_hub.snapshot_download`` (the
    keyword arguments but ``device`` go there).

    Raises:
        CheckpointError: anything that is not such a model, named as what it is (a TorchScript
            archive, an ONNX model, a training run folder, another model's files ...), or a Hub
            id that cannot be downloaded (no network, unknown repository).
    """
    path = Path(source)
    if path.is_dir():
        model = _load_folder(cls, path, None)
    elif path.is_file():
        model = _load_file(cls, path)
    elif isinstance(source, str) and _HUB_ID.match(source) and not source.startswith("."):
        folder = _download(source, revision, cache_dir, token, local_files_only, force_download)
        model = _load_folder(cls, folder, None, shown=f"{source} (Hugging Face Hub)")
    else:
        raise CheckpointError(f"{source}: no such file or folder")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def _download(
    repo_id: str, revision: str | None, cache_dir: Any, token: Any, local_files_only: bool, force_download: bool
) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - a dependency of timm
        raise CheckpointError(
            f"{repo_id}: no such file or folder here, and huggingface_hub (pip install huggingface_hub) "
            "is needed to download it from the Hugging Face Hub"
        ) from err
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            library_name="simmpnet",
        )
    except Exception as err:  # offline, unknown or gated repository, invalid id, Hub down ...
        raise CheckpointError(
            f"{repo_id}: no such file or folder here, and it could not be downloaded from the Hugging Face Hub "
            f"({type(err).__name__}: {one_line(err, 240)})"
        ) from err
    return Path(folder)


def _load_file(cls: type[Model], path: Path) -> Model:
    from .checkpoint import load_checkpoint

    if path.name == CONFIG_NAME:
        return _load_folder(cls, path.parent, None)
    if path.suffix == ".safetensors":
        if not (path.parent / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{path}: a safetensors weights file without the {CONFIG_NAME} that SimMPNet.save_pretrained "
                "writes next to it; this is not a Sim-MPNet folder"
            )
        return _load_folder(cls, path.parent, path)
    return model_from_checkpoint(load_checkpoint(path, map_location="cpu"), str(path), cls)


def model_from_checkpoint(payload: dict[str, Any], source: str, cls: type[Model]) -> Model:
    """A Sim-MPNet with its `Preprocessing` from a checkpoint dictionary: a training
    checkpoint (its training config gives the preprocessing, as for ``simmpnet predict``) or a
    file of `SimMPNet.save`."""
    from .checkpoint import MODEL_FORMAT, PEER_FORMAT, split_training_checkpoint

    kind = payload.get("format")
    part, train_config = split_training_checkpoint(payload)
    if isinstance(part, dict) and part.get("format") == PEER_FORMAT:
        name = part.get("name", "unet")
        network = NETWORK_TITLES.get(name, "a peer network")
        raise CheckpointError(
            f"{source}: holds {network} (model: {name}), not a Sim-MPNet; load it with "
            "simmpnet.loading.load_trained_model"
        )
    if not isinstance(part, dict) or part.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"{source}: not a Sim-MPNet checkpoint (format {kind!r}); expected the last.pt / best.pt of "
            "`simmpnet train` or a file of SimMPNet.save"
        )
    model = cls.from_payload(part, source)
    if train_config is not None:
        size = part.get("input_size", model.preprocessing.input_size)
        prep = Preprocessing.for_training_config(train_config, size, model.in_channels, source)
        model.preprocessing = check_preprocessing(model, prep, source)
    return model


def preprocessing_of_payload(payload: Mapping[str, Any], model: Model, source: str) -> Preprocessing:
    """The preprocessing a `SimMPNet.save` payload records, or the defaults of
    ``model`` at the payload's ``input_size`` (files written before preprocessing was
    recorded, and the model part of a training checkpoint)."""
    try:
        if isinstance(payload.get("preprocessing"), Mapping):
            prep = Preprocessing.from_dict(payload["preprocessing"])
        else:
            size = payload.get("input_size", model.config.img_size_a)
            prep = Preprocessing(input_size=int(size), in_channels=model.in_channels)
    except (InputError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: malformed preprocessing ({err})") from err
    return check_preprocessing(model, prep, source)


def _read_config(path: Path, shown: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{shown}: {CONFIG_NAME} is not readable JSON ({one_line(err)})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{shown}: {CONFIG_NAME} is not a JSON object")
    if config.get("format") != PRETRAINED_FORMAT:
        named = next(
            (f"{key}: {one_line(config[key], 80)}" for key in _FOREIGN_CONFIG_KEYS if key in config), None
        )
        raise CheckpointError(
            f"{shown}: {CONFIG_NAME} describes another model" + (f" ({named})" if named else "")
            + f", not a Sim-MPNet of SimMPNet.save_pretrained (format {PRETRAINED_FORMAT!r})"
        )
    from .checkpoint import check_format_version

    check_format_version(config.get("version", 1), PRETRAINED_VERSION, f"{shown}: {CONFIG_NAME}")
    return config


def _load_folder(cls: type[Model], folder: Path, weights: Path | None, shown: str | None = None) -> Model:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .checkpoint import _nonfinite_tensors

    shown = shown or str(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        runs = [name for name in ("best.pt", "last.pt") if (folder / name).is_file()]
        if runs:
            raise CheckpointError(
                f"{shown}: a training run folder, not a save_pretrained folder; pass one of its checkpoints "
                f"({', '.join(str(folder / name) for name in runs)})"
            )
        raise CheckpointError(
            f"{shown}: no {CONFIG_NAME} here; SimMPNet.from_pretrained reads the folder that "
            f"SimMPNet.save_pretrained writes ({CONFIG_NAME} + {WEIGHTS_NAME})"
        )
    config = _read_config(config_path, shown)
    weights = weights or folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{shown}: {CONFIG_NAME} without its weights file {weights.name}")
    try:
        architecture = cls.config_class.from_dict(config["config"])
        model = cls(int(config["n_classes"]), int(config["in_channels"]), architecture)
        prep = Preprocessing.from_dict(config["preprocessing"])
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise CheckpointError(f"{shown}: malformed {CONFIG_NAME} ({one_line(err)})") from err
    model.preprocessing = check_preprocessing(model, prep, shown)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({one_line(err)})") from err
    bad = next(_nonfinite_tensors(state, ""), None)
    if bad is not None:
        raise CheckpointError(f"{weights}: tensor {bad} holds NaN or Inf values; the weights are unusable")
    model.load_weights(state, str(weights))
    return model
