"""The user's app: the seam between Pollen and the user's problem (docs/app.md).

An app is a plain Python file or module with functions, no subclassing::

    def model():                       # required: a fresh torch.nn.Module (or model(ctx))
    def load_data(ctx):                # required: this party's data (+ optional held-out data)
    loss = torch.nn.BCEWithLogitsLoss()          # optional (default: cross-entropy)
    metrics = ["auc", "f1"]                       # optional: names from pollen.metrics or name -> fn
    primary_metric = "auc"                        # optional: what "best" and the plots use
    def train(model, data, config, ctx): ...      # optional: your own local loop
    def evaluate(model, data, ctx): ...           # optional: your own evaluation -> {"loss": …, …}
    def server_data(ctx): ...                     # optional: data the coordinator evaluates on
    config = {"federation": {"rounds": 20}}       # optional: defaults under the TOML file and flags

``ctx`` (:class:`Context`) says who is asking: ``party_id``, ``num_parties``, ``data_path`` (the
party's own files in deployment; ``--data-dir`` with ``{party}`` replaced in simulation),
``seed``, ``device``, ``role`` and the run ``config``. ``ctx.partition(x, y)`` cuts data held in
one place into this party's share by the configured scheme, for simulations.

The built-in datasets and models are an app written the same way (``pollen.models.builtin``), so
there is one path through Pollen, and it is the one users take.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from pollen.errors import ConfigError, PollenError

BUILTIN = "pollen.models.builtin"  # the reference of the built-in datasets' app
ROLE_PARTY, ROLE_SERVER = "party", "server"
_FUNCTIONS = ("model", "load_data", "loss", "metrics", "train", "evaluate", "server_data", "primary_metric",
              "config", "augment")


class AppError(ConfigError):
    """The user's app is missing a function, or one of its functions raised (file and line named)."""


@dataclass(frozen=True)
class Context:
    """What an app's functions know about where they run.

    Attributes:
        party_id: this party's id (``"server"`` on the coordinator).
        num_parties: parties in the federation.
        data_path: this party's own data (deployment: ``pollen client --data``; simulation:
            ``--data-dir`` with ``{party}`` replaced by the party id), or None.
        seed: the run seed.
        device: where the model trains (``torch.device``).
        role: ``party`` or ``server``.
        config: the whole run configuration (``pollen.config.RunConfig``).
    """

    party_id: str
    num_parties: int
    data_path: Path | None
    seed: int
    device: Any
    role: str = ROLE_PARTY
    config: Any = None

    @property
    def party_index(self) -> int:
        """The party id as an integer (0 … num_parties − 1 in simulation)."""
        from pollen.client.party import party_index

        return party_index(self.party_id)

    def partition(self, x: Any, y: Any = None, *, labels: Any = None, groups: Any = None) -> Any:
        """This party's share of data held in one place, split by the run's scheme (``--scheme``,
        ``--alpha``, ``--sizes``, …) and seed: every party's call cuts the same split.

        Args:
            x: inputs (tensor or array), or a ``Dataset``.
            y: targets (tensor or array) when ``x`` is not a Dataset.
            labels: class labels for label-skewed schemes when ``y`` is not a class vector (or
                ``x`` is a Dataset).
            groups: natural ids per example for the ``natural`` scheme.

        Returns:
            ``(x_part, y_part)`` for tensors/arrays, a ``Subset`` for a Dataset.
        """
        import numpy as np
        import torch
        from torch.utils.data import Dataset, Subset

        n = len(x)
        lab = labels if labels is not None else y
        idx = partition_rows(self.config, n, None if lab is None else np.asarray(lab), groups)[self.party_index]
        if isinstance(x, Dataset) and y is None:
            return Subset(x, idx.tolist())
        take = torch.from_numpy(idx) if isinstance(x, torch.Tensor) else idx
        return x[take], y[torch.from_numpy(idx) if isinstance(y, torch.Tensor) else idx]


_PARTS_CACHE: dict[tuple, Any] = {}


