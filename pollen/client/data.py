"""A party's data as the local trainer sees it, whatever form the app gave it in.

An app's ``load_data(ctx)`` may return ``(x, y)`` tensors (or numpy arrays), a ``Table`` from
``pollen.data`` loaders, any ``torch.utils.data.Dataset``, a ``DataLoader``, or a pair
``(train, held_out)`` / a dict ``{"train": …, "val": …}`` of those. :func:`party_data` turns the
answer into a :class:`PartyData` of sources with one small interface:

- :class:`Shard`: in-memory tensors (optionally a view by indices into tensors shared by all the
  parties of a simulation). The fast path: batches are slices of a permutation, no DataLoader, no
  per-sample Python.
- :class:`DatasetSource`: a ``Dataset`` (data larger than memory, lazy files); Pollen builds the
  ``DataLoader`` (seeded shuffling, ``--loader-workers`` processes).
- :class:`LoaderSource`: the app's own ``DataLoader``, used as it is (its batch size and order).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from pollen.errors import DataError

Batch = tuple[Any, torch.Tensor]  # (inputs: a tensor, a tuple of tensors or a dict of tensors, targets)
TARGET_KEYS = ("labels", "label", "targets", "target", "y")


class Shard:
    """A party's examples as tensors: its own, or a view (indices) into tensors shared by every party
    of a simulation, materialised only while the party trains (memory stays bounded by the parties
    training at once, not by the parties that exist).

    Args:
        x: inputs ``(N, ...)``.
        y: targets ``(N, ...)``.
        index: the rows of ``x``/``y`` that are this party's (None: all of them).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if index is None and int(x.shape[0]) != int(y.shape[0]):
            raise DataError(f"inputs and targets differ in length: x has {x.shape[0]} rows, y has {y.shape[0]}")
        self._x, self._y, self.index = x, y, index

    def __len__(self) -> int:
        return int(self._x.shape[0] if self.index is None else self.index.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of this shard."""
        if self.index is None:
            return self._x, self._y
        return self._x[self.index], self._y[self.index]

    def split(self, fraction: float, seed: int) -> tuple["Shard", "Shard"]:
        """(train, held-out) views: ``fraction`` of the rows, drawn by ``seed``, held out."""
        from pollen.data import split_holdout

        rows = np.arange(len(self)) if self.index is None else self.index.numpy()
        train, val = split_holdout(rows, fraction, seed)
        return (Shard(self._x, self._y, torch.from_numpy(np.sort(train))),
                Shard(self._x, self._y, torch.from_numpy(np.sort(val))))

    @property
    def raw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What an app's own ``train``/``evaluate`` receives: the ``(x, y)`` tensors."""
        return self.tensors()


class DatasetSource:
    """A ``torch.utils.data.Dataset`` of ``(inputs, target)`` items (or dicts with a ``labels``-like key).

    Args:
        dataset: the dataset (sized).
        workers: DataLoader worker processes.
    """

    def __init__(self, dataset: Dataset, workers: int = 0) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"a {type(dataset).__name__} without len() cannot be split or weighted; return a "
                            "DataLoader over it instead (Pollen then counts examples as they come)") from None
        self.dataset, self.workers, self._n = dataset, workers, int(n)

    def __len__(self) -> int:
        return self._n

    def loader(self, batch_size: int, generator: torch.Generator | None) -> DataLoader:
        """A DataLoader over the dataset: shuffled by ``generator`` (None: in order)."""
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                          num_workers=self.workers, persistent_workers=False)

    def split(self, fraction: float, seed: int) -> tuple["DatasetSource", "DatasetSource"]:
        from pollen.data import split_holdout

        train, val = split_holdout(np.arange(self._n), fraction, seed)
        return (DatasetSource(Subset(self.dataset, np.sort(train).tolist()), self.workers),
                DatasetSource(Subset(self.dataset, np.sort(val).tolist()), self.workers))

    @property
    def raw(self) -> Dataset:
        return self.dataset


