"""Membership inference on a trained model, as a measurement of what it leaks about its training data.

Two attacks, both scoring "how member-like" each candidate record is:

- loss threshold: Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", CSF 2018 (score = −loss).
- LiRA, offline variant: Carlini, Chien, Nasr, Song, Terzis and Tramèr, "Membership Inference
  Attacks From First Principles", IEEE S&P 2022. Shadow models trained on data disjoint from the
  candidates give, per candidate, the distribution of its logit-scaled confidence
  φ = log p_y − log(1 − p_y) when it is OUT of training; the score is how far the target
  model's φ lies above it, (φ − μ_out) / σ_out, with a global σ_out as the paper recommends for
  few shadow models.

Metrics: ROC AUC and TPR at a low FPR (0.1 %), with percentile-bootstrap confidence intervals
(members and non-members resampled independently), and the DP audit check: for an (ε, δ)-DP
training, every point of the ROC must satisfy TPR ≤ e^ε · FPR + δ (Kairouz et al. 2015).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from pollen.errors import ConfigError


# ---------------------------------------------------------------- per-example statistics
@torch.no_grad()
def per_example_logits(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each example ``(N,)``."""
    return nn.functional.cross_entropy(logits, y, reduction="none").numpy().astype(np.float64)


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """φ = log p_y − log(1 − p_y), computed stably as z_y − logsumexp(z_{≠y}) ``(N,)``."""
    z = logits.double()
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (zy - torch.logsumexp(others, dim=1)).numpy()


# ---------------------------------------------------------------- ROC and metrics
def roc_curve(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every threshold, from "everything negative" to "everything positive".

    Higher scores mean "member". Ties between scores are handled as one threshold.
    """
    scores = np.concatenate([scores_in, scores_out])
    labels = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    tp, fp = np.cumsum(lab), np.cumsum(1 - lab)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tpr = np.r_[0.0, tp[last] / max(len(scores_in), 1)]
    fpr = np.r_[0.0, fp[last] / max(len(scores_out), 1)]
    return fpr, tpr


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``target``."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass(frozen=True)
class Estimate:
    """A measured value with a confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class AttackResult:
    """One attack's measurement.

    Attributes:
        name: the attack.
        auc: ROC AUC with its CI.
        tpr_low_fpr: TPR at ``fpr_target`` with its CI.
        fpr_target: the low FPR (0.001 = 0.1 %).
        fpr, tpr: the ROC points.
        members, nonmembers: candidates of each kind.
    """

    name: str
    auc: Estimate
    tpr_low_fpr: Estimate
    fpr_target: float
    fpr: np.ndarray
    tpr: np.ndarray
    members: int
    nonmembers: int


def evaluate_scores(name: str, scores_in: np.ndarray, scores_out: np.ndarray, rng: np.random.Generator,
                    fpr_target: float = 1e-3, bootstrap: int = 200, level: float = 0.95) -> AttackResult:
    """AUC and TPR at ``fpr_target`` with percentile-bootstrap confidence intervals.

    With fewer than ``1 / fpr_target`` non-members the lowest reachable FPR is above the target
    and TPR there is 0 by definition: the result says so through ``nonmembers``.
    """
    fpr, tpr = roc_curve(scores_in, scores_out)
    a, t = auc(fpr, tpr), tpr_at_fpr(fpr, tpr, fpr_target)
    aucs, tprs = np.empty(bootstrap), np.empty(bootstrap)
    for b in range(bootstrap):  # B resamples of whole arrays (vectorised inside)
        si = scores_in[rng.integers(0, len(scores_in), len(scores_in))]
        so = scores_out[rng.integers(0, len(scores_out), len(scores_out))]
        f, p = roc_curve(si, so)
        aucs[b], tprs[b] = auc(f, p), tpr_at_fpr(f, p, fpr_target)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return AttackResult(name, Estimate(a, *np.percentile(aucs, [lo, hi])), Estimate(t, *np.percentile(tprs, [lo, hi])),
                        fpr_target, fpr, tpr, len(scores_in), len(scores_out))


# ---------------------------------------------------------------- attacks
def loss_threshold_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Yeom et al.: a lower loss means more likely a member (score = −loss)."""
    return -per_example_loss(per_example_logits(model, x), y)


ShadowTrainer = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


def lira_offline_scores(target: nn.Module, x: torch.Tensor, y: torch.Tensor, shadow_x: torch.Tensor,
                        shadow_y: torch.Tensor, train_shadow: ShadowTrainer, shadows: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Offline LiRA scores of the candidates ``(x, y)`` against ``target``.

    Args:
        shadow_x, shadow_y: the attacker's own data, disjoint from every candidate.
        train_shadow: ``(x, y, seed) -> model`` trained as the target was (same architecture and
            recipe, as far as the attacker knows it).
        shadows: number of shadow models (each trained on a random half of the attacker's data).
    """
    if shadows < 1:
        raise ConfigError(f"LiRA needs at least 1 shadow model; got {shadows}")
    phis = []
    for s in range(shadows):
        pick = torch.from_numpy(rng.permutation(len(shadow_x))[: len(shadow_x) // 2])
        model = train_shadow(shadow_x[pick], shadow_y[pick], int(rng.integers(2**31)))
        phis.append(logit_confidence(per_example_logits(model, x), y))
    out = np.stack(phis)  # (shadows, N): every candidate is OUT for every shadow
    mu = out.mean(0)
    sigma = max(float(out.std(0, ddof=1).mean()) if shadows > 1 else float(out.std()), 1e-6)
    return (logit_confidence(per_example_logits(target, x), y) - mu) / sigma


# ---------------------------------------------------------------- DP audit
@dataclass(frozen=True)
class BoundCheck:
    """Whether the measured ROC respects (ε, δ)-DP: TPR ≤ e^ε · FPR + δ at every point."""

    epsilon: float
    delta: float
    holds: bool
    worst_excess: float  # max over points of TPR − (e^ε FPR + δ); ≤ 0 when the bound holds
    worst_fpr: float
    worst_tpr: float

    def __str__(self) -> str:
        verdict = "holds" if self.holds else "VIOLATED"
        return (f"DP bound TPR ≤ e^ε·FPR + δ (ε={self.epsilon:.3g}, δ={self.delta:.3g}) {verdict} at every ROC point; "
                f"tightest point FPR={self.worst_fpr:.4f} TPR={self.worst_tpr:.4f} "
                f"(TPR − bound = {self.worst_excess:+.4f})")


def check_dp_bound(fpr: np.ndarray, tpr: np.ndarray, epsilon: float, delta: float) -> BoundCheck:
    """Check TPR ≤ e^ε · FPR + δ at every measured ROC point (and the symmetric bound on 1 − FPR).

    A violation beyond sampling error means the DP claim (or its accounting) is wrong.
    """
    e = math.exp(min(epsilon, 700.0))
    excess = np.maximum(tpr - (e * fpr + delta), (1 - fpr) - (e * (1 - tpr) + delta))
    i = int(np.argmax(excess))
    return BoundCheck(epsilon, delta, bool(excess[i] <= 0), float(excess[i]), float(fpr[i]), float(tpr[i]))
