"""Training and evaluation on real data that needs no download (design section 8).

``load_dataset`` gives a split classification dataset (``digits``, ``mnist1d``, a .npz file);
``train`` fits a graph on it as the module ``build`` makes of it (the torch backend's
``build_module``: this layer imports no backend) and writes the weights back into the graph;
``evaluate`` reports the accuracy of the graph's current weights.
"""
from convdsl.train.data import BUILTIN, DataError, Dataset, calibration_batches, check_fits, load_dataset
from convdsl.train.trainer import OPTIMIZERS, EpochStats, TrainResult, evaluate, train

__all__ = ["BUILTIN", "DataError", "Dataset", "calibration_batches", "check_fits", "load_dataset", "OPTIMIZERS",
           "EpochStats", "TrainResult", "evaluate", "train"]