class LoaderSource:
    """The app's own ``DataLoader``, iterated as it is (its batch size, order and workers)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader_ = loader
        try:
            self._n: int | None = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            self._n = None  # an IterableDataset: counted while training

    def __len__(self) -> int:
        return self._n or 0

    @property
    def sized(self) -> bool:
        return self._n is not None

    def loader(self, batch_size: int, generator: torch.Generator | None) -> DataLoader:
        return self.loader_

    @property
    def raw(self) -> DataLoader:
        return self.loader_


Source = Shard | DatasetSource | LoaderSource


@dataclass(frozen=True)
class PartyData:
    """One party's training data and optional held-out data (for federated evaluation)."""

    train: Source
    val: Source | None = None

    def eval_source(self) -> Source | None:
        """What federated evaluation uses: the held-out data (None when the party has none)."""
        return self.val if self.val is not None and len(self.val) > 0 else None


def split_batch(batch: Any) -> Batch:
    """``(inputs, targets)`` of a batch from a DataLoader: a pair, or a dict with a ``labels``-like key.

    Raises:
        DataError: a batch of another shape.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        if key is None:
            raise DataError(f"a dict batch needs the targets under one of {TARGET_KEYS}; got keys {sorted(batch)}")
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(f"each batch must be (inputs, targets) or a dict with 'labels'; got a {type(batch).__name__}"
                    + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or a tuple/list/dict of tensors) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def batch_size_of(inputs: Any) -> int:
    """Examples in a batch's inputs (a tensor, tuple or dict of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        return batch_size_of(next(iter(inputs.values())))
    return batch_size_of(inputs[0])


def iter_batches(source: Source, batch_size: int, generator: torch.Generator | None) -> Iterator[Batch]:
    """One pass over a DataLoader-backed source (``generator`` shuffles; None keeps the order)."""
    for batch in source.loader(batch_size, generator):  # type: ignore[union-attr]
        yield split_batch(batch)


# ------------------------------------------------------------ normalising an app's answer
def _is_array(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def _tensor(v: Any, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            raise DataError(f"{what} is a numpy array of Python objects; convert it to numbers first")
        return torch.from_numpy(np.ascontiguousarray(v))
    raise DataError(f"{what} must be a tensor or numpy array, got {type(v).__name__}")


def source(value: Any, workers: int = 0, what: str = "data") -> Source:
    """One source from what an app returned for one split.

    Raises:
        DataError: a value Pollen cannot train on (the message lists the accepted forms).
    """
    if isinstance(value, (Shard, DatasetSource, LoaderSource)):
        return value
    if isinstance(value, DataLoader):
        return LoaderSource(value)
    if isinstance(value, Dataset):
        return DatasetSource(value, workers)
    if hasattr(value, "x") and hasattr(value, "y") and _is_array(value.x):  # pollen.data.Table and the like
        return Shard(_tensor(value.x, f"{what}.x"), _tensor(value.y, f"{what}.y"))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_array(v) for v in value):
        return Shard(_tensor(value[0], f"{what} inputs"), _tensor(value[1], f"{what} targets"))
    raise DataError(f"{what}: cannot train on a {type(value).__name__}; return (x, y) tensors or arrays, a "
                    "pollen.data Table, a torch Dataset or a DataLoader (docs/app.md)")


def party_data(value: Any, workers: int = 0) -> tuple[PartyData, bool]:
    """An app's ``load_data`` answer as ``(PartyData, held_out_given)``.

    Accepted: one split (see :func:`source`); ``(train, held_out)`` where each is one split (or
    None); ``{"train": …, "val"|"test"|"held_out": …}``; a ``PartyData``.

    Raises:
        DataError: anything else.
    """
    if isinstance(value, PartyData):
        return value, value.val is not None
    if isinstance(value, Mapping):
        if "train" not in value:
            raise DataError(f"load_data returned a dict without 'train' (keys: {sorted(value)}); use "
                            "{'train': …, 'val': …}")
        held = next((value[k] for k in ("val", "test", "held_out", "holdout") if value.get(k) is not None), None)
        return (PartyData(source(value["train"], workers, "train data"),
                          None if held is None else source(held, workers, "held-out data")), held is not None)
    if (isinstance(value, (tuple, list)) and len(value) == 2 and not all(_is_array(v) for v in value)
            and not (hasattr(value, "x") and hasattr(value, "y"))):
        train, held = value
        return (PartyData(source(train, workers, "train data"),
                          None if held is None else source(held, workers, "held-out data")), held is not None)
    return PartyData(source(value, workers)), False
