"""The one loader of trained models, for every command and application: a ``last.pt`` /
``best.pt`` of ``simmpnet train`` (Sim-MPNet or a peer network), a file of
`SimMPNet.save`, or a folder of
`SimMPNet.save_pretrained`.  The checkpoint
formats are decoded by `simmpnet.checkpoint`; devices are resolved by `simmpnet.device`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, split_training_checkpoint
from .device import resolve_device
from .models import SimMPNet
from .models.factory import input_size_of, model_from_payload
from .pretrained import Preprocessing

__all__ = ["load_trained_model", "resolve_device"]


def load_trained_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, int, dict]:
    """Model, input size and training config from a ``last.pt`` / ``best.pt``, a model file
    written by `SimMPNet.save` or a folder of `SimMPNet.save_pretrained` (whose
    preprocessing stands in for the training config)."""
    if Path(path).is_dir():
        model = SimMPNet.from_pretrained(path, device=device)
        prep = model.preprocessing
        keys = ("in_channels", "intensity_window", "class_names", "resample")
        return model, prep.input_size, {key: getattr(prep, key) for key in keys}
    payload = load_checkpoint(path, map_location="cpu")
    source = str(path)
    model_part, train_config = split_training_checkpoint(payload)
    config = train_config if train_config is not None else {}
    model = model_from_payload(model_part, source).to(device).eval()
    if "input_size" not in model_part and isinstance(model, SimMPNet):
        input_size = model.config.img_size_a
    else:
        input_size = input_size_of(model_part, source)
    if train_config is not None:
        # What the run did to its slices travels with its weights, for every network type.
        in_channels = int(getattr(model, "in_channels", config.get("in_channels", 1)))
        model.preprocessing = Preprocessing.for_training_config(config, input_size, in_channels, source)
    return model, input_size, config
