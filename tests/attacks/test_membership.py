"""Membership inference: metrics against references, AUC ≈ 0.5 without leakage, > 0.5 when overfit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pollen.attacks import membership
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.data import load_dataset
from pollen.models import build_model
from pollen.types import RoundConfig


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", None)
    return torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)


def _train(x, y, seed, epochs):
    torch.manual_seed(seed)
    model = build_model("mlp", (1, 8, 8), 10)
    Trainer(model).fit(state_to_numpy(model), (x, y), RoundConfig(epochs=epochs, lr=0.1, batch_size=16),
                       torch.Generator().manual_seed(seed))
    return model


def test_roc_metrics_match_references():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    fpr, tpr = membership.roc_curve(s_in, s_out)
    want = roc_auc_score(np.r_[np.ones(300), np.zeros(400)], np.r_[s_in, s_out])
    assert membership.auc(fpr, tpr) == pytest.approx(want, abs=1e-12)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    # a perfect separation: TPR 1 at FPR 0
    f, t = membership.roc_curve(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert membership.tpr_at_fpr(f, t, 1e-3) == 1.0 and membership.auc(f, t) == 1.0
    res = membership.evaluate_scores("x", s_in, s_out, np.random.default_rng(1), bootstrap=100)
    assert res.auc.low < res.auc.value < res.auc.high


def test_dp_bound_check():
    fpr, tpr = membership.roc_curve(np.array([3.0, 4.0]), np.array([1.0, 2.0]))  # a perfect attack
    assert not membership.check_dp_bound(fpr, tpr, epsilon=1.0, delta=1e-5).holds
    assert membership.check_dp_bound(fpr, tpr, epsilon=1.0, delta=1.0).holds
    rng = np.random.default_rng(0)
    fpr, tpr = membership.roc_curve(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))  # a blind attack
    check = membership.check_dp_bound(fpr, tpr, epsilon=1.0, delta=1e-5)
    assert check.holds and check.worst_excess <= 0
    assert "holds" in str(check)
    assert not membership.check_dp_bound(fpr, tpr, epsilon=0.0, delta=0.0).holds or math.isclose(check.epsilon, 1.0)


def test_auc_is_chance_on_a_model_trained_on_unrelated_data(digits):
    x, y, xt, yt = digits
    model = _train(x[:400], y[:400], 0, 20)  # "members" below are records it never saw
    n = min(300, len(yt))
    s = membership.loss_threshold_scores(model, torch.cat([x[400 : 400 + n], xt[:n]]), torch.cat([y[400 : 400 + n], yt[:n]]))
    res = membership.evaluate_scores("loss", s[:n], s[n:], np.random.default_rng(0), bootstrap=100)
    assert abs(res.auc.value - 0.5) < 0.08
    assert res.auc.low < 0.5 < res.auc.high


def test_attacks_detect_an_overfit_model(digits):
    x, y, xt, yt = digits
    n = 120
    target = _train(x[:n], y[:n], 0, 60)  # 120 records, 60 epochs: memorised
    cand_x, cand_y = torch.cat([x[:n], xt[:n]]), torch.cat([y[:n], yt[:n]])
    rng = np.random.default_rng(0)
    loss = membership.loss_threshold_scores(target, cand_x, cand_y)
    res = membership.evaluate_scores("loss", loss[:n], loss[n:], rng, bootstrap=100)
    assert res.auc.value > 0.6 and res.auc.low > 0.5, res.auc
    shadow_x, shadow_y = x[n:], y[n:]  # the attacker's data: no candidate in it
    lira = membership.lira_offline_scores(target, cand_x, cand_y, shadow_x, shadow_y,
                                          lambda sx, sy, seed: _train(sx[:n], sy[:n], seed, 60), 3, rng)
    res = membership.evaluate_scores("lira", lira[:n], lira[n:], rng, bootstrap=100)
    assert res.auc.value > 0.6 and res.auc.low > 0.5, res.auc
