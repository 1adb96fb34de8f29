"""Evaluation metrics against scikit-learn, for every output convention; spec resolution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from pollen.errors import ConfigError
from pollen.metrics import BUILTIN, Metric, lower_is_better_name, resolve_metrics

N = 240


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def binary_case(form: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Outputs in one binary form, targets, and for scikit-learn: labels, scores, predictions.

    Integer logits in [-3, 3] make many tied scores (and logit 0, which is predicted negative).
    """
    g = gen(seed)
    y = torch.randint(0, 2, (N,), generator=g)
    if form == "N,2":
        out = torch.randint(-3, 4, (N, 2), generator=g).float()
        score = torch.softmax(out.double(), 1)[:, 1]
        pred = out.argmax(1)
        return out, y, y.numpy(), np_(score), pred.numpy()
    logit = torch.randint(-3, 4, (N,), generator=g).float()
    out = logit if form == "N" else logit[:, None]  # (N,) or (N, 1)
    targets = y if form == "N" else y[:, None].float()  # (N,) int64 or (N, 1) float32
    return out, targets, y.numpy(), np_(torch.sigmoid(logit.double())), (logit > 0).long().numpy()


# ---------------------------------------------------------------- classification vs scikit-learn
@pytest.mark.parametrize("form", ["N", "N,1", "N,2"])
def test_binary_forms_match_sklearn(form):
    out, targets, y, score, pred = binary_case(form)
    assert len(np.unique(score)) < N // 10  # ties in scores
    m = {k: BUILTIN[k](out, targets) for k in ("accuracy", "auc", "f1", "precision", "recall")}
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert all(type(v) is float for v in m.values())


def test_binary_bool_targets_and_autograd_outputs():
    out, _, y, score, _ = binary_case("N", seed=1)
    out = out.clone().requires_grad_(True)
    assert BUILTIN["auc"](out, torch.from_numpy(y).bool()) == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)


def test_binary_zero_division_is_zero():
    out, y = torch.full((5,), -1.0), torch.zeros(5)  # nothing predicted or actually positive
    assert BUILTIN["precision"](out, y) == 0.0
    assert BUILTIN["recall"](out, y) == 0.0
    assert BUILTIN["f1"](out, y) == 0.0


def test_multiclass_matches_sklearn():
    g = gen(2)
    out = torch.randint(-2, 3, (N, 4), generator=g).float()  # ties in argmax and in scores
    y = torch.randint(0, 4, (N,), generator=g)
    # softmax sums each row in its own order, so rows that are permutations or shifts of each other
    # can get probabilities an ulp apart; rounding restores the exact ties the metric sees
    prob = np.round(np_(torch.softmax(out.double(), 1)), 12)
    pred, yn = out.argmax(1).numpy(), y.numpy()
    assert BUILTIN["accuracy"](out, y) == pytest.approx(skm.accuracy_score(yn, pred), abs=1e-12)
    assert BUILTIN["auc"](out, y) == pytest.approx(
        skm.roc_auc_score(yn, prob, multi_class="ovr", average="macro"), abs=1e-12)
    for name, ref in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        assert BUILTIN[name](out, y) == pytest.approx(ref(yn, pred, average="macro", zero_division=0), abs=1e-12)


def test_multiclass_absent_classes():
    """Macro means over the classes present: AUC in the targets, F1 in targets or predictions."""
    g = gen(3)
    out = torch.randn(N, 5, generator=g)
    out[:, 4] -= 100  # class 4 is never predicted ...
    y = torch.randint(0, 4, (N,), generator=g)  # ... nor a target
    y[y == 2] = 1  # class 2 is never a target but is predicted
    prob, pred, yn = np_(torch.softmax(out.double(), 1)), out.argmax(1).numpy(), y.numpy()
    present = np.unique(yn)
    ref_auc = np.mean([skm.roc_auc_score(yn == k, prob[:, k]) for k in present])
    assert BUILTIN["auc"](out, y) == pytest.approx(ref_auc, abs=1e-12)
    assert BUILTIN["f1"](out, y) == pytest.approx(skm.f1_score(yn, pred, average="macro", zero_division=0), abs=1e-12)
    assert BUILTIN["precision"](out, y) == pytest.approx(
        skm.precision_score(yn, pred, average="macro", zero_division=0), abs=1e-12)


def test_auc_ties_are_exact_on_a_large_set():
    g = gen(4)
    logit = torch.randint(-20, 21, (50_000,), generator=g).double()
    y = (torch.rand(50_000, generator=g) < torch.sigmoid(logit / 5)).long()
    assert BUILTIN["auc"](logit, y) == pytest.approx(skm.roc_auc_score(y.numpy(), logit.numpy()), abs=1e-12)
    assert BUILTIN["auc"](torch.zeros(10), torch.arange(10) % 2) == 0.5  # all scores tied


