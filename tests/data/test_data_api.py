"""The public API of pollen.data is exactly what its __init__ exports."""

import pollen.data


def test_public_api_pinned():
    assert sorted(pollen.data.__all__) == [
        "Dataset", "PARTITION_SCHEMES", "available_datasets", "dirichlet", "format_histogram",
        "iid", "label_histogram", "load_dataset", "natural", "partition", "quantity_skew",
        "read_shard", "shards", "split_holdout", "write_shards",
    ]
    assert all(hasattr(pollen.data, name) for name in pollen.data.__all__)
    assert callable(pollen.data.shards)  # the partitioner, not a module
