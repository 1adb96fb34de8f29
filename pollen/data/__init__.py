"""Data: sources, partitioners and per-party shards. Knows nothing of training or transport."""

from pollen.data.dataset import Dataset
from pollen.data.partition import (
    PARTITION_SCHEMES,
    dirichlet,
    format_histogram,
    iid,
    label_histogram,
    natural,
    partition,
    quantity_skew,
    shards,
    split_holdout,
)
from pollen.data.shard_io import read_shard, write_shards
from pollen.data.sources import available_datasets, load_dataset

__all__ = [
    "PARTITION_SCHEMES",
    "Dataset",
    "available_datasets",
    "dirichlet",
    "format_histogram",
    "iid",
    "label_histogram",
    "load_dataset",
    "natural",
    "partition",
    "quantity_skew",
    "read_shard",
    "shards",
    "split_holdout",
    "write_shards",
]
