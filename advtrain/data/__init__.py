"""Data pipeline: dataset loading (npz or torchvision), batch augmentation, reproducible loaders.

See ``docs/INTERFACES.md`` (Data) for the contract the trainer and evaluator rely on.
"""

from __future__ import annotations

from advtrain.data.datasets import DATASETS, DatasetInfo, get_info, load_arrays, resolve_root
from advtrain.data.loaders import (
    Datasets,
    TrainLoader,
    iterate_batches,
    make_datasets,
    train_val_split,
)
from advtrain.data.synthetic import AuxDataset
from advtrain.data.transforms import random_crop_flip, to_float

__all__ = [
    "DATASETS",
    "AuxDataset",
    "DatasetInfo",
    "Datasets",
    "TrainLoader",
    "get_info",
    "iterate_batches",
    "load_arrays",
    "make_datasets",
    "random_crop_flip",
    "resolve_root",
    "to_float",
    "train_val_split",
]
