"""nnU-Net's 2d U-Net as a peer network: the ``PlainConvUNet`` that nnU-Net v2's planner
configures for square 2D slices of one size, built by nnU-Net's own functions.

The topology (number of stages, strides, kernel sizes) comes from nnU-Net's
``get_pool_and_conv_props`` for isotropic spacing and a patch of the slice size, with the
planner's defaults: 32 features in the first stage, doubled per stage up to 512, two 3 x 3
convolutions per stage in the encoder and the decoder, instance norm, leaky ReLU, feature maps
of at least 4 pixels at the bottom.  The network is built and initialised by nnU-Net's
``get_network_from_plans``.  It is trained on the same footing as the other networks (the
trainer's loss, augmentation and step budget), with one output (no deep supervision), not by
nnU-Net's own pipeline; for that, see docs/nnunet.md.

Needs the ``nnunet`` extra (``pip install simmpnet[nnunet]``).
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..errors import InputError

__all__ = ["NNUNET_NAME", "build_nnunet_unet", "nnunet_size_step", "nnunet_unet_kwargs"]

#: The name of this network in configs and checkpoints (``model: nnunet``).
NNUNET_NAME = "nnunet"

# nnU-Net v2's planner defaults for 2D (ExperimentPlanner: UNet_base_num_features,
# UNet_max_features_2d, UNet_featuremap_min_edge_length, UNet_blocks_per_stage_*).
_BASE_FEATURES, _MAX_FEATURES, _MIN_EDGE, _CONVS_PER_STAGE = 32, 512, 4, 2
_ARCHITECTURE = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
_IMPORTED = ("conv_op", "norm_op", "dropout_op", "nonlin")


_NEEDS_NNUNET = "model nnunet (nnU-Net's 2d U-Net) needs nnU-Net v2: pip install 'simmpnet[nnunet]'"


def _topology(size: int) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...], int]:
    """(strides, kernel sizes, the side nnU-Net would pad the patch to) for ``size`` px slices."""
    try:
        from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    except ImportError as err:
        raise InputError(_NEEDS_NNUNET) from err
    _, strides, kernels, patch, _ = get_pool_and_conv_props([1.0, 1.0], [size, size], _MIN_EDGE, 999999)
    return _pairs(strides), _pairs(kernels), int(patch[0])


def _pairs(values: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(a), int(b)) for a, b in values)


def nnunet_size_step(size: int) -> int:
    """The multiple of which the slice side must be for nnU-Net's topology at ``size`` px: the
    product of its strides (16 at 96 px, 32 at 128 px)."""
    return _stride_product(_topology(size)[0])


def _stride_product(strides: tuple[tuple[int, int], ...]) -> int:
    return math.prod(pair[0] for pair in strides)


def nnunet_unet_kwargs(n_classes: int, in_channels: int, patch_size: int, **overrides: Any) -> dict[str, Any]:
    """The settings of nnU-Net's 2d U-Net for ``patch_size`` px slices (plain containers, as a
    checkpoint keeps them); ``overrides`` replace architecture keys (``features_per_stage``, ...).

    Raises:
        InputError: a slice side that nnU-Net would pad (not a multiple of its strides' product).
    """
    strides, kernels, padded = _topology(int(patch_size))
    if padded != patch_size:
        raise InputError(
            f"input_size {patch_size} is not a side nnU-Net's 2d U-Net takes as is (it would pad the patch to "
            f"{padded}); use a multiple of {_stride_product(strides)}"
        )
    stages = len(strides)
    architecture = {
        "n_stages": stages,
        "features_per_stage": [min(_MAX_FEATURES, _BASE_FEATURES * 2**i) for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [_CONVS_PER_STAGE] * stages,
        "n_conv_per_stage_decoder": [_CONVS_PER_STAGE] * (stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    unknown = sorted(set(overrides) - set(architecture))
    if unknown:
        raise InputError(f"model_overrides of model nnunet: unknown key(s) {', '.join(unknown)}; known: {', '.join(architecture)}")
    architecture.update(overrides)
    return {"n_classes": int(n_classes), "in_channels": int(in_channels), "patch_size": int(patch_size),
            "architecture": architecture}


def build_nnunet_unet(kwargs: dict[str, Any]) -> nn.Module:
    """nnU-Net's 2d U-Net from `nnunet_unet_kwargs` output, with nnU-Net's initialisation.

    Shapes:
        input ``(B, in_channels, S, S)``, output ``(B, n_classes, S, S)`` logits.
    """
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError as err:
        raise InputError(_NEEDS_NNUNET) from err
    model = get_network_from_plans(
        _ARCHITECTURE, dict(kwargs["architecture"]), _IMPORTED, kwargs["in_channels"], kwargs["n_classes"],
        allow_init=True, deep_supervision=False,
    )
    model.peer_name = NNUNET_NAME  # kept for the checkpoint, with its settings
    model.peer_kwargs = kwargs
    return model
