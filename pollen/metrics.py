"""Evaluation metrics a federated app picks from, and how the federation combines them.

Each metric maps a model's outputs and the targets over a party's WHOLE evaluation set to one
Python float. The federation combines the parties' values by an example-weighted mean and skips
NaN values (a metric that is undefined on a party's data, such as the AUC of a one-class set).

Output conventions (the functions dispatch on the shapes):

- multi-class: ``outputs`` are logits ``(N, C)`` with C ≥ 2 and ``targets`` are class indices
  ``(N,)`` (or ``(N, 1)``) of any dtype with integer values in ``[0, C)``; the prediction is
  ``outputs.argmax(1)`` (the first maximum on ties). For C = 2 this is also the binary case, with
  positive-class score ``softmax(outputs)[:, 1]``.
- binary with one output: ``outputs`` are logits ``(N,)`` or ``(N, 1)`` (score
  ``sigmoid(outputs)``, predicted positive when the logit is > 0) and ``targets`` are ``(N,)`` or
  ``(N, 1)`` with values 0/1 of any dtype.
- multilabel (``multilabel_*``): ``outputs`` are logits ``(N, L)``, ``targets`` are ``(N, L)``
  with values 0/1; a label is predicted positive when its logit is > 0.
- regression (``mae``, ``mse``, ``rmse``, ``r2``): ``outputs`` and ``targets`` have N rows and the
  same number of elements, ``(N,)``, ``(N, 1)`` or ``(N, D)``; both are flattened, so every metric
  is taken over all N·D elements (``r2`` is ``sklearn.metrics.r2_score`` of the flattened values,
  ``rmse`` the square root of the all-element MSE).

Metric by metric:

- ``accuracy``: fraction of correct predictions (multi-class or either binary form).
- ``auc``: binary ROC AUC as the Mann–Whitney U statistic over n⁺·n⁻, with average ranks for tied
  scores, which is exact under ties (Hanley and McNeil, "The meaning and use of the area under a
  receiver operating characteristic (ROC) curve", Radiology 1982). For C > 2: the macro mean of
  one-vs-rest AUCs over the classes present in the targets (Provost and Domingos, "Well-trained
  PETs: improving probability estimation trees", 2000; Fawcett, "An introduction to ROC
  analysis", 2006). NaN when the targets hold a single class.
- ``precision``, ``recall``, ``f1``: of the positive class 1 in both binary forms; for C > 2 the
  unweighted (macro) mean over the classes present in the targets or the predictions. A ratio with
  a zero denominator counts as 0.0 (scikit-learn's ``zero_division=0``).
- ``mae``, ``mse``, ``rmse``, ``r2``: see regression above; ``r2`` is NaN when the targets are
  constant (SS_tot = 0).
- ``multilabel_accuracy``: the Hamming accuracy, the fraction of correct (example, label) pairs;
  ``multilabel_f1``: the micro-averaged F1 over all (example, label) pairs.

Every function runs under ``torch.no_grad()``, accepts tensors on any device, computes in float64
on a CPU copy (exact rank sums up to about 10⁶ examples) and returns NaN for an empty set or for
outputs that hold NaN (a diverged model). Targets or shapes that fit no convention raise
``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pollen.errors import ConfigError

__all__ = [
    "BUILTIN", "RESERVED_NAMES", "Metric", "accuracy", "auc", "f1", "lower_is_better_name", "mae", "mse",
    "multilabel_accuracy", "multilabel_f1", "precision", "r2", "recall", "resolve_metrics", "rmse",
]

RESERVED_NAMES = frozenset({"loss", "num_examples", "round"})  # keys the federation writes itself
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAN = float("nan")
_REGRESSION_HINT = "for regression outputs use mae, mse, rmse or r2"


@dataclass(frozen=True)
class Metric:
    """A named evaluation metric and how the federation may combine it.

    The federation combines per-party values by an example-weighted mean, Σᵢ nᵢ·vᵢ / Σᵢ nᵢ. For a
    *decomposable* metric (accuracy, MAE, MSE, multilabel Hamming accuracy) that mean equals the
    value on the pooled data of all parties. For the others (AUC, F1, precision, recall, RMSE, R²)
    it does not: the weighted mean of per-party AUCs is not the AUC of the pooled data, and it can
    be higher or lower. The federation still reports the weighted mean for those, and the report
    says so with ``combine_note``.

    Attributes:
        name: the key the value is reported under.
        fn: ``fn(outputs, targets) -> float`` over a whole evaluation set.
        higher_is_better: whether a larger value means a better model (False for errors).
        decomposable: whether the example-weighted mean of per-party values equals the pooled value.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool = True
    decomposable: bool = True

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"metric {self.name!r}: fn must be callable(outputs, targets) -> float, "
                              f"got {type(self.fn).__name__}")

    @property
    def combine_note(self) -> str:
        """How the federated value relates to the pooled one: "" when they are equal."""
        if self.decomposable:
            return ""
        return f"example-weighted mean of per-party values (not the pooled {self.name})"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(self.fn(outputs, targets))


