"""Dataset sources, read from small files written in each dataset's real format."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from pollen.data import Dataset, available_datasets, load_dataset
from pollen.data.idx import write_idx
from pollen.errors import DataError, MissingExtraError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def write_mnist_like(folder, n_train=12, n_test=5, gz=True, classes=10, stems=MNIST_STEMS):
    """Writes IDX image/label files; returns {split: (images, labels)} as written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = _pixels(n, seed), (np.arange(n) % classes).astype(np.uint8)
        image_stem, label_stem = stems[split]
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{image_stem}{suffix}", images)
        write_idx(folder / f"{label_stem}{suffix}", labels)
        written[split] = (images, labels)
    return written


def emnist_stems(split):
    return {s: (f"emnist-{split}-{s}-images-idx3-ubyte", f"emnist-{split}-{s}-labels-idx1-ubyte")
            for s in ("train", "test")}


def test_registry_names():
    assert available_datasets() == ["breast_cancer", "cifar10", "digits", "emnist", "femnist",
                                    "fmnist", "mnist", "synthetic", "wine"]
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*cifar10.*fmnist.*wine"):
        load_dataset("imagenet")


def test_unknown_option():
    with pytest.raises(DataError, match=r"unknown option\(s\) \['split'\].*no options"):
        load_dataset("fmnist", split="digits")


@pytest.fixture(scope="module")
def fmnist():
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return load_dataset("fmnist")


