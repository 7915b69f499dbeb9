"""Building, saving and restoring the networks the trainer knows: Sim-MPNet and, as peers
on the same footing, MONAI's U-Net and nnU-Net's 2d U-Net.  A checkpoint records which one it holds, its settings and
the slice size it was trained at, so that prediction needs nothing but the file."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..checkpoint import PEER_FORMAT
from ..errors import CheckpointError, InputError
from ..networks import MODEL_NAMES
from .nnunet_unet import NNUNET_NAME, build_nnunet_unet, nnunet_unet_kwargs
from .simmpnet import SimMPNet

__all__ = ["MODEL_NAMES", "build_model", "model_payload", "model_from_payload", "input_size_of"]


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
    model.peer_name = "unet"  # kept for the checkpoint, with its settings
    model.peer_kwargs = dict(kwargs)
    return model


def build_model(
    name: str,
    n_classes: int,
    in_channels: int = 1,
    variant: str = "tiny",
    overrides: dict[str, Any] | None = None,
    pretrained: bool | str | os.PathLike = False,
) -> nn.Module:
    """Build ``"simmpnet"`` (a named variant plus config overrides), ``"unet"`` (MONAI's
    2D residual U-Net, overrides passed to its constructor) or ``"nnunet"`` (nnU-Net's 2d
    U-Net for slices of ``overrides["patch_size"]`` px, other overrides replacing its
    architecture keys; `simmpnet.models.nnunet_unet`)."""
    overrides = dict(overrides or {})
    if name == "simmpnet":
        return SimMPNet.from_variant(variant, n_classes, in_channels, pretrained=pretrained, **overrides)
    if name == "unet":
        return _build_unet(_unet_kwargs(n_classes, in_channels, overrides))
    if name == NNUNET_NAME:
        if "patch_size" not in overrides:
            raise InputError("model nnunet needs the slice size: model_overrides.patch_size (the config's input_size)")
        return build_nnunet_unet(nnunet_unet_kwargs(n_classes, in_channels, **overrides))
    raise InputError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")


def model_payload(model: nn.Module, input_size: int) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` (weights included) as plain containers."""
    if isinstance(model, SimMPNet):
        payload = model.checkpoint_payload()
    elif hasattr(model, "peer_kwargs"):
        payload = {
            "format": PEER_FORMAT, "name": model.peer_name, "kwargs": model.peer_kwargs, "state_dict": model.state_dict()
        }
    else:
        raise InputError(f"cannot save a {type(model).__name__}: not built by simmpnet.models.factory")
    payload["input_size"] = int(input_size)
    return payload


def model_from_payload(payload: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from `model_payload` output."""
    if payload.get("format") == PEER_FORMAT:
        name = payload.get("name", "unet")
        builders = {"unet": _build_unet, NNUNET_NAME: build_nnunet_unet}
        if name not in builders:
            raise CheckpointError(f"{source}: unknown peer network {name!r} (known: {', '.join(builders)})")
        try:
            model = builders[name](dict(payload["kwargs"]))
            model.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{source}: malformed {name} checkpoint ({str(err)[:300]})") from err
        return model
    return SimMPNet.from_payload(payload, source)


def input_size_of(payload: dict[str, Any], source: str = "checkpoint") -> int:
    try:
        return int(payload["input_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: the checkpoint does not record its input size") from err