# ---------------------------------------------------------------- parsing the conventions
def _cpu64(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _undefined(scores: torch.Tensor) -> bool:
    """True for an empty set or NaN scores, where every metric is NaN."""
    return scores.numel() == 0 or bool(torch.isnan(scores).any())


@dataclass(frozen=True)
class _Classes:
    """Outputs and targets of a classification set, in one of the two class conventions."""

    y: torch.Tensor  # (N,) int64 true class
    pred: torch.Tensor  # (N,) int64 predicted class
    scores: torch.Tensor  # (N,) positive-class ranking score if num_classes == 2, else (N, C)
    num_classes: int  # 2 for both binary forms
    undefined: bool  # empty set or NaN scores (NaN or clashing infinite outputs)


def _log_softmax_exact_ties(o: torch.Tensor) -> torch.Tensor:
    """log softmax(o) ``(N, C)``, bitwise equal for rows that are permutations or shifts of each
    other, so that tied probabilities stay tied (``torch.log_softmax`` sums each row in its own
    order and can split them by an ulp, which changes rank-based AUCs)."""
    z = o - o.max(dim=1, keepdim=True).values  # (N, C) shift-invariant
    return z - torch.logsumexp(torch.sort(z, dim=1).values, dim=1, keepdim=True)  # sorted: order-invariant


def _classes(outputs: torch.Tensor, targets: torch.Tensor, metric: str) -> _Classes:
    """Reads (outputs, targets) as multi-class ``(N, C)`` or binary one-output ``(N,)``/``(N, 1)``.

    Raises:
        ConfigError: shapes or target values that fit neither convention.
    """
    o, t = _cpu64(outputs), _cpu64(targets)
    if o.ndim not in (1, 2):
        raise ConfigError(f"{metric} needs outputs of shape (N,), (N, 1) or (N, C), got {tuple(o.shape)}")
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        hint = ("; for one-hot targets pass targets.argmax(1); multilabel targets need multilabel_accuracy or "
                "multilabel_f1") if t.shape == o.shape else ""
        raise ConfigError(f"{metric} needs class targets of shape (N,) or (N, 1), got {tuple(t.shape)}{hint}")
    if o.shape[0] != t.shape[0]:
        raise ConfigError(f"{metric}: outputs have {o.shape[0]} rows but targets have {t.shape[0]}")
    binary = o.ndim == 1 or o.shape[1] == 1
    num_classes = 2 if binary else o.shape[1]
    fractional = t != t.round()  # NaN targets too
    if bool(fractional.any()):
        raise ConfigError(f"{metric} needs class targets (integer class indices), got {t[fractional][0].item():g}; "
                          f"{_REGRESSION_HINT}")
    outside = (t < 0) | (t >= num_classes)
    if bool(outside.any()):
        value = t[outside][0].item()
        if binary:
            raise ConfigError(f"{metric}: one output column is the binary form, so targets must be 0 or 1, got "
                              f"{value:g}; a model of C classes needs outputs (N, C), and {_REGRESSION_HINT}")
        raise ConfigError(f"{metric}: outputs have {num_classes} class columns, so targets must be class indices "
                          f"in [0, {num_classes}), got {value:g}")
    y = t.long()
    if binary:
        logit = o.reshape(-1)  # (N,)
        return _Classes(y, (logit > 0).long(), logit, 2, _undefined(logit))
    if num_classes == 2:
        # softmax(o)[:, 1] = sigmoid(o1 - o0): rank by the difference, which never saturates
        diff = o[:, 1] - o[:, 0]  # (N,)
        return _Classes(y, o.argmax(1), diff, 2, _undefined(diff))
    log_p = _log_softmax_exact_ties(o)  # (N, C) ranks like softmax(o), column by column
    return _Classes(y, o.argmax(1), log_p, num_classes, _undefined(log_p))


def _regression(outputs: torch.Tensor, targets: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened float64 outputs and targets, ``(N·D,)`` each.

    Raises:
        ConfigError: different row counts or element counts.
    """
    o, t = _cpu64(outputs), _cpu64(targets)
    if o.ndim == 0 or t.ndim == 0 or o.shape[0] != t.shape[0] or o.numel() != t.numel():
        raise ConfigError(f"{metric} needs outputs and targets with the same rows and number of elements "
                          f"((N,), (N, 1) or (N, D)), got {tuple(o.shape)} and {tuple(t.shape)}")
    return o.reshape(-1), t.reshape(-1)


def _multilabel(outputs: torch.Tensor, targets: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Flattened predictions and 0/1 targets as booleans, ``(N·L,)`` each, and whether the set is
    empty or the outputs hold NaN.

    Raises:
        ConfigError: different shapes or targets that are not 0/1.
    """
    o, t = _cpu64(outputs), _cpu64(targets)
    if o.ndim not in (1, 2) or o.shape != t.shape:
        raise ConfigError(f"{metric} needs outputs and targets of the same shape (N, L), "
                          f"got {tuple(o.shape)} and {tuple(t.shape)}")
    bad = (t != 0) & (t != 1)
    if bool(bad.any()):
        raise ConfigError(f"{metric} needs multilabel targets with values 0 or 1, got {t[bad][0].item():g}")
    return (o > 0).reshape(-1), (t == 1).reshape(-1), _undefined(o)


# ---------------------------------------------------------------- classification
def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` ``(N,)``, tied values sharing the mean of their ranks."""
    sorted_x, order = torch.sort(x, stable=True)
    _, group, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).to(torch.float64)  # (G,) rank of each group's last member
    mean_rank = last - (counts - 1) / 2  # (G,) mean of ranks last-count+1 .. last
    ranks = torch.empty_like(x)
    ranks[order] = mean_rank[group]
    return ranks


def _rank_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """AUC = (R⁺ − n⁺(n⁺+1)/2) / (n⁺ n⁻), R⁺ the positives' rank sum; NaN without both classes."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return _NAN
    rank_sum = _average_ranks(score)[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@torch.no_grad()
def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of examples whose predicted class is the target (multi-class or binary)."""
    c = _classes(outputs, targets, "accuracy")
    return _NAN if c.undefined else (c.pred == c.y).double().mean().item()


@torch.no_grad()
def auc(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """ROC AUC (binary), or the macro one-vs-rest AUC over the classes present (C > 2)."""
    c = _classes(outputs, targets, "auc")
    if c.undefined:
        return _NAN
    if c.num_classes == 2:
        return _rank_auc(c.scores, c.y == 1)
    present = torch.unique(c.y).tolist()
    if len(present) < 2:
        return _NAN
    # one sort per class present: a loop over classes, never over examples
    return sum(_rank_auc(c.scores[:, k], c.y == k) for k in present) / len(present)


def _counting_metric(outputs: torch.Tensor, targets: torch.Tensor, metric: str) -> float:
    """Precision, recall or F1 of class 1 (binary) or macro over the classes present (C > 2)."""
    c = _classes(outputs, targets, metric)
    if c.undefined:
        return _NAN
    tp = torch.bincount(c.y[c.pred == c.y], minlength=c.num_classes).double()  # (C,)
    predicted = torch.bincount(c.pred, minlength=c.num_classes).double()  # (C,) tp + fp
    actual = torch.bincount(c.y, minlength=c.num_classes).double()  # (C,) tp + fn
    if c.num_classes == 2:
        keep = torch.tensor([False, True])  # binary: the positive class only
    else:
        keep = (predicted + actual) > 0
    num, den = {"precision": (tp, predicted), "recall": (tp, actual), "f1": (2 * tp, predicted + actual)}[metric]
    num, den = num[keep], den[keep]
    return torch.where(den > 0, num / den.clamp(min=1), 0.0).mean().item()


@torch.no_grad()
def precision(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """TP / (TP + FP) of class 1 (binary), or its macro mean over classes (C > 2)."""
    return _counting_metric(outputs, targets, "precision")


@torch.no_grad()
def recall(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """TP / (TP + FN) of class 1 (binary), or its macro mean over classes (C > 2)."""
    return _counting_metric(outputs, targets, "recall")


@torch.no_grad()
def f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """2·TP / (2·TP + FP + FN) of class 1 (binary), or its macro mean over classes (C > 2)."""
    return _counting_metric(outputs, targets, "f1")


# ---------------------------------------------------------------- multilabel
@torch.no_grad()
def multilabel_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Hamming accuracy: the fraction of (example, label) pairs predicted correctly."""
    pred, y, undefined = _multilabel(outputs, targets, "multilabel_accuracy")
    return _NAN if undefined else (pred == y).double().mean().item()


@torch.no_grad()
def multilabel_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Micro-averaged F1: 2·TP / (2·TP + FP + FN) summed over all (example, label) pairs."""
    pred, y, undefined = _multilabel(outputs, targets, "multilabel_f1")
    if undefined:
        return _NAN
    tp, den = 2 * (pred & y).sum().item(), pred.sum().item() + y.sum().item()
    return tp / den if den else 0.0


# ---------------------------------------------------------------- regression
@torch.no_grad()
def mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean absolute error over all elements."""
    o, t = _regression(outputs, targets, "mae")
    return _NAN if o.numel() == 0 else (o - t).abs().mean().item()


@torch.no_grad()
def mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error over all elements."""
    o, t = _regression(outputs, targets, "mse")
    return _NAN if o.numel() == 0 else (o - t).square().mean().item()


@torch.no_grad()
def rmse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Square root of the mean squared error over all elements."""
    return math.sqrt(mse(outputs, targets))


@torch.no_grad()
def r2(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Coefficient of determination 1 − SS_res / SS_tot over all elements; NaN if SS_tot = 0."""
    o, t = _regression(outputs, targets, "r2")
    if o.numel() == 0:
        return _NAN
    ss_tot = (t - t.mean()).square().sum().item()
    return 1.0 - (o - t).square().sum().item() / ss_tot if ss_tot > 0 else _NAN


BUILTIN: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", accuracy),
    Metric("auc", auc, decomposable=False),
    Metric("f1", f1, decomposable=False),
    Metric("precision", precision, decomposable=False),
    Metric("recall", recall, decomposable=False),
    Metric("mae", mae, higher_is_better=False),
    Metric("mse", mse, higher_is_better=False),
    Metric("rmse", rmse, higher_is_better=False, decomposable=False),
    Metric("r2", r2, decomposable=False),
    Metric("multilabel_accuracy", multilabel_accuracy),
    Metric("multilabel_f1", multilabel_f1, decomposable=False),
)}


# ---------------------------------------------------------------- user specs
def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"metric name {name!r} is not valid: use letters, digits and underscores, "
                          "not starting with a digit (e.g. 'val_auc')")
    if name in RESERVED_NAMES:
        raise ConfigError(f"metric name {name!r} is reserved (the federation reports "
                          f"{', '.join(sorted(RESERVED_NAMES))} itself); choose another name")
    return name


def _builtin(key: str) -> Metric:
    try:
        return BUILTIN[key]
    except KeyError:
        raise ConfigError(f"unknown metric {key!r}; built-in metrics are: {', '.join(BUILTIN)}") from None


def _to_metric(name: str, entry: object) -> Metric:
    """The Metric a spec entry names, reported under ``name``."""
    if isinstance(entry, str):
        return _to_metric(name, _builtin(entry))
    if isinstance(entry, Metric):
        return entry if entry.name == name else dataclasses.replace(entry, name=name)
    if callable(entry):
        return Metric(name, entry, higher_is_better=bool(getattr(entry, "higher_is_better", True)),
                      decomposable=bool(getattr(entry, "decomposable", False)))
    raise ConfigError(f"metric {name!r} must be a built-in name, a Metric or a callable(outputs, targets) "
                      f"-> float, got {type(entry).__name__}")


def resolve_metrics(spec: None | list | tuple | Mapping[str, object]) -> dict[str, Metric]:
    """The metrics a user's spec asks for, by reported name.

    Args:
        spec: None (no metrics); a list or tuple of built-in names and ``Metric`` objects; or a
            mapping from reported name to a built-in name, a ``Metric`` or a plain
            ``callable(outputs, targets) -> float``. A plain callable counts as higher-is-better
            and not decomposable unless it has ``higher_is_better`` / ``decomposable`` attributes.

    Returns:
        An insertion-ordered dict name → Metric, each Metric's ``name`` equal to its key.

    Raises:
        ConfigError: an unknown built-in name (the message lists them), an invalid, reserved or
            duplicate name, an unnamed callable in a list, or an entry of another type.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        bad = [type(e).__name__ for e in spec if not isinstance(e, (str, Metric))]
        if bad:
            raise ConfigError(f"a metrics list holds built-in names or Metric objects, got {bad[0]}; "
                              "name a plain callable with a dict {'name': fn}")
        items = [(e, e) if isinstance(e, str) else (e.name, e) for e in spec]
    else:
        raise ConfigError(f"metrics must be a list of names or a dict name -> metric, got {type(spec).__name__}")
    out: dict[str, Metric] = {}
    for name, entry in items:
        if _check_name(name) in out:
            raise ConfigError(f"metric {name!r} is given twice")
        out[name] = _to_metric(name, entry)
    return out


def lower_is_better_name(name: str) -> bool:
    """Whether a primary metric known only by name is an error or a loss (smaller is better).

    True for ``loss``, ``mae``, ``mse``, ``rmse``, names ending in ``_mae``, ``_mse``, ``_rmse`` or
    ``_loss``, and names ending in ``error``; case-insensitive.
    """
    n = name.lower()
    return (n in ("loss", "mae", "mse", "rmse") or n.endswith(("_loss", "_mae", "_mse", "_rmse", "error")))
