"""Rényi-DP of the subsampled Gaussian mechanism, in plain Python (no scipy, no opacus).

- Poisson subsampling: Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled
  Gaussian Mechanism" (2019, arXiv:1908.10530), Section 3.3. Ported from TF-Privacy's
  ``rdp_accountant.py`` as Opacus ships it (``opacus/accountants/analysis/rdp.py``), with scipy's
  ``binom``/``log_ndtr`` replaced by ``math`` so that the core works without the ``dp`` extra.
- Sampling without replacement (a fixed number of parties per round): Wang, Balle,
  Kasiviswanathan, "Subsampled Rényi Differential Privacy and Analytical Moments Accountant"
  (AISTATS 2019), Theorem 27 (its tighter bound for the Gaussian, via forward differences), for
  integer orders; replace-one adjacency. TF-Privacy's ``compute_rdp_sample_without_replacement``
  implements the same theorem.
- RDP → (ε, δ): the classic conversion (Mironov 2017, Proposition 3) and the tighter one of
  Balle et al., "Hypothesis Testing Interpretations and Rényi DP" (AISTATS 2020), Theorem 21,
  which Opacus uses.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

# Opacus' default orders (RDPAccountant.DEFAULT_ALPHAS), also TF-Privacy's.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# Integer orders for the without-replacement bound (Theorem 9 holds for integer α ≥ 2).
INTEGER_ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 192, 256)
WOR_EXACT_MAX = 64  # orders up to this use Theorem 27 (forward differences), larger ones Theorem 9


def _log_add(x: float, y: float) -> float:
    a, b = min(x, y), max(x, y)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub(x: float, y: float) -> float:
    if y == -math.inf:
        return x
    if x <= y:
        return -math.inf
    try:
        return math.log(math.expm1(x - y)) + y
    except OverflowError:
        return x


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate where erfc underflows (asymptotic series, as TF-Privacy did)."""
    if x < 20.0:
        value = math.erfc(x)
        if value > 0.0:
            return math.log(value)
    r = 1.0 / (x * x)
    series = 1.0 - r / 2 + 3 * r * r / 4 - 15 * r**3 / 8 + 105 * r**4 / 16
    return -x * x - math.log(x) - 0.5 * math.log(math.pi) + math.log(series)


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for i in range(alpha + 1):
        coef = math.log(math.comb(alpha, i)) + i * math.log(q) + (alpha - i) * math.log1p(-q)
        log_a = _log_add(log_a, coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    coef, i = 1.0, 0  # binom(alpha, 0); later ones by the recurrence binom(α, i) = binom(α, i−1)(α−i+1)/i
    while True:
        if i > 0:
            coef *= (alpha - i + 1) / i
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)


def _edge_case(q: float, sigma: float, order: float) -> float | None:
    """RDP where sampling does not matter: nothing sampled, no noise, or everything sampled."""
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1.0:
        return order / (2 * sigma**2)
    return None


def rdp_poisson(q: float, sigma: float, order: float) -> float:
    """RDP at ``order`` of one step of the Poisson-subsampled Gaussian (sensitivity 1, std σ)."""
    edge = _edge_case(q, sigma, order)
    if edge is not None:
        return edge
    log_a = _log_a_int(q, sigma, int(order)) if float(order).is_integer() else _log_a_frac(q, sigma, order)
    return log_a / (order - 1)


