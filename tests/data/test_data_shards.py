"""Per-party shards on disk: round trip, report files, and broken or missing files."""

import json

import numpy as np
import pytest

from pollen.data import load_dataset, partition, read_shard, write_shards
from pollen.errors import DataError


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", num_classes=4, features=3, n_train=200, n_test=20)


def test_round_trip(tmp_path, data):
    parts = partition(data, "dirichlet", 4, seed=2, alpha=0.5)
    out = write_shards(data, parts, tmp_path, scheme="dirichlet", seed=2, params={"alpha": 0.5})
    assert out == tmp_path
    folders = sorted(tmp_path.glob("party*"))
    assert [f.name for f in folders] == ["party0", "party1", "party2", "party3"]
    for i, (folder, part) in enumerate(zip(folders, parts)):
        x, y, meta = read_shard(folder)
        np.testing.assert_array_equal(x, data.x_train[part])
        np.testing.assert_array_equal(y, data.y_train[part])
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert meta == {"dataset": "synthetic", "num_classes": 4, "input_shape": [3], "party": i,
                        "n": len(part), "scheme": "dirichlet", "seed": 2, "params": {"alpha": 0.5},
                        "label_counts": np.bincount(y, minlength=4).tolist()}
    assert read_shard(folders[0] / "data.safetensors")[2]["party"] == 0
    csv = (tmp_path / "histogram.csv").read_text().splitlines()
    assert csv[0] == "party,n,class_0,class_1,class_2,class_3" and len(csv) == 5
    assert csv[1].split(",")[1] == str(len(parts[0]))
    report = (tmp_path / "partition.md").read_text()
    assert "scheme=dirichlet, seed=2, alpha=0.5, parties=4, examples=200 of 200" in report
    assert "| party | n | 0 | 1 | 2 | 3 |" in report


def test_refuses_non_empty_then_overwrites(tmp_path, data):
    write_shards(data, partition(data, "iid", 5, seed=0), tmp_path, scheme="iid", seed=0)
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        write_shards(data, partition(data, "iid", 2, seed=0), tmp_path, scheme="iid", seed=0)
    two = partition(data, "iid", 2, seed=0)
    write_shards(data, two, tmp_path, scheme="iid", seed=0, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("party*")) == ["party0", "party1"]
    assert read_shard(tmp_path / "party1")[2]["n"] == 100


def test_out_of_range_indices(tmp_path, data):
    with pytest.raises(DataError, match="party 1's indices span"):
        write_shards(data, [np.arange(3), np.array([5, 200])], tmp_path, scheme="x", seed=0)


def test_missing_files(tmp_path, data):
    with pytest.raises(DataError, match=f"{tmp_path / 'party9' / 'data.safetensors'} not found"):
        read_shard(tmp_path / "party9")
    folder = write_shards(data, [np.arange(10)], tmp_path, scheme="iid", seed=0) / "party0"
    (folder / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json not found"):
        read_shard(folder)


def test_corrupt_files(tmp_path, data):
    folder = write_shards(data, [np.arange(10)], tmp_path, scheme="iid", seed=0) / "party0"
    meta_text = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json is not valid JSON"):
        read_shard(folder)
    meta = json.loads(meta_text)
    (folder / "meta.json").write_text(json.dumps({**meta, "n": 11}))
    with pytest.raises(DataError, match=r"holds x \(10, 3\).*declares x \(11, 3\)"):
        read_shard(folder)
    (folder / "meta.json").write_text(meta_text)
    blob = (folder / "data.safetensors").read_bytes()
    (folder / "data.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data.safetensors is corrupt"):
        read_shard(folder)
