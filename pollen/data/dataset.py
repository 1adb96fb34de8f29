"""The in-memory dataset value every source returns and every partitioner reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pollen.errors import DataError


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled train/test split, already normalised and ready for training.

    Images are float32 ``(N, C, H, W)``; tabular data is float32 ``(N, F)`` standardised with
    the training set's statistics. Labels are int64 in ``[0, num_classes)``.

    Attributes:
        name: Canonical source name, e.g. ``"fmnist"``.
        x_train: Training inputs, ``(N_train, *input_shape)`` float32.
        y_train: Training labels, ``(N_train,)`` int64.
        x_test: Test inputs, ``(N_test, *input_shape)`` float32.
        y_test: Test labels, ``(N_test,)`` int64.
        num_classes: Number of classes.
        input_shape: Shape of one example, e.g. ``(1, 28, 28)`` or ``(30,)``.
        groups_train: Natural id (e.g. writer id) of each training example, ``(N_train,)``
            int64, used by the ``natural`` partitioner; None when the source has none.
    """

    name: str
    x_train: np.ndarray  # (N_train, *input_shape) float32
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, *input_shape) float32
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int
    input_shape: tuple[int, ...]
    groups_train: np.ndarray | None = None  # (N_train,) int64 natural ids, or None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.shape[1:] != self.input_shape:
                raise DataError(
                    f"dataset {self.name!r}: x_{split} has example shape {x.shape[1:]}, "
                    f"expected input_shape {self.input_shape}"
                )
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(
                    f"dataset {self.name!r}: y_{split} has shape {y.shape}, expected ({len(x)},)"
                )
            if y.dtype != np.int64:
                raise DataError(f"dataset {self.name!r}: y_{split} is {y.dtype}, expected int64")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(
                    f"dataset {self.name!r}: y_{split} holds labels in [{y.min()}, {y.max()}], "
                    f"expected [0, {self.num_classes})"
                )
        if self.groups_train is not None and self.groups_train.shape != self.y_train.shape:
            raise DataError(
                f"dataset {self.name!r}: groups_train has shape {self.groups_train.shape}, "
                f"expected {self.y_train.shape}"
            )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape}, "
            f"groups={'yes' if self.groups_train is not None else 'no'})"
        )