@lru_cache(maxsize=256)
def _log_forward_diffs(sigma: float, top: int) -> tuple[float, ...]:
    """log |Δ^(ℓ)| for ℓ = 0 … top, where Δ^(ℓ) = Σ_k (−1)^(ℓ−k) C(ℓ,k) e^((k−1)ε(k)) is the ℓ-th
    forward difference of g(x) = exp(x(x+1)/(2σ²)) at x = −1 (Wang et al. 2019, Theorem 27).

    The alternating sum cancels almost everything when σ is large, so it is evaluated in decimal
    arithmetic with enough digits to survive the cancellation.
    """
    # Decimal is floating point: only the cancellation costs digits, at most log10 of
    # (largest term ≈ 2^ℓ·g) / (result ≳ g·(2σ²)^(−ℓ/2)); twice that, to be safe.
    digits = 40 + int(top * (math.log10(2) + max(0.0, math.log10(2 * sigma**2))))
    ctx = decimal.Context(prec=digits, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    g = [ctx.exp(ctx.divide(decimal.Decimal((k - 1) * k), decimal.Decimal(2 * sigma**2))) for k in range(top + 1)]
    out = []
    for ell in range(top + 1):
        total = decimal.Decimal(0)
        for k in range(ell + 1):
            term = ctx.multiply(decimal.Decimal(math.comb(ell, k)), g[k])
            total = ctx.add(total, term) if (ell - k) % 2 == 0 else ctx.subtract(total, term)
        out.append(float(abs(total).ln(ctx)) if total != 0 else -math.inf)
    return tuple(out)


def rdp_without_replacement(q: float, sigma: float, order: int) -> float:
    """RDP at integer ``order`` ≥ 2 of one step of the Gaussian on a uniformly drawn subset of
    size q·N (Wang et al. 2019: Theorem 27 for orders up to ``WOR_EXACT_MAX``, the looser
    Theorem 9 above; the Gaussian's ε(∞) = ∞, so each min{2, ·} is 2).

    ``sigma`` is the noise std over the replace-one sensitivity of the function.
    """
    edge = _edge_case(q, sigma, order)
    if edge is not None:
        return edge

    def cgf(x: int) -> float:  # (x)·ε(x + 1): log of the Gaussian's e^{(j−1)ε(j)} at j = x + 1
        return x * (x + 1) / (2 * sigma**2)

    log_q = math.log(q)
    eps2 = 1 / sigma**2
    # j = 2: γ² C(α,2) min{4(e^{ε(2)} − 1), 2 e^{ε(2)}}
    log_min2 = min(math.log(4) + math.log(math.expm1(eps2)), math.log(2) + eps2)
    log_sum = _log_add(0.0, 2 * log_q + math.log(math.comb(order, 2)) + log_min2)
    diffs = _log_forward_diffs(float(sigma), WOR_EXACT_MAX + 1) if order <= WOR_EXACT_MAX else None
    for j in range(3, order + 1):
        term = math.log(2) + cgf(j - 1)  # Theorem 9
        if diffs is not None:  # Theorem 27: 4·sqrt(Δ^(2⌊j/2⌋) Δ^(2⌈j/2⌉)) when smaller
            term = min(term, math.log(4) + 0.5 * (diffs[2 * (j // 2)] + diffs[2 * ((j + 1) // 2)]))
        log_sum = _log_add(log_sum, term + j * log_q + math.log(math.comb(order, j)))
    return log_sum / (order - 1)


def rdp_without_replacement_general(q: float, eps: Callable[[int], float], order: int) -> float:
    """RDP at integer ``order`` ≥ 2 of any mechanism with RDP ``eps(j)`` run on a uniformly drawn
    subset of size q·N (Wang et al. 2019, Theorem 9, with ε(∞) = ∞ so each min{2, ·} is 2): the
    amplification used for the Skellam mechanism, whose RDP is not the Gaussian's.
    """
    if q >= 1.0:
        return eps(order)
    if q <= 0:
        return 0.0
    log_q = math.log(q)
    e2 = eps(2)
    if math.isinf(e2):
        return math.inf
    log_min2 = min(math.log(4) + math.log(math.expm1(e2)) if e2 > 0 else -math.inf, math.log(2) + e2)
    log_sum = _log_add(0.0, 2 * log_q + math.log(math.comb(order, 2)) + log_min2)
    for j in range(3, order + 1):
        ej = eps(j)
        if math.isinf(ej):
            return math.inf
        log_sum = _log_add(log_sum, math.log(2) + (j - 1) * ej + j * log_q + math.log(math.comb(order, j)))
    return log_sum / (order - 1)


def compute_rdp(q: float, sigma: float, steps: int, orders: Sequence[float], sampling: str = "poisson") -> np.ndarray:
    """RDP of ``steps`` compositions at each order (``sampling``: ``poisson`` or ``without_replacement``)."""
    one = rdp_poisson if sampling == "poisson" else rdp_without_replacement
    return np.array([one(q, sigma, a) for a in orders], dtype=np.float64) * steps


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float,
                   conversion: str = "balle2020") -> tuple[float, float]:
    """Smallest ε over the orders for ``delta``; returns ``(ε, best order)``.

    ``conversion``: ``balle2020`` (Theorem 21 of Balle et al. 2020, what Opacus reports) or
    ``classic`` (ε = RDP − log δ / (α − 1), what TF-Privacy's tutorials report).
    """
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if conversion == "classic":
            eps = r - math.log(delta) / (a - 1)
        else:
            eps = r - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    eps = np.where(np.isnan(eps), np.inf, eps)
    i = int(np.argmin(eps))
    return max(float(eps[i]), 0.0), float(a[i])
