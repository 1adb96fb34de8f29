"""An exponential moving average of the global model's iterates (``--ema β``): the run's model.

Parties keep training from the server optimizer's own iterate x_t; what the coordinator evaluates,
checkpoints and writes as the run's model is the average

    m_t = b_t · m_{t−1} + (1 − b_t) · x_t,    b_t = min(β, (1 + t) / (10 + t))

(t counts the steps before this one; the warm-up of b_t is TensorFlow's
``ExponentialMovingAverage(num_updates=…)``, so the first iterates, far from the optimum, fade
quickly). Under differential privacy the iterates carry independent noise every round; averaging
them is post-processing (no privacy cost) and removes much of that noise for a small lag. It is one
of the levers De, Berrada, Hayes, Smith & Balle, "Unlocking High-Accuracy Differentially Private
Image Classification through Scale" (2022) found most useful. Without DP it mostly smooths.

It wraps any synchronous server optimizer: the optimizer's state gains the iterate (``x/<name>``)
and the step count (``ema/t``), so a resumed run continues both from the checkpoint. Running
statistics and integer buffers are not averaged: the average takes the iterate's own.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pollen.errors import StrategyError
from pollen.strategy.base import ServerOptimizer, is_statistic
from pollen.types import ModelState

ITERATE = "x/"
COUNT = "ema/t"


class IterateAverage(ServerOptimizer):
    """``inner``'s steps on the iterate; the global model is the iterates' moving average.

    Args:
        inner: the strategy's own server optimizer (FedAvg's plain step, FedAvgM's momentum, …).
        beta: the average's decay β in (0, 1); larger averages over more rounds (≈ (1 + β)/(1 − β)
            rounds at the end of the warm-up).
    """

    def __init__(self, inner: ServerOptimizer, beta: float) -> None:
        if not 0.0 < beta < 1.0:
            raise StrategyError(f"--ema must be in (0, 1) (0 turns it off); got {beta}")
        super().__init__(inner.lr)
        self.inner = inner
        self.beta = beta
        self.name = f"{inner.name}+ema"

    def init(self, global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(self.inner.init(global_state))
        out.update({ITERATE + k: np.array(v, copy=True) for k, v in global_state.items()})
        out[COUNT] = np.zeros(1, np.int64)
        return out

    def _split(self, state: Mapping[str, np.ndarray]) -> tuple[ModelState, dict[str, np.ndarray], int]:
        iterate = {k[len(ITERATE):]: v for k, v in state.items() if k.startswith(ITERATE)}
        inner = {k: v for k, v in state.items() if not k.startswith(ITERATE) and k != COUNT}
        return iterate, inner, int(np.asarray(state[COUNT]).reshape(-1)[0]) if COUNT in state else 0

    def iterate(self, global_state: ModelState, state: Mapping[str, np.ndarray]) -> ModelState:
        """The model the parties train from (x_t), which the coordinator also evaluates
        (``iterate_<metric>`` in the history) beside the average."""
        iterate, _, _ = self._split(state)
        return {k: iterate.get(k, v) for k, v in global_state.items()}

    def broadcast(self, global_state: ModelState, state: Mapping[str, np.ndarray]) -> ModelState:
        _, inner, _ = self._split(state)
        return self.inner.broadcast(self.iterate(global_state, state), inner)

    def decay(self, t: int) -> float:
        """b_t: the weight of the average so far at step t (0-based)."""
        return min(self.beta, (1.0 + t) / (10.0 + t))

    def step(
        self, global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
    ) -> tuple[ModelState, dict[str, np.ndarray]]:
        iterate, inner, t = self._split(state)
        iterate = {k: iterate.get(k, v) for k, v in global_state.items()}
        new_iterate, new_inner = self.inner.step(iterate, delta, inner)
        b = self.decay(t)
        average: dict[str, np.ndarray] = {}
        for k, x in new_iterate.items():
            m = global_state.get(k)
            if m is None or is_statistic(k, x) or m.shape != x.shape:
                average[k] = x
            else:
                average[k] = (b * m + (1.0 - b) * x).astype(x.dtype, copy=False)
        out = dict(new_inner)
        out.update({ITERATE + k: v for k, v in new_iterate.items()})
        out[COUNT] = np.full(1, t + 1, np.int64)
        return average, out
