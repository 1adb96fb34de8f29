"""Data: sources, partitioners, per-party shards and loaders of a party's own files. Knows nothing
of training or transport."""

from pollen.data.dataset import Dataset
from pollen.data.files import (
    ImageFolder,
    Table,
    load_image_folder,
    read_csv,
    read_parquet,
    read_tensors,
)
from pollen.data.partition import (
    PARTITION_SCHEMES,
    dirichlet,
    format_histogram,
    iid,
    label_histogram,
    natural,
    parse_sizes,
    partition,
    quantity_skew,
    shards,
    sizes,
    split_holdout,
)
from pollen.data.shard_io import read_shard, write_shards
from pollen.data.sources import available_datasets, load_dataset

__all__ = [
    "PARTITION_SCHEMES",
    "Dataset",
    "ImageFolder",
    "Table",
    "available_datasets",
    "dirichlet",
    "format_histogram",
    "iid",
    "label_histogram",
    "load_dataset",
    "load_image_folder",
    "natural",
    "parse_sizes",
    "partition",
    "quantity_skew",
    "read_csv",
    "read_parquet",
    "read_shard",
    "read_tensors",
    "shards",
    "sizes",
    "split_holdout",
    "write_shards",
]