def test_fmnist_real(fmnist):
    assert fmnist.x_train.shape == (60000, 1, 28, 28) and fmnist.x_test.shape == (10000, 1, 28, 28)
    assert fmnist.x_train.dtype == np.float32 and fmnist.y_train.dtype == np.int64
    assert abs(float(fmnist.x_train.mean())) < 0.01 and abs(float(fmnist.x_train.std()) - 1) < 0.01
    assert np.bincount(fmnist.y_train).tolist() == [6000] * 10
    assert fmnist.num_classes == 10 and fmnist.input_shape == (1, 28, 28)


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion_mnist", "FMNIST"])
def test_fmnist_aliases_and_plain_files(tmp_path, name):
    written = write_mnist_like(tmp_path, gz=False)
    data = load_dataset(name, tmp_path)
    assert data.name == "fmnist" and data.x_train.shape == (12, 1, 28, 28)
    expected = (written["train"][0] / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(data.x_train[:, 0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.y_test, written["test"][1])


def test_fmnist_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fmnist", missing)
    message = str(info.value)
    assert str(missing / "train-images-idx3-ubyte") in message and "does not exist" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_mnist(tmp_path):
    written = write_mnist_like(tmp_path)
    data = load_dataset("mnist", str(tmp_path))
    np.testing.assert_allclose(data.x_test[:, 0], (written["test"][0] / 255 - 0.1307) / 0.3081,
                               rtol=1e-6, atol=1e-6)
    assert data.y_train.tolist() == written["train"][1].tolist()


def test_mnist_needs_dir_and_files(tmp_path):
    with pytest.raises(DataError, match="no default location"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset("mnist", tmp_path)


def test_mnist_mismatched_counts(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="12 images but .* 3 labels"):
        load_dataset("mnist", tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels.*labels span \[10, 10\]"):
        load_dataset("mnist", tmp_path)


def test_emnist_orientation_and_gzip_subfolder(tmp_path):
    folder = tmp_path / "gzip"
    write_mnist_like(folder, stems=emnist_stems("digits"))
    upright = np.zeros((12, 28, 28), np.uint8)
    upright[:, 0, 5] = 255  # a mark in the top row, column 5
    write_idx(folder / "emnist-digits-train-images-idx3-ubyte.gz", upright.transpose(0, 2, 1))
    data = load_dataset("emnist", tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_train.flags.c_contiguous
    top = data.x_train[:, 0]
    assert (top[:, 0, 5] > 0).all() and (top[:, 5, 0] < 0).all()
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-4


def test_emnist_letters_are_zero_based(tmp_path):
    write_mnist_like(tmp_path, stems=emnist_stems("letters"), classes=26)
    for split, n in (("train", 12), ("test", 5)):
        label_stem = emnist_stems("letters")[split][1]
        write_idx(tmp_path / f"{label_stem}.gz", (np.arange(n) % 26 + 1).astype(np.uint8))
    data = load_dataset("emnist", tmp_path, split="letters")
    assert data.num_classes == 26 and data.y_train.min() == 0 and data.y_train[0] == 0


def test_emnist_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown EMNIST split 'nope'.*digits.*balanced"):
        load_dataset("emnist", tmp_path, split="nope")


def test_femnist_needs_writers(tmp_path):
    write_mnist_like(tmp_path, stems=emnist_stems("digits"))
    with pytest.raises(DataError, match="emnist-digits-train-writers-idx1-ubyte.*writer id"):
        load_dataset("femnist", tmp_path)


def test_femnist_groups(tmp_path):
    write_mnist_like(tmp_path, stems=emnist_stems("digits"))
    writers = np.arange(12, dtype=np.int32) // 4 + 1000
    write_idx(tmp_path / "emnist-digits-train-writers-idx1-ubyte", writers)
    data = load_dataset("femnist", tmp_path)
    assert data.name == "femnist" and data.groups_train.dtype == np.int64
    np.testing.assert_array_equal(data.groups_train, writers)


def test_femnist_writer_count_mismatch(tmp_path):
    write_mnist_like(tmp_path, stems=emnist_stems("digits"))
    write_idx(tmp_path / "emnist-digits-train-writers-idx1-ubyte.gz", np.arange(3, dtype=np.int32))
    with pytest.raises(DataError, match="3 int32 values, expected 12"):
        load_dataset("femnist", tmp_path)


def write_cifar(folder, per_batch=4):
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = np.empty((per_batch, 3072), np.uint8)
        data[:, :1024], data[:, 1024:2048], data[:, 2048:] = 10, 20, 30 + i  # R, G, B planes
        batch = {b"data": data, b"labels": [(i + j) % 10 for j in range(per_batch)],
                 b"batch_label": name.encode()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_cifar10(tmp_path, point_at_parent):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    data = load_dataset("cifar10", tmp_path if point_at_parent else folder)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.x_train[0, 0], (10 / 255 - 0.4914) / 0.2023, rtol=1e-6)
    np.testing.assert_allclose(data.x_train[0, 1], (20 / 255 - 0.4822) / 0.1994, rtol=1e-6)
    np.testing.assert_allclose(data.x_test[0, 2], (35 / 255 - 0.4465) / 0.2010, rtol=1e-6)
    assert data.y_train[:5].tolist() == [0, 1, 2, 3, 1]


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        load_dataset("cifar10", tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: expected uint8 data of shape \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


def test_digits():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert abs(float(data.x_train.mean())) < 1e-5 and abs(float(data.x_train.std()) - 1) < 1e-4
    assert np.bincount(data.y_test).min() >= 35  # stratified: every digit in the test set


@pytest.mark.parametrize("name, features, classes",
                         [("breast_cancer", 30, 2), ("breast-cancer", 30, 2), ("wine", 13, 3)])
def test_tabular(name, features, classes):
    data = load_dataset(name)
    assert data.input_shape == (features,) and data.num_classes == classes
    total = len(data.y_train) + len(data.y_test)
    assert data.x_train.dtype == np.float32 and len(data.y_test) == round(0.2 * total)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(load_dataset(name).x_test, data.x_test)  # deterministic split


def test_sklearn_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'pollen-fl\[tabular\]'"):
        load_dataset("wine")


def test_synthetic():
    options = dict(num_classes=3, features=5, n_train=100, n_test=40)
    data = load_dataset("synthetic", seed=1, **options)
    assert data.x_train.shape == (100, 5) and data.x_test.shape == (40, 5)
    assert data.num_classes == 3
    again = load_dataset("synthetic", seed=1, **options)
    np.testing.assert_array_equal(data.x_train, again.x_train)
    assert not np.array_equal(data.y_train, load_dataset("synthetic", seed=2, **options).y_train)
    with pytest.raises(DataError, match="num_classes must be an integer >= 2"):
        load_dataset("synthetic", num_classes=1)


def test_dataset_validates():
    x, y = np.zeros((3, 2), np.float32), np.zeros(3, np.int64)
    with pytest.raises(DataError, match="expected int64"):
        Dataset("t", x, y.astype(np.int32), x, y, 2, (2,))
    with pytest.raises(DataError, match="expected input_shape"):
        Dataset("t", x, y, x, y, 2, (3,))
    with pytest.raises(DataError, match="labels in"):
        Dataset("t", x, y + 2, x, y, 2, (2,))
    assert "train=3" in repr(Dataset("t", x, y, x, y, 2, (2,)))
