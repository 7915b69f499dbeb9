"""Sim-MPNet as the network of nnU-Net v2 (``pip install "simmpnet[nnunet]"``; docs/nnunet.md).

nnU-Net plans, preprocesses, samples patches, augments, splits into folds, validates, predicts
with its sliding window and evaluates; Sim-MPNet is the network.  The pieces:

* `nnUNetTrainerSimMPNet` and its variants: nnU-Net trainers
  (subclasses of ``nnUNetTrainer``) that build Sim-MPNet for the planned patch size, commit its
  memory after every optimiser step, drive W-LD from the epoch loss and map the four heads
  onto nnU-Net's loss.
* `simmpnet.nnunet.run`: plan and preprocess, train, predict, evaluate and compare through
  nnU-Net's Python API with a trainer *class* (nnU-Net itself looks trainers up by name inside
  its own package only); ``simmpnet nnunet ...`` on the command line.
* `simmpnet.nnunet.convert`: the demo brain data in nnU-Net's raw layout.

Importing this package imports neither torch nor nnU-Net; the names below load on first use.
"""
from __future__ import annotations

from .._lazy import lazy_attributes

__all__ = [
    "TRAINERS",
    "convert_brain_demo",
    "evaluate_folder",
    "load_simmpnet",
    "nnUNetTrainerSimMPNet",
    "nnUNetTrainerSimMPNetTiny",
    "nnUNetTrainerSimMPNet_AdamW",
    "nnUNetTrainerSimMPNetTiny_AdamW",
    "plan_and_preprocess",
    "predict_folder",
    "train_fold",
    "use_folders",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "TRAINERS": "simmpnet.nnunet.trainer",
        "load_simmpnet": "simmpnet.nnunet.trainer",
        "nnUNetTrainerSimMPNet": "simmpnet.nnunet.trainer",
        "nnUNetTrainerSimMPNetTiny": "simmpnet.nnunet.trainer",
        "nnUNetTrainerSimMPNet_AdamW": "simmpnet.nnunet.trainer",
        "nnUNetTrainerSimMPNetTiny_AdamW": "simmpnet.nnunet.trainer",
        "convert_brain_demo": "simmpnet.nnunet.convert",
        "use_folders": "simmpnet.nnunet.folders",
        "plan_and_preprocess": "simmpnet.nnunet.run",
        "train_fold": "simmpnet.nnunet.run",
        "predict_folder": "simmpnet.nnunet.run",
        "evaluate_folder": "simmpnet.nnunet.run",
    },
)
