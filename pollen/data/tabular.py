"""Small in-memory sources: scikit-learn's bundled sets and a synthetic classification task.

scikit-learn is an optional dependency (extra ``tabular``): without it these sources raise
:class:`pollen.errors.MissingExtraError` with the ``pip install`` line. Every split is
deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pollen.data.dataset import Dataset
from pollen.errors import DataError, require

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _sklearn_split(loader_name: str) -> tuple[np.ndarray, ...]:
    """Loads a bundled scikit-learn set and splits it 80/20, stratified, seed 0.

    Returns:
        ``(x_train, x_test, y_train, y_test)`` with the loader's raw values.
    """
    require("sklearn", "tabular", f"dataset {loader_name!r}")
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = getattr(datasets, f"load_{loader_name}")()
    x = bunch.images if loader_name == "digits" else bunch.data
    return tuple(train_test_split(x, bunch.target.astype(np.int64), test_size=TEST_FRACTION,
                                  random_state=SPLIT_SEED, stratify=bunch.target))


def _standardise(x_train: np.ndarray, x_test: np.ndarray,
                 axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Standardises both arrays with the training set's mean and std (per ``axis``), float32."""
    mean = x_train.mean(axis=axis)
    std = x_train.std(axis=axis)
    std = np.where(std > 0, std, 1.0)  # constant features stay at 0 instead of dividing by 0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _tabular(name: str, loader_name: str, num_classes: int) -> Dataset:
    x_train, x_test, y_train, y_test = _sklearn_split(loader_name)
    x_train, x_test = _standardise(x_train, x_test, axis=0)  # per feature
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, x_train.shape[1:])


def load_digits(data_dir: Path | None) -> Dataset:
    """scikit-learn's 8x8 digits as images (1, 8, 8): x/16, then train mean/std."""
    x_train, x_test, y_train, y_test = _sklearn_split("digits")
    x_train, x_test = _standardise(x_train / 16.0, x_test / 16.0, axis=None)  # one scalar pair
    return Dataset("digits", x_train[:, None], y_train, x_test[:, None], y_test, 10, (1, 8, 8))


def load_breast_cancer(data_dir: Path | None) -> Dataset:
    """Wisconsin breast cancer, 30 features, 2 classes."""
    return _tabular("breast_cancer", "breast_cancer", 2)


def load_wine(data_dir: Path | None) -> Dataset:
    """Wine recognition, 13 features, 3 classes."""
    return _tabular("wine", "wine", 3)


def load_synthetic(data_dir: Path | None, num_classes: int = 10, features: int = 20,
                   n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Dataset:
    """Gaussian clusters: one unit-variance blob per class around a random centre.

    Args:
        data_dir: Ignored.
        num_classes: Number of classes (at least 2).
        features: Number of features.
        n_train: Training examples.
        n_test: Test examples.
        seed: Seed of the generator that draws centres, labels and noise.
    """
    for key, value, low in (("num_classes", num_classes, 2), ("features", features, 1),
                            ("n_train", n_train, 1), ("n_test", n_test, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"synthetic: {key} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, features))  # (C, F)
    y = rng.integers(num_classes, size=n_train + n_test)
    x = centres[y] + rng.normal(size=(n_train + n_test, features))  # (N, F)
    x_train, x_test = _standardise(x[:n_train], x[n_train:], axis=0)
    return Dataset("synthetic", x_train, y[:n_train], x_test, y[n_train:], num_classes, (features,))
