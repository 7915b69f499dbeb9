"""simmpnet: Sim-MPNet (ICCV 2025) medical image segmentation, device-agnostic and fast."""
import logging

from ._lazy import lazy_attributes

__version__ = "0.1.0"
__all__ = ["SimMPNet", "SimMPNetConfig", "VARIANTS", "WLDSchedule", "Preprocessing", "__version__"]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {**{name: "simmpnet.models" for name in __all__[:4]}, "Preprocessing": "simmpnet.pretrained"},
)

logging.getLogger(__name__).addHandler(logging.NullHandler())