def partition_rows(cfg: Any, n: int, labels: Any, groups: Any = None) -> list:
    """Row indices per party for ``n`` examples under ``cfg.data``'s scheme (cached per labels object:
    a simulation's parties all cut the same split without recomputing it)."""
    import numpy as np

    from pollen.data import Dataset, partition

    d = cfg.data
    key = (n, id(labels), id(groups), d.partition, d.parties, d.alpha, d.classes_per_party, d.sizes, d.party_size,
           cfg.run.seed)
    hit = _PARTS_CACHE.get(key)
    if hit is not None and hit[1] is labels and hit[2] is groups:
        return hit[0]
    lab = np.zeros(n, np.int64)
    if d.partition in ("dirichlet", "shards"):  # label-skewed schemes read class labels
        arr = None if labels is None else np.asarray(labels)
        if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iub" or (n and arr.min() < 0):
            raise ConfigError(f"--scheme {d.partition} splits by class: call ctx.partition(x, y) with a vector of "
                              "class ids as y, or pass labels=")
        lab = arr.astype(np.int64)
    # the partitioners read a Dataset; only its training labels (and groups) matter here
    ds = Dataset("app", np.zeros((n, 1), np.float32), lab, np.zeros((1, 1), np.float32), np.zeros(1, np.int64),
                 int(lab.max()) + 1 if n else 1, (1,), None if groups is None else np.asarray(groups, np.int64))
    parts = partition(ds, d.partition, d.parties, cfg.run.seed, alpha=d.alpha, classes_per_party=d.classes_per_party,
                      sizes=d.sizes, party_size=d.party_size)
    if len(_PARTS_CACHE) > 8:
        _PARTS_CACHE.clear()
    _PARTS_CACHE[key] = (parts, labels, groups)
    return parts


@dataclass(frozen=True)
class App:
    """A loaded app: the user's functions, checked, with Pollen's defaults filled in.

    Attributes:
        reference: how to load it again in another process (a file path or a module name), or
            None when it was given as an object that cannot be imported by name.
        model: ``model()`` or ``model(ctx)`` → a fresh ``nn.Module``.
        load_data: ``load_data(ctx)`` → the party's data.
        loss: ``loss(outputs, targets)`` → a scalar tensor (None: cross-entropy).
        metrics: name → ``pollen.metrics.Metric``.
        primary_metric: the metric "best" and plots use, and whether higher is better.
        train, evaluate, server_data: the optional functions, or None.
        config: the app's config defaults (nested dict, like a TOML file).
        augment: ``augment(x, generator)`` for training batches (the built-in datasets' crop/flip).
    """

    reference: str | None
    model: Callable[..., Any]
    load_data: Callable[[Context], Any]
    loss: Callable[[Any, Any], Any] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    primary_metric: tuple[str, bool] = ("accuracy", True)
    train: Callable[..., Any] | None = None
    evaluate: Callable[..., Any] | None = None
    server_data: Callable[[Context], Any] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    augment: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        """A short name for run folders and reports."""
        if self.reference is None:
            return "app"
        if self.reference == BUILTIN:
            return "builtin"
        if self.reference.endswith(".py"):
            path = Path(self.reference)
            return path.parent.name if path.stem == "app" and path.parent.name else path.stem  # examples/hospitals/app.py: hospitals
        return self.reference.rsplit(".", 1)[-1]

    @property
    def builtin(self) -> bool:
        return self.reference == BUILTIN

    def build_model(self, ctx: Context) -> Any:
        """A fresh model from the app's ``model()`` (or ``model(ctx)``).

        Raises:
            AppError: ``model`` raised or did not return an ``nn.Module``.
        """
        import torch.nn as nn

        fn = self.model
        made = call_user(fn, "model", *((ctx,) if _wants_arg(fn) else ()))
        if not isinstance(made, nn.Module):
            raise AppError(f"app {self.reference}: model() returned a {type(made).__name__}, not a torch.nn.Module")
        return made


def _wants_arg(fn: Callable[..., Any]) -> bool:
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 1


