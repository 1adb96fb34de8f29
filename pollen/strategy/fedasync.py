"""FedAsync: Xie, Koyejo & Gupta 2019, "Asynchronous Federated Optimization" (arXiv:1903.03934).
The server mixes in every update as soon as it arrives, down-weighted by its staleness
τ = (server version now) − (version the party started from)::

    x ← (1 − αₜ) x + αₜ xᵢ = x + αₜ Δᵢ,      αₜ = α · s(τ)

Staleness functions s (the paper's section 5.2):

- ``constant``:   s(τ) = 1
- ``polynomial``: s(τ) = (1 + τ)^(−a)
- ``hinge``:      s(τ) = 1 if τ ≤ b else 1 / (a (τ − b) + 1)

FedAsync is FedBuff with a buffer of one update and server step α (see ``fedbuff.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pollen.errors import StrategyError

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class Staleness:
    """A staleness weighting s(τ).

    Attributes:
        kind: ``constant``, ``polynomial`` or ``hinge``.
        a: the exponent of ``polynomial``, the slope of ``hinge``.
        b: the free staleness of ``hinge``.
    """

    kind: str = "polynomial"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in STALENESS_FUNCTIONS:
            raise StrategyError(f"staleness function {self.kind!r} is unknown; choose one of: {', '.join(STALENESS_FUNCTIONS)}")
        if self.a < 0 or self.b < 0:
            raise StrategyError(f"staleness parameters must be ≥ 0; got a={self.a}, b={self.b}")

    def weight(self, staleness: float | np.ndarray) -> float | np.ndarray:
        """s(τ) for one staleness or an array of them."""
        tau = np.asarray(staleness, dtype=np.float64)
        if np.any(tau < 0):
            raise StrategyError(f"staleness must be ≥ 0; got {staleness}")
        if self.kind == "constant":
            out = np.ones_like(tau)
        elif self.kind == "polynomial":
            out = (1.0 + tau) ** (-self.a)
        else:
            out = np.where(tau <= self.b, 1.0, 1.0 / (self.a * (tau - self.b) + 1.0))
        return float(out) if out.ndim == 0 else out
