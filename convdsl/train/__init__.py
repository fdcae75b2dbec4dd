"""Training and evaluation on real data that needs no download (design section 8).

``load_dataset`` gives a split classification dataset (``digits``, ``mnist1d``, a .npz file);
``train`` fits a graph on it as the module ``build`` makes of it (the torch backend's
``build_module``: this layer imports no backend) and writes the weights back into the graph;
``evaluate`` reports the accuracy of the graph's current weights.

The trainer (and torch) is imported on first use, so reading and checking a dataset (and
refusing a bad one) costs no torch import.
"""
from typing import Any

from convdsl.train.data import BUILTIN, DataError, Dataset, calibration_batches, check_fits, load_dataset

_TRAINER = ("OPTIMIZERS", "EpochStats", "TrainResult", "evaluate", "train")

__all__ = ["BUILTIN", "DataError", "Dataset", "calibration_batches", "check_fits", "load_dataset", *_TRAINER]


def __getattr__(name: str) -> Any:
    if name in _TRAINER:
        from convdsl.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'convdsl.train' has no attribute {name!r}")
