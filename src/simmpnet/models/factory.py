"""Building, saving and restoring the networks the trainer knows: Sim-MPNet and, as a peer
on the same footing, MONAI's U-Net.  A checkpoint records which one it holds, its settings and
the slice size it was trained at, so that prediction needs nothing but the file."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..checkpoint import PEER_FORMAT
from ..errors import CheckpointError, InputError
from .simmpnet import SimMPNet

__all__ = ["MODEL_NAMES", "build_model", "model_payload", "model_from_payload", "input_size_of"]

MODEL_NAMES = ("simmpnet", "unet")


def _unet_kwargs(n_classes: int, in_channels: int, overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        "spatial_dims": 2,
        "in_channels": in_channels,
        "out_channels": n_classes,
        "channels": [32, 64, 128, 256, 512],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
    }
    kwargs.update(overrides)
    return kwargs


def _build_unet(kwargs: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    model = UNet(**kwargs)
    model.peer_kwargs = dict(kwargs)  # kept for the checkpoint
    return model


def build_model(
    name: str,
    n_classes: int,
    in_channels: int = 1,
    variant: str = "tiny",
    overrides: dict[str, Any] | None = None,
    pretrained: bool | str | os.PathLike = False,
) -> nn.Module:
    """Build ``"simmpnet"`` (a named variant plus config overrides) or ``"unet"`` (MONAI's
    2D residual U-Net, overrides passed to its constructor)."""
    overrides = dict(overrides or {})
    if name == "simmpnet":
        return SimMPNet.from_variant(variant, n_classes, in_channels, pretrained=pretrained, **overrides)
    if name == "unet":
        return _build_unet(_unet_kwargs(n_classes, in_channels, overrides))
    raise InputError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")


def model_payload(model: nn.Module, input_size: int) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` (weights included) as plain containers."""
    if isinstance(model, SimMPNet):
        payload = model.checkpoint_payload()
    elif hasattr(model, "peer_kwargs"):
        payload = {"format": PEER_FORMAT, "name": "unet", "kwargs": model.peer_kwargs, "state_dict": model.state_dict()}
    else:
        raise InputError(f"cannot save a {type(model).__name__}: not built by simmpnet.models.factory")
    payload["input_size"] = int(input_size)
    return payload


def model_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from `model_payload` output."""
    if payload.get("format") == PEER_FORMAT:
        try:
            model = _build_unet(dict(payload["kwargs"]))
            model.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{source}: malformed U-Net checkpoint ({str(err)[:300]})") from err
        return model
    return SimMPNet.from_payload(payload, source)


def input_size_of(payload: dict[str, Any], source: str = "checkpoint") -> int:
    try:
        return int(payload["input_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: the checkpoint does not record its input size") from err
