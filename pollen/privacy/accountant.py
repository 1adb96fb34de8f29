"""Privacy accountants: how much (ε, δ) a sequence of subsampled Gaussian steps has spent.

The interface follows Opacus' (``step``, ``get_epsilon``, ``state_dict``). ``RDPAccountant`` is
ours (``pollen.privacy.rdp``) and needs no optional package; ``PRVAccountant`` wraps Opacus' PRV
accountant (Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021)
and needs the ``dp`` extra. ``noise_multiplier_for`` solves for the noise that meets a target ε
and never returns one that overshoots it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from pollen.errors import ConfigError, PrivacyError, require
from pollen.privacy.rdp import DEFAULT_ORDERS, INTEGER_ORDERS, compute_rdp, rdp_to_epsilon

SAMPLINGS = ("poisson", "without_replacement")
ACCOUNTANTS = ("rdp", "prv")


@lru_cache(maxsize=4096)
def _rdp_one_step(q: float, sigma: float, sampling: str) -> np.ndarray:
    orders = DEFAULT_ORDERS if sampling == "poisson" else INTEGER_ORDERS
    out = compute_rdp(q, sigma, 1, orders, sampling)
    out.setflags(write=False)
    return out


class RDPAccountant:
    """Rényi-DP accountant for (subsampled) Gaussian steps.

    Args:
        sampling: ``poisson`` (each record/party joins a step independently with probability q,
            what DP-SGD with Poisson batches does) or ``without_replacement`` (exactly q·N drawn
            uniformly, what Pollen's party sampler does; replace-one adjacency).
        conversion: RDP → (ε, δ) conversion, ``balle2020`` (default, as Opacus) or ``classic``.
    """

    mechanism = "rdp"

    def __init__(self, sampling: str = "poisson", conversion: str = "balle2020") -> None:
        if sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        self.conversion = conversion
        self.history: list[tuple[float, float, int]] = []  # (noise multiplier, sample rate, steps)

    @property
    def orders(self) -> tuple[float, ...]:
        """The RDP orders the accountant minimises over."""
        return DEFAULT_ORDERS if self.sampling == "poisson" else INTEGER_ORDERS

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of noise ``noise_multiplier`` at sampling rate ``sample_rate``."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history[-1]
            self.history[-1] = (sigma, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def rdp(self) -> np.ndarray:
        """Total RDP at each order."""
        total = np.zeros(len(self.orders))
        for sigma, q, n in self.history:
            total = total + _rdp_one_step(q, sigma, self.sampling) * n
        return total

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before any step)."""
        if not self.history:
            return 0.0
        return rdp_to_epsilon(self.orders, self.rdp(), delta, self.conversion)[0]

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-able state."""
        return {"mechanism": self.mechanism, "sampling": self.sampling, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output."""
        self.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]


class PRVAccountant(RDPAccountant):
    """Opacus' PRV accountant (Poisson sampling only); needs the ``dp`` extra."""

    mechanism = "prv"

    def __init__(self, sampling: str = "poisson", eps_error: float = 0.01) -> None:
        if sampling != "poisson":
            raise ConfigError("the PRV accountant supports Poisson sampling only; use accountant 'rdp' "
                              "for parties sampled without replacement")
        super().__init__("poisson")
        self.eps_error = eps_error

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta``, from Opacus' PRV accountant."""
        if not self.history:
            return 0.0
        accountants = require("opacus.accountants", "dp", "the PRV privacy accountant")
        acc = accountants.PRVAccountant()
        acc.history = list(self.history)
        return float(acc.get_epsilon(delta=delta, eps_error=self.eps_error))


def make_accountant(name: str, sampling: str = "poisson") -> RDPAccountant:
    """An accountant by name (``rdp`` or ``prv``)."""
    if name == "rdp":
        return RDPAccountant(sampling)
    if name == "prv":
        return PRVAccountant(sampling)
    raise ConfigError(f"unknown privacy accountant {name!r}; choose one of: {', '.join(ACCOUNTANTS)}")


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp", sampling: str = "poisson") -> float:
    """ε after ``steps`` identical steps."""
    acc = make_accountant(accountant, sampling)
    acc.step(noise_multiplier, sample_rate, steps)
    return acc.get_epsilon(delta)


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", sampling: str = "poisson", tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (to within ``tolerance`` in ε) whose ε after ``steps`` steps is
    at most ``target_epsilon``. The returned σ never overshoots: ε(σ) ≤ target always.

    Raises:
        PrivacyError: the target cannot be met with any reasonable noise (σ > 10⁴).
    """
    if target_epsilon <= 0 or not 0 < delta < 1:
        raise PrivacyError(f"need target ε > 0 and 0 < δ < 1; got ε={target_epsilon}, δ={delta}")
    if steps <= 0 or sample_rate <= 0:
        return 0.0  # nothing is released

    def eps(sigma: float) -> float:
        return epsilon_for(sigma, sample_rate, steps, delta, accountant, sampling)

    return smallest_noise(eps, target_epsilon, f"{steps} steps at sampling rate {sample_rate:.4g} (δ={delta})",
                          tolerance, fix="lower the rounds/epochs or raise the target")


def participation_steps(epochs: int, examples: int, batch_size: int) -> tuple[float, int]:
    """DP-SGD's Poisson rate and steps for one local training: q = B/n, ⌈E·n/B⌉ steps."""
    q = min(1.0, batch_size / max(examples, 1))
    return q, int(math.ceil(epochs / q))


def smallest_noise(epsilon_of, target_epsilon: float, what: str, tolerance: float = 0.01,
                   fix: str = "lower the rounds or raise the target") -> float:
    """The smallest noise multiplier z with ``epsilon_of(z) ≤ target_epsilon`` (to ``tolerance`` in
    ε; never one that overshoots), for any accountant whose ε falls as z grows.

    Raises:
        PrivacyError: the target needs z > 10⁴ (``what`` says over which releases).
    """
    low, high = 0.0, 1.0
    while epsilon_of(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise PrivacyError(f"ε={target_epsilon} cannot be met over {what}: {fix}")
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        e = epsilon_of(mid)
        if e > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - e <= tolerance * target_epsilon:
                break
    return high
