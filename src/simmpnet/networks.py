"""The networks simmpnet trains, by the name that configs, the command line and checkpoints
use, and what to call them in messages.  No torch here: the command line lists them without
importing it (`simmpnet.models.factory` builds them)."""
from __future__ import annotations

__all__ = ["MODEL_NAMES", "NETWORK_TITLES"]

#: name -> what a message calls it.
NETWORK_TITLES = {"simmpnet": "Sim-MPNet", "unet": "MONAI's U-Net", "nnunet": "nnU-Net's 2d U-Net"}
#: The values of the config key ``model`` (and ``--model``).
MODEL_NAMES = tuple(NETWORK_TITLES)
