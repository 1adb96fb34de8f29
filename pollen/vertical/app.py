"""The vertical app: what a user brings for vertical federated learning (docs/vertical.md).

A plain Python file or module, no subclassing::

    def load_data(ctx):          # this party's table: ids, its own feature columns, and (guest) labels
        return {"ids": ids, "x": x, "y": y}          # or (ids, x) / (ids, x, y)
    def bottom_model(ctx):       # split learning: this feature holder's nn.Module (ctx.num_features inputs)
    def top_model(ctx):          # split learning, guest: the nn.Module on the concatenated bottom outputs
    loss = torch.nn.BCEWithLogitsLoss()     # optional (default: BCE with logits for one output, else cross-entropy)

``ctx`` has ``party_id``, ``role`` (guest, host, arbiter), ``num_parties`` (feature holders),
``data_path`` (the party's own file), ``seed``, ``num_features`` (for ``bottom_model``) and
``bottom_outputs`` (every feature holder's output width, for ``top_model``). Hetero logistic
regression needs only ``load_data``.

The built-in datasets (``breast_cancer``, ``wine_binary``, ``synthetic``) are such an app: the
columns are cut into one contiguous block per feature holder, the ids are the row numbers, each
party's rows come in its own shuffled order, and ``--drop`` removes a seeded fraction of each
party's rows so that the parties' id sets differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pollen.app import call_user
from pollen.errors import ConfigError, DataError

BUILTIN_DATASETS = ("breast_cancer", "wine_binary", "synthetic")


@dataclass
class VerticalContext:
    """What a vertical app's functions are told."""

    party_id: str
    role: str
    num_parties: int
    seed: int
    data_path: Path | None = None
    num_features: int | None = None
    bottom_outputs: dict[str, int] = field(default_factory=dict)
    dataset: str | None = None
    drop: float = 0.0


@dataclass
class PartyTable:
    """One party's rows: ids (one per row), features (N, d) float32, labels (N,) at the guest."""

    ids: list[Any]
    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class VerticalApp:
    """A loaded vertical app."""

    name: str
    reference: str | None
    load_data: Callable[..., Any]
    bottom_model: Callable[..., Any] | None = None
    top_model: Callable[..., Any] | None = None
    loss: Any = None


def load_vertical_app(ref: Any = None) -> VerticalApp:
    """The app at ``ref`` (a .py path or module name), or the built-in one when None.

    Raises:
        ConfigError: the app cannot be imported or has no ``load_data``.
    """
    if ref is None:
        return VerticalApp("builtin", None, builtin_load_data, builtin_bottom_model, builtin_top_model)
    if isinstance(ref, VerticalApp):
        return ref
    from pollen.app import _import  # the one importer of user apps (paths and module names)

    if isinstance(ref, (str, Path)):
        reference, obj = _import(str(ref))
    else:
        reference, obj = None, ref
    get = (lambda k: obj.get(k)) if isinstance(obj, dict) else (lambda k: getattr(obj, k, None))
    if not callable(get("load_data")):
        raise ConfigError(f"vertical app {reference or obj!r} has no load_data(ctx) function: it must return this "
                          "party's {'ids': …, 'x': …, 'y': … (guest only)}")
    name = Path(reference).stem if reference and reference.endswith(".py") else str(reference or "app").split(".")[-1]
    return VerticalApp(name, reference, get("load_data"), get("bottom_model"), get("top_model"), get("loss"))


def party_table(app: VerticalApp, ctx: VerticalContext) -> PartyTable:
    """This party's table from the app's ``load_data(ctx)``, checked.

    Raises:
        DataError: a table of the wrong shape (ids and rows differ, no labels at the guest, …).
    """
    got = call_user(app.load_data, "load_data(ctx)", ctx)
    if isinstance(got, dict):
        ids, x, y = got.get("ids"), got.get("x"), got.get("y")
    elif isinstance(got, (tuple, list)) and len(got) in (2, 3):
        ids, x, y = (*got, None) if len(got) == 2 else got
    else:
        raise DataError(f"party {ctx.party_id}: load_data(ctx) must return {{'ids': …, 'x': …, 'y': …}} or (ids, x[, y]), "
                        f"got {type(got).__name__}")
    if ids is None or x is None:
        raise DataError(f"party {ctx.party_id}: load_data(ctx) gave no {'ids' if ids is None else 'x'}")
    ids = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) != len(ids):
        raise DataError(f"party {ctx.party_id}: {len(ids)} ids but features of shape {list(x.shape)} (one row per id expected)")
    if len(set(map(str, ids))) != len(ids):
        raise DataError(f"party {ctx.party_id}: its ids are not unique")
    if not np.isfinite(x).all():
        raise DataError(f"party {ctx.party_id}: its features contain NaN or Inf")
    if ctx.role == "guest":
        if y is None:
            raise DataError("the guest (party 0) holds the labels: its load_data(ctx) must return 'y'")
        y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).reshape(-1)
        if len(y) != len(ids):
            raise DataError(f"the guest has {len(ids)} ids but {len(y)} labels")
    else:
        y = None
    return PartyTable(ids, x, y)


# ------------------------------------------------------------ the built-in app
def joined(dataset: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset whole: (x float32 (N, d), y int64 (N,) in {0, 1}).

    Raises:
        ConfigError: an unknown name.
    """
    if dataset == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
    elif dataset == "wine_binary":  # class 0 against the rest
        from sklearn.datasets import load_wine

        x, y = load_wine(return_X_y=True)
        y = (y == 0).astype(np.int64)
    elif dataset == "synthetic":
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(1000, 12))
        y = (x @ rng.normal(size=12) + 0.3 * rng.normal(size=1000) > 0).astype(np.int64)
    else:
        raise ConfigError(f"unknown vertical dataset {dataset!r}; built-in: {', '.join(BUILTIN_DATASETS)}")
    return np.asarray(x, np.float32), np.asarray(y, np.int64)


def column_blocks(num_features: int, parties: int) -> list[np.ndarray]:
    """The columns of each feature holder: contiguous, as equal as possible."""
    if parties > num_features:
        raise ConfigError(f"{parties} feature holders for {num_features} columns: at most one party per column")
    return np.array_split(np.arange(num_features), parties)


def builtin_load_data(ctx: VerticalContext) -> dict[str, Any]:
    """Party ``ctx.party_id``'s columns of the built-in dataset, its rows shuffled, a seeded
    ``ctx.drop`` fraction of them missing."""
    x, y = joined(ctx.dataset or "breast_cancer", ctx.seed)
    i = int(ctx.party_id)
    cols = column_blocks(x.shape[1], ctx.num_parties)[i]
    rng = np.random.default_rng([ctx.seed, 7919, i])
    rows = rng.permutation(len(x))
    if ctx.drop > 0:
        rows = rows[: int(round(len(rows) * (1 - ctx.drop)))]
    out: dict[str, Any] = {"ids": [f"id{r}" for r in rows], "x": x[rows][:, cols]}
    if ctx.role == "guest":
        out["y"] = y[rows]
    return out


def builtin_bottom_model(ctx: VerticalContext) -> Any:
    """A small MLP bottom: num_features → 16 → 8."""
    import torch.nn as nn

    return nn.Sequential(nn.Linear(ctx.num_features, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())


def builtin_top_model(ctx: VerticalContext) -> Any:
    """The top: concatenated bottom outputs → 1 logit."""
    import torch.nn as nn

    return nn.Sequential(nn.Linear(sum(ctx.bottom_outputs.values()), 1))