def call_user(fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> Any:
    """Call one of the app's functions; an exception it raises becomes an ``AppError`` that names
    the function, the error and the app's own file and line (a Pollen error passes through).

    Raises:
        AppError: the function raised.
    """
    try:
        return fn(*args, **kwargs)
    except PollenError:
        raise
    except Exception as exc:  # noqa: BLE001 - any error in user code is reported the same way
        frames = [f for f in traceback.extract_tb(exc.__traceback__)[1:] if "/pollen/" not in f.filename.replace("\\", "/")
                  or "/examples/" in f.filename.replace("\\", "/")]
        where = f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
        raise AppError(f"your app's {what} raised {type(exc).__name__}: {exc}{where}") from exc


# ------------------------------------------------------------ loading
def load_app(ref: Any = None) -> App:
    """Load an app.

    Args:
        ref: a path to a ``.py`` file, an importable module name (``pkg.mod`` or ``pkg.mod:obj``),
            a module or any object/dict with the app's functions; None: the built-in app of the
            configured dataset.

    Raises:
        AppError: the file or module cannot be found or imported, or ``model``/``load_data`` are
            missing or not callable.
    """
    if ref is None:
        ref = BUILTIN
    if isinstance(ref, App):
        return ref
    if isinstance(ref, (str, Path)):
        reference, obj = _import(str(ref))
    else:
        obj = ref
        reference = _reference_of(ref)
    return _from_object(obj, reference)


def _import(ref: str) -> tuple[str, Any]:
    path = Path(ref).expanduser()
    if ref.endswith(".py") or path.suffix == ".py" or path.is_file() or "/" in ref:
        if not path.is_file():
            raise AppError(f"app file {path} does not exist (give a .py file with model() and load_data(ctx), "
                           "or an importable module name)")
        path = path.resolve()
        name = "pollen_app_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise AppError(f"cannot import {path} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            folder = str(path.parent)
            if folder not in sys.path:  # the app may import modules that sit beside it
                sys.path.insert(0, folder)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # noqa: BLE001
                del sys.modules[name]
                tb = traceback.extract_tb(exc.__traceback__)
                line = next((f"{f.filename}:{f.lineno}" for f in reversed(tb) if f.filename == str(path)), str(path))
                raise AppError(f"importing app {path} failed: {type(exc).__name__}: {exc} ({line})") from exc
        return str(path), module
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(f"app {ref!r} is neither a .py file nor an importable module ({exc})") from exc
    if attr:
        if not hasattr(module, attr):
            raise AppError(f"module {module_name!r} has no attribute {attr!r}")
        return ref, getattr(module, attr)
    return ref, module


def _reference_of(obj: Any) -> str | None:
    """A reference another process can load ``obj`` by: its module's file or name."""
    if isinstance(obj, ModuleType):
        if obj.__name__.startswith("pollen_app_") and getattr(obj, "__file__", None):
            return str(Path(obj.__file__).resolve())
        if obj.__name__ != "__main__":
            return obj.__name__
        file = getattr(obj, "__file__", None)
        return str(Path(file).resolve()) if file else None
    return None


def _from_object(obj: Any, reference: str | None) -> App:
    from pollen.metrics import lower_is_better_name, resolve_metrics

    get = (lambda k: obj.get(k)) if isinstance(obj, Mapping) else (lambda k: getattr(obj, k, None))
    where = reference or type(obj).__name__
    for required in ("model", "load_data"):
        if not callable(get(required)):
            raise AppError(f"app {where} has no {required}() function; an app defines model() and "
                           "load_data(ctx) (docs/app.md)")
    for optional in ("loss", "train", "evaluate", "server_data", "augment"):
        value = get(optional)
        if value is not None and not callable(value):
            raise AppError(f"app {where}: {optional} must be a function, got {type(value).__name__}")
    metrics = resolve_metrics(get("metrics"))
    loss = get("loss")
    if not metrics and loss is None:
        metrics = resolve_metrics(["accuracy"])  # cross-entropy: a classifier
    primary = get("primary_metric")
    if primary is None:
        name = next(iter(metrics), "loss")
        primary = (name, metrics[name].higher_is_better if name in metrics else False)
    else:
        name, higher = (primary, None) if isinstance(primary, str) else (str(primary[0]), bool(primary[1]))
        if name not in metrics and name != "loss" and get("evaluate") is None:
            raise AppError(f"app {where}: primary_metric {name!r} is not one of its metrics "
                           f"({', '.join(['loss', *metrics])}); add it to metrics, or compute it in evaluate()")
        if higher is None:
            higher = metrics[name].higher_is_better if name in metrics else not lower_is_better_name(name)
        primary = (name, higher)
    config = get("config") or {}
    if not isinstance(config, Mapping):
        raise AppError(f"app {where}: config must be a dict like a TOML file ({{'federation': {{'rounds': 20}}}})")
    return App(reference=reference, model=get("model"), load_data=get("load_data"), loss=loss, metrics=metrics,
               primary_metric=primary, train=get("train"), evaluate=get("evaluate"), server_data=get("server_data"),
               config=dict(config), augment=get("augment"))


def app_namespace(**functions: Any) -> SimpleNamespace:
    """An app from keyword functions, for notebooks and tests: ``app_namespace(model=…, load_data=…)``."""
    unknown = sorted(set(functions) - set(_FUNCTIONS))
    if unknown:
        raise AppError(f"unknown app function(s) {unknown}; an app may define {', '.join(_FUNCTIONS)}")
    return SimpleNamespace(**functions)
