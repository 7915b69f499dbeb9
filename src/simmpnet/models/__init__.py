"""Sim-MPNet building blocks: the prototype memory, DMW-LA, W-LD, DS-GIM and the network."""
from .dmwla import DMWLA, NonLocalAttention
from .dsgim import DSGIM, decay_coefficient
from .memory import PrototypeMemory, kmeans
from .simmpnet import VARIANTS, MemoryConfig, SimMPNet, SimMPNetConfig
from .wld import WLDSchedule

__all__ = [
    "DMWLA",
    "DSGIM",
    "MemoryConfig",
    "NonLocalAttention",
    "PrototypeMemory",
    "SimMPNet",
    "SimMPNetConfig",
    "VARIANTS",
    "WLDSchedule",
    "decay_coefficient",
    "kmeans",
]