def test_multiclass_auc_ties_permuted_and_shifted_rows():
    """Rows that are exact shifts and permutations of (0, 1, 2, 3) with class 3 always on 3: class 3's
    probability is the same in every row, so its one-vs-rest AUC is exactly 0.5."""
    g = gen(8)
    perms = torch.stack([torch.randperm(3, generator=g) for _ in range(60)]).float()  # (60, 3)
    out = torch.cat([perms, torch.full((60, 1), 3.0)], 1) + torch.arange(60.0)[:, None] / 4  # (60, 4)
    y = torch.arange(60) % 4
    prob = np.round(np_(torch.softmax(out.double(), 1)), 12)
    per_class = [skm.roc_auc_score(y.numpy() == k, prob[:, k]) for k in range(4)]
    assert per_class[3] == 0.5
    assert BUILTIN["auc"](out, y) == pytest.approx(np.mean(per_class), abs=1e-12)


@pytest.mark.parametrize("out", [torch.zeros(6), torch.zeros(6, 1), torch.zeros(6, 2), torch.randn(6, 3)])
def test_auc_of_one_class_is_nan(out):
    assert math.isnan(BUILTIN["auc"](out, torch.ones(6, dtype=torch.long)))


# ---------------------------------------------------------------- multilabel and regression
def test_multilabel_matches_sklearn():
    g = gen(5)
    out = torch.randint(-2, 3, (N, 5), generator=g).float()  # logit 0 is predicted negative
    y = torch.randint(0, 2, (N, 5), generator=g)
    pred, yn = (out > 0).long().numpy(), y.numpy()
    assert BUILTIN["multilabel_accuracy"](out, y.float()) == pytest.approx(1 - skm.hamming_loss(yn, pred), abs=1e-12)
    assert BUILTIN["multilabel_f1"](out, y) == pytest.approx(skm.f1_score(yn, pred, average="micro"), abs=1e-12)
    assert BUILTIN["multilabel_f1"](torch.full((3, 2), -1.0), torch.zeros(3, 2)) == 0.0


@pytest.mark.parametrize("shapes", [((N,), (N,)), ((N, 1), (N,)), ((N,), (N, 1)), ((N, 2), (N, 2))])
def test_regression_matches_sklearn(shapes):
    g = gen(6)
    out, y = torch.randn(*shapes[0], generator=g), 2 * torch.randn(*shapes[1], generator=g) + 1
    o, t = np_(out).ravel(), np_(y).ravel()  # (N, D) metrics are over all elements
    assert BUILTIN["mae"](out, y) == pytest.approx(skm.mean_absolute_error(t, o), rel=1e-12)
    assert BUILTIN["mse"](out, y) == pytest.approx(skm.mean_squared_error(t, o), rel=1e-12)
    assert BUILTIN["rmse"](out, y) == pytest.approx(math.sqrt(skm.mean_squared_error(t, o)), rel=1e-12)
    assert BUILTIN["r2"](out, y) == pytest.approx(skm.r2_score(t, o), rel=1e-12)
    if len(shapes[0]) == 2 and shapes[0] == shapes[1]:  # 2-D uniform averages agree for MAE and MSE
        assert BUILTIN["mse"](out, y) == pytest.approx(skm.mean_squared_error(np_(y), np_(out)), rel=1e-12)


def test_r2_of_constant_targets_is_nan():
    assert math.isnan(BUILTIN["r2"](torch.randn(5), torch.full((5,), 3.0)))


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_empty_set_or_nan_outputs_give_nan(name):
    shape = (0, 3) if name.startswith("multilabel") else (0,)
    assert math.isnan(BUILTIN[name](torch.zeros(shape), torch.zeros(shape)))
    out = torch.tensor([0.5, float("nan"), -1.0])
    assert math.isnan(BUILTIN[name](out, torch.tensor([1.0, 0.0, 1.0])))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_cpu_values():
    out, targets, *_ = binary_case("N,2", seed=9)
    for name in ("accuracy", "auc", "f1"):
        assert BUILTIN[name](out.cuda(), targets.cuda()) == BUILTIN[name](out, targets)


# ---------------------------------------------------------------- shapes that fit no convention
@pytest.mark.parametrize(("name", "out", "y", "match"), [
    ("accuracy", torch.randn(6), torch.randn(6), "mae"),  # regression targets
    ("accuracy", torch.randn(6, 1), torch.tensor([0.0, 1, 2, 0, 1, 1]), "0 or 1.*outputs \\(N, C\\)"),
    ("recall", torch.randn(6, 3), torch.tensor([0.0, 1, float("nan"), 0, 1, 1]), "class targets"),
    ("f1", torch.randn(6, 3), torch.tensor([0, 1, 3, 0, 1, 2]), r"\[0, 3\)"),
    ("auc", torch.randn(6, 3), torch.randint(0, 2, (6, 3)), "multilabel_accuracy"),
    ("accuracy", torch.randn(6, 3), torch.zeros(5, dtype=torch.long), "6 rows"),
    ("accuracy", torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long), r"\(N, C\)"),
    ("mse", torch.randn(6, 2), torch.randn(6), "same rows"),
    ("multilabel_f1", torch.randn(6, 3), torch.randn(6, 3), "0 or 1"),
    ("multilabel_accuracy", torch.randn(6, 3), torch.zeros(6), "same shape"),
])
def test_shapes_that_fit_no_convention_raise(name, out, y, match):
    with pytest.raises(ConfigError, match=match):
        BUILTIN[name](out, y)


