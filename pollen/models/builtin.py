"""The built-in datasets and models, written as an app (docs/app.md) like any user's.

Which dataset and model come from the run configuration (``--dataset``, ``--model``,
``--scheme``, …), read from ``ctx.config``. In simulation every party's data is a view (indices)
into the training tensors loaded once per process; a deployed party reads the shard that
``pollen partition`` wrote for it (``pollen client --data data/party3``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pollen.client.data import Shard
from pollen.data import Dataset, load_dataset, partition, split_holdout
from pollen.errors import DataError
from pollen.models.registry import build_model, default_model_for

DEFAULT_DATASET = "fmnist"


def dataset_name(cfg: Any) -> str:
    """The configured built-in dataset (``fmnist`` when none is named)."""
    return cfg.data.dataset or DEFAULT_DATASET


@lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    ds = load_dataset(name, data_dir)
    return ds, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)


def dataset(cfg: Any) -> Dataset:
    """The configured dataset, loaded once per process."""
    return _dataset(dataset_name(cfg), cfg.data.data_dir)[0]


@lru_cache(maxsize=2)
def _parts(name: str, data_dir: str | None, scheme: str, parties: int, seed: int, alpha: float, k: int,
           sizes: str | None, party_size: int) -> tuple[np.ndarray, ...]:
    return tuple(partition(_dataset(name, data_dir)[0], scheme, parties, seed, alpha=alpha, classes_per_party=k,
                           sizes=sizes, party_size=party_size))


def parts(cfg: Any) -> tuple[np.ndarray, ...]:
    """Training-set indices of every party under the configured scheme (computed once per process)."""
    d = cfg.data
    return _parts(dataset_name(cfg), d.data_dir, d.partition, d.parties, cfg.run.seed, d.alpha, d.classes_per_party,
                  d.sizes, d.party_size)


def _is_shard(path: Path | None) -> bool:
    return path is not None and (path / "data.safetensors").is_file()


def model_name(cfg: Any, input_shape: tuple[int, ...]) -> str:
    """The configured model, or the dataset's default one."""
    return cfg.model.model or default_model_for(tuple(input_shape))


@lru_cache(maxsize=4)
def _transform(name: str, input_shape: tuple[int, ...]) -> torch.nn.Module | None:
    from pollen.models.features import fixed_features

    return fixed_features(build_model(name, input_shape, 2))


def served(cfg: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` as the configured model takes it: its fixed features, computed once (``scatter_linear``),
    or ``x`` itself."""
    shape = tuple(x.shape[1:])
    transform = _transform(model_name(cfg, shape), shape) if len(shape) == 3 else None
    if transform is None:
        return x
    from pollen.models.features import featurize

    return featurize(transform, x)


def shape_and_classes(ctx: Any) -> tuple[tuple[int, ...], int]:
    """(input shape, classes): from a deployed party's shard, else from the dataset."""
    if _is_shard(ctx.data_path):
        from pollen.data.shard_io import read_shard_meta

        meta = read_shard_meta(ctx.data_path)
        return tuple(meta["input_shape"]), int(meta["num_classes"])
    ds = dataset(ctx.config)
    return ds.input_shape, ds.num_classes


def model(ctx: Any) -> torch.nn.Module:
    """The configured built-in model for the dataset's input shape and classes."""
    shape, classes = shape_and_classes(ctx)
    return build_model(model_name(ctx.config, shape), shape, classes)


def load_data(ctx: Any) -> tuple[Shard, Shard]:
    """This party's (training, held-out) shards."""
    cfg = ctx.config
    holdout, seed = cfg.data.holdout, cfg.run.seed + ctx.party_index
    if _is_shard(ctx.data_path):
        return _deployed_shard(ctx)
    ds, x, y = _dataset(dataset_name(cfg), cfg.data.data_dir)
    idx = parts(cfg)[ctx.party_index]
    train, val = split_holdout(idx, holdout, seed) if holdout > 0 else (idx, idx[:0])
    x = served(cfg, x)
    return Shard(x, y, torch.from_numpy(np.sort(train))), Shard(x, y, torch.from_numpy(np.sort(val)))


def _deployed_shard(ctx: Any) -> tuple[Shard, Shard]:
    """A shard written by ``pollen partition``, cut and ordered exactly as simulation does."""
    from pollen.data import read_shard

    cfg = ctx.config
    x, y, meta = read_shard(ctx.data_path)
    if meta.get("dataset") != dataset_name(cfg):
        raise DataError(f"this party's shard is from dataset {meta.get('dataset')!r}, but the coordinator trains "
                        f"on {dataset_name(cfg)!r}; partition the right dataset or start the server with --dataset")
    from safetensors import safe_open

    with safe_open(str(Path(ctx.data_path) / "data.safetensors"), framework="numpy") as f:
        index = f.get_tensor("index") if "index" in f.keys() else None
    pos = np.arange(len(y))
    holdout = cfg.data.holdout
    train, val = split_holdout(pos, holdout, cfg.run.seed + ctx.party_index) if holdout > 0 else (pos, pos[:0])
    if index is not None:  # order examples by their training-set index, as simulation does
        train, val = train[np.argsort(index[train], kind="stable")], val[np.argsort(index[val], kind="stable")]
    xt, yt = served(cfg, torch.from_numpy(x)), torch.from_numpy(y)
    return Shard(xt, yt, torch.from_numpy(train)), Shard(xt, yt, torch.from_numpy(val))


def server_data(ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's test split, for the coordinator's evaluation."""
    ds = dataset(ctx.config)
    return served(ctx.config, torch.from_numpy(ds.x_test)), torch.from_numpy(ds.y_test)


metrics = ["accuracy"]
primary_metric = "accuracy"
