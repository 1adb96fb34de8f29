"""Privacy measured in one training run: an empirical lower bound on ε from canaries.

Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). m canaries are each included in training independently with probability ½;
after one run the auditor scores every canary, guesses "in" for the k₊ highest scores and "out"
for the k₋ lowest (abstaining on the rest) and counts the correct guesses v among the r = k₊ + k₋
made. For an (ε, δ)-DP algorithm the number of correct guesses is stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)) up to a δ term (their Theorem 3.1 / Proposition 5.2):

    P[V ≥ v] ≤ β + α · δ · 2m,   β = P[Bin(r, p) ≥ v],   α = max_i P[v − i ≤ Bin(r, p) < v] / i,

with p = e^ε/(1 + e^ε). The reported bound is the largest ε whose p-value is below 1 − confidence:
with that confidence the algorithm is not (ε, δ)-DP for any smaller ε. It is a *lower* bound;
the accountant's ε is an *upper* bound, and a lower bound above the upper one is a bug.

Several guess counts may be tried: each is tested at (1 − confidence) / (number tried)
(Bonferroni), so choosing the best of them after seeing the scores keeps the confidence.
The binomial tails are computed here in log space with numpy (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pollen.errors import ConfigError

DEFAULT_GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)  # of the canaries, guessed on each side


def binomial_pmfs(n: int, p: float) -> np.ndarray:
    """P[Bin(n, p) = k] for k = 0 … n, in log space (log C(n, k) as a cumulative sum of logs)."""
    if p <= 0:
        return np.eye(1, n + 1, 0)[0]
    if p >= 1:
        return np.eye(1, n + 1, n)[0]
    k = np.arange(1, n + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - k + 1) - np.log(k))])
    ks = np.arange(n + 1, dtype=np.float64)
    return np.exp(log_choose + ks * math.log(p) + (n - ks) * math.log1p(-p))


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """P[≥ v of r guesses correct] under an (ε, δ)-DP algorithm with m canaries (the bound above).

    Raises:
        ConfigError: counts that do not fit (0 ≤ v ≤ r ≤ m).
    """
    if not 0 <= v <= r <= m:
        raise ConfigError(f"audit counts must satisfy 0 ≤ correct ≤ guesses ≤ canaries; got {v}, {r}, {m}")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon)) if epsilon < 700 else 1.0
    pmf = binomial_pmfs(r, p)
    beta = float(pmf[v:].sum())
    if delta <= 0:
        return min(beta, 1.0)
    below = np.cumsum(pmf[:v][::-1])  # below[i−1] = P[v − i ≤ Bin < v]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float = 0.0, significance: float = 0.05) -> float:
    """The largest ε whose p-value for ``v`` correct of ``r`` guesses is below ``significance``
    (0 when even ε = 0 cannot be rejected)."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    for _ in range(60):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < significance:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditResult:
    """The outcome of a one-run audit.

    Attributes:
        epsilon: the empirical lower bound on ε (at ``delta``, with ``confidence``).
        delta: δ the bound holds at.
        confidence: e.g. 0.95.
        canaries: m.
        included: canaries that were in training.
        guesses: r of the best guess count.
        correct: v of the best guess count.
        unit: ``record`` or ``party``.
        analytic_epsilon: the accountant's ε for the run (None without DP).
        tried: (guesses, correct, bound) of every guess count tried.
    """

    epsilon: float
    delta: float
    confidence: float
    canaries: int
    included: int
    guesses: int
    correct: int
    unit: str
    analytic_epsilon: float | None = None
    tried: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def violates(self) -> bool:
        """True when the empirical lower bound exceeds the accountant's upper bound (a bug)."""
        return self.analytic_epsilon is not None and self.epsilon > self.analytic_epsilon + 1e-9

    def record(self) -> dict[str, float | int | str | bool | None]:
        """The fields the history and summary carry."""
        return {"epsilon_empirical": self.epsilon, "epsilon_empirical_confidence": self.confidence,
                "epsilon_empirical_delta": self.delta, "audit_canaries": self.canaries,
                "audit_guesses": self.guesses, "audit_correct": self.correct, "audit_unit": self.unit,
                "audit_violation": self.violates}


def audit_scores(scores: Sequence[float], included: Sequence[bool], delta: float = 0.0, confidence: float = 0.95,
                 fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS, unit: str = "record",
                 analytic_epsilon: float | None = None) -> AuditResult:
    """Guess from ``scores`` (higher: more likely included) and bound ε.

    For each fraction f, guess "in" for the ⌈f·m⌉ highest and "out" for the ⌈f·m⌉ lowest scores
    (ties broken at random by a fixed seed: the scores' order carries no information then);
    each count is tested at (1 − confidence) / len(fractions).
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    m = len(s)
    if m == 0 or len(inc) != m:
        raise ConfigError(f"an audit needs one score per canary; got {m} scores for {len(inc)} canaries")
    tiebreak = np.random.default_rng(0).random(m)
    order = np.lexsort((tiebreak, s))  # ascending score
    significance = (1 - confidence) / len(fractions)
    tried = []
    for f in fractions:
        k = max(1, min(m // 2, int(math.ceil(f * m))))
        guess_out, guess_in = order[:k], order[m - k:]
        v = int(inc[guess_in].sum() + (~inc[guess_out]).sum())
        tried.append((2 * k, v, epsilon_lower_bound(m, 2 * k, v, delta, significance)))
    best = max(tried, key=lambda t: t[2])
    return AuditResult(best[2], delta, confidence, m, int(inc.sum()), best[0], best[1], unit, analytic_epsilon, tried)
