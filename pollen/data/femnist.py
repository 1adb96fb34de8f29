"""Federated EMNIST split by writer, from the two formats it is published in.

- **LEAF** (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings"): ``train/*.json`` and
  ``test/*.json`` under the folder given (LEAF's ``data/femnist/data``), each file
  ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats]], "y": [...]}}}``;
  62 classes (digits, upper case, lower case); pixels in [0, 1] with 1 the white background.
- **TensorFlow Federated** (``tff.simulation.datasets.emnist``, the TFF seed's source):
  ``fed_emnist_train.h5`` / ``fed_emnist_test.h5`` (62 classes) or
  ``fed_emnist_digitsonly_train.h5`` / ``…_test.h5`` (10 classes), each with a group
  ``examples/<client id>`` holding ``pixels`` (n, 28, 28) float32 (1 = background) and ``label``
  (n,). Read with ``h5py`` (the ``femnist`` extra).

Both become a :class:`Dataset` whose ``groups_train`` is the writer of every training example
(the ``natural`` partitioner gives each party one writer's examples, or several writers' when there
are more writers than parties); the test set is every writer's test examples together. Pixels are
inverted to white ink on black (EMNIST's and MNIST's convention) and standardised with the
training pixels' mean and std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pollen.data.dataset import Dataset
from pollen.errors import DataError, require

LEAF_CLASSES = 62
TFF_FILES = {62: ("fed_emnist_train.h5", "fed_emnist_test.h5"),
             10: ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5")}
HOW_TO_GET = ("LEAF: git clone LEAF (github.com/TalwalkarLab/leaf), run `./preprocess.sh -s niid --sf 1.0 -k 0 -t "
              "sample` in data/femnist and pass --data-dir leaf/data/femnist/data; TFF: the files "
              "fed_emnist_train.h5 and fed_emnist_test.h5 that tff.simulation.datasets.emnist.load_data() caches "
              "(~/.keras/datasets), passed with --data-dir")


def detect(data_dir: Path) -> str | None:
    """``"leaf"``, ``"tff"`` or None: which writer-split format ``data_dir`` holds."""
    if any((data_dir / name).is_file() for pair in TFF_FILES.values() for name in pair):
        return "tff"
    if (data_dir / "train").is_dir() and any((data_dir / "train").glob("*.json")):
        return "leaf"
    return None


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert (1 = background → 0) and standardise with the training pixels' mean and std: (N, 1, 28, 28)."""
    x_train = (1.0 - x_train.reshape(-1, 1, 28, 28)).astype(np.float32)
    x_test = (1.0 - x_test.reshape(-1, 1, 28, 28)).astype(np.float32)
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def _leaf_split(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder} holds no LEAF .json files; {HOW_TO_GET}")
    users: list[str] = []
    xs, ys, owner = [], [], []
    for path in files:
        try:
            blob = json.loads(path.read_text())
            for user in blob["users"]:
                data = blob["user_data"][user]
                x = np.asarray(data["x"], dtype=np.float32)
                y = np.asarray(data["y"], dtype=np.int64)
                if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                    raise DataError(f"{path}: user {user!r} has x of shape {x.shape} and {len(y)} labels; "
                                    "expected (n, 784) and n")
                users.append(user)
                xs.append(x)
                ys.append(y)
                owner.append(np.full(len(y), len(users) - 1, dtype=np.int64))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a LEAF FEMNIST file ({type(exc).__name__}: {exc}); {HOW_TO_GET}") from None
    return users, np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)


def load_leaf(data_dir: Path) -> Dataset:
    """FEMNIST in LEAF's JSON format (``train/`` and ``test/`` under ``data_dir``).

    Raises:
        DataError: missing folders or files that are not LEAF's format.
    """
    users, x_train, y_train, writers = _leaf_split(data_dir / "train")
    _, x_test, y_test, _ = _leaf_split(data_dir / "test")
    _check_labels(y_train, y_test, LEAF_CLASSES, data_dir)
    x_train, x_test = _standardise(x_train, x_test)
    return Dataset("femnist", x_train, y_train, x_test, y_test, LEAF_CLASSES, (1, 28, 28), writers)


def _tff_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h5py = require("h5py", "femnist", "TensorFlow Federated's EMNIST .h5 files")
    xs, ys, owner = [], [], []
    try:
        with h5py.File(path, "r") as f:
            clients = sorted(f["examples"])
            for i, client in enumerate(clients):
                group = f["examples"][client]
                x = np.asarray(group["pixels"], dtype=np.float32)
                y = np.asarray(group["label"], dtype=np.int64).reshape(-1)
                if x.shape[1:] != (28, 28) or len(x) != len(y):
                    raise DataError(f"{path}: client {client!r} has pixels {x.shape} and {len(y)} labels; "
                                    "expected (n, 28, 28) and n")
                xs.append(x)
                ys.append(y)
                owner.append(np.full(len(y), i, dtype=np.int64))
    except (OSError, KeyError) as exc:
        raise DataError(f"{path} is not TFF's EMNIST file ({type(exc).__name__}: {exc}); {HOW_TO_GET}") from None
    if not xs:
        raise DataError(f"{path} holds no clients under 'examples'")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)


def load_tff(data_dir: Path, only_digits: bool | None = None) -> Dataset:
    """EMNIST in TFF's ``.h5`` files (the 62-class files, else the digits-only ones).

    Raises:
        DataError: neither pair of files is in ``data_dir``.
        MissingExtraError: h5py is not installed (the 'femnist' extra).
    """
    choices = [10] if only_digits else [62] if only_digits is False else [62, 10]
    for classes in choices:
        train, test = (data_dir / name for name in TFF_FILES[classes])
        if train.is_file() and test.is_file():
            x_train, y_train, writers = _tff_file(train)
            x_test, y_test, _ = _tff_file(test)
            _check_labels(y_train, y_test, classes, data_dir)
            x_train, x_test = _standardise(x_train, x_test)
            return Dataset("femnist", x_train, y_train, x_test, y_test, classes, (1, 28, 28), writers)
    wanted = " or ".join(" + ".join(TFF_FILES[c]) for c in choices)
    raise DataError(f"{data_dir} holds neither {wanted}; {HOW_TO_GET}")


def _check_labels(y_train: np.ndarray, y_test: np.ndarray, classes: int, where: Path) -> None:
    for y in (y_train, y_test):
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{where}: labels in [{y.min()}, {y.max()}], expected [0, {classes})")
