"""The public API of pollen.data is exactly what its __init__ exports."""

import pollen.data


def test_public_api_pinned():
    assert sorted(pollen.data.__all__) == [
        "Dataset", "ImageFolder", "PARTITION_SCHEMES", "Table", "available_datasets", "dirichlet", "format_histogram",
        "iid", "label_histogram", "load_dataset", "load_image_folder", "natural", "parse_sizes", "partition",
        "quantity_skew", "read_csv", "read_parquet", "read_shard", "read_tensors", "shards", "sizes", "split_holdout",
        "write_shards",
    ]
    assert all(hasattr(pollen.data, name) for name in pollen.data.__all__)
    assert callable(pollen.data.shards)  # the partitioner, not a module
