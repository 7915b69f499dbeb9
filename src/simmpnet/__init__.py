"""simmpnet: Sim-MPNet (ICCV 2025) medical image segmentation, device-agnostic and fast."""
import logging

from .models import VARIANTS, SimMPNet, SimMPNetConfig, WLDSchedule

__version__ = "0.1.0"
__all__ = ["SimMPNet", "SimMPNetConfig", "VARIANTS", "WLDSchedule", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