# ---------------------------------------------------------------- flags and federated combination
def test_metric_is_frozen_and_checks_fn():
    with pytest.raises(AttributeError):
        BUILTIN["auc"].decomposable = True
    with pytest.raises(ConfigError, match="callable"):
        Metric("x", "auc")


def test_flags():
    assert {k for k, m in BUILTIN.items() if m.decomposable} == {"accuracy", "mae", "mse", "multilabel_accuracy"}
    assert {k for k, m in BUILTIN.items() if not m.higher_is_better} == {"mae", "mse", "rmse"}
    assert BUILTIN["accuracy"].combine_note == ""
    assert BUILTIN["auc"].combine_note == "example-weighted mean of per-party values (not the pooled auc)"
    assert all(m.name == k for k, m in BUILTIN.items())


def weighted_mean(name: str, parties: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return sum(BUILTIN[name](o, y) * len(y) for o, y in parties) / sum(len(y) for _, y in parties)


@pytest.mark.parametrize("name", ["accuracy", "mse", "mae", "multilabel_accuracy"])
def test_decomposable_weighted_mean_equals_pooled(name):
    g = gen(7)
    shape = (N, 3) if name.startswith("multilabel") else (N,)
    out, y = torch.randn(shape, generator=g), torch.randint(0, 2, shape, generator=g).float()
    parties = [(out[:70], y[:70]), (out[70:], y[70:])]  # unequal sizes
    assert weighted_mean(name, parties) == pytest.approx(BUILTIN[name](out, y), abs=1e-12)


def test_auc_is_not_decomposable():
    # each party ranks its own positive first (AUC 1), but the pooled ranking interleaves them
    a = (torch.tensor([1.0, 0.0]), torch.tensor([1, 0]))
    b = (torch.tensor([-1.0, -2.0]), torch.tensor([1, 0]))
    pooled = BUILTIN["auc"](torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
    assert weighted_mean("auc", [a, b]) == 1.0
    assert pooled == 0.75


# ---------------------------------------------------------------- resolve_metrics
def test_resolve_names_and_objects():
    assert resolve_metrics(None) == {}
    got = resolve_metrics(["accuracy", "auc"])
    assert list(got) == ["accuracy", "auc"] and got["auc"] is BUILTIN["auc"]
    mine = Metric("top2", lambda o, y: 0.5, decomposable=True)
    assert resolve_metrics((mine,)) == {"top2": mine}


def test_resolve_dict():
    def plain(o, y):
        return 1.0

    def error_rate(o, y):
        return 0.0

    error_rate.higher_is_better = False
    error_rate.decomposable = True
    got = resolve_metrics({"val_auc": "auc", "plain": plain, "err": error_rate, "m": BUILTIN["mse"]})
    assert got["val_auc"].name == "val_auc" and got["val_auc"].fn is BUILTIN["auc"].fn
    assert (got["plain"].higher_is_better, got["plain"].decomposable) == (True, False)
    assert got["plain"](torch.zeros(1), torch.zeros(1)) == 1.0
    assert "not the pooled plain" in got["plain"].combine_note
    assert (got["err"].higher_is_better, got["err"].decomposable) == (False, True)
    assert got["m"].name == "m" and not got["m"].higher_is_better


def test_unknown_name_lists_builtins():
    with pytest.raises(ConfigError) as err:
        resolve_metrics(["acc"])
    assert "'acc'" in str(err.value) and all(k in str(err.value) for k in BUILTIN)
    with pytest.raises(ConfigError, match="multilabel_f1"):
        resolve_metrics({"x": "roc"})


@pytest.mark.parametrize("spec", [["loss"], {"num_examples": "accuracy"}, {"round": lambda o, y: 0.0}])
def test_reserved_names(spec):
    with pytest.raises(ConfigError, match="reserved"):
        resolve_metrics(spec)


@pytest.mark.parametrize(("spec", "match"), [
    ({"": "auc"}, "not valid"), ({"val-auc": "auc"}, "not valid"), ({"1st": "auc"}, "not valid"),
    (["auc", "auc"], "twice"), ([lambda o, y: 0.0], "dict"), ({"x": 3}, "callable"), ("auc", "list"),
])
def test_invalid_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_metrics(spec)


def test_lower_is_better_name():
    for name in ("loss", "mae", "MSE", "rmse", "val_loss", "error", "top1_error", "eval_mse"):
        assert lower_is_better_name(name), name
    for name in ("accuracy", "auc", "f1", "r2", "lossy_accuracy", "multilabel_f1"):
        assert not lower_is_better_name(name), name
