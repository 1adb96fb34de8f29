"""The named robust strategies (``median``, ``trimmed_mean``, ``krum``, ``multikrum``,
``bulyan``, ``normbound``), built from a ``RunConfig``: FedAvg's sampler, client config and server
step with a robust aggregator from ``robust.py`` in place of the weighted mean.

Each is checked at start-up against the number of parties sampled per round, so a configuration
its math cannot handle (Krum with n ≤ 2f + 2, Bulyan with n < 4f + 3, …) never starts.
"""

from __future__ import annotations

from collections.abc import Callable

from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy
from pollen.strategy.robust import Bulyan, CoordinateMedian, Krum, NormBound, RobustAggregator, TrimmedMean


def byzantine_f(cfg, n: int) -> int:
    """The f robust aggregators assume: ``strategy.byzantine_f``, or the expected number of
    malicious parties among the ``n`` sampled ones when an attack is simulated (0 otherwise)."""
    if cfg.strategy.byzantine_f is not None:
        return int(cfg.strategy.byzantine_f)
    return int(round(cfg.attack.malicious_fraction * n))


def make_robust_aggregator(name: str, cfg, n: int) -> RobustAggregator:
    """The aggregator ``name`` configured from ``cfg.strategy`` for ``n`` updates per round."""
    s = cfg.strategy
    f = byzantine_f(cfg, n)
    if name == "median":
        return CoordinateMedian(f)
    if name == "trimmed_mean":
        beta = s.trim_ratio if s.trim_ratio is not None else (f / n if f > 0 else 0.1)
        return TrimmedMean(beta, f)
    if name == "krum":
        return Krum(f, m=1)
    if name == "multikrum":
        return Krum(f, m=s.multikrum_m)
    if name == "bulyan":
        return Bulyan(f)
    if name == "normbound":
        return NormBound(s.norm_bound, f)
    raise KeyError(name)


def _builder(name: str) -> Callable[..., Strategy]:
    def build(cfg, sampler: Sampler, client: ClientConfig) -> Strategy:
        n = sampler.sample_size(cfg.data.parties)
        agg = make_robust_aggregator(name, cfg, n)
        agg.check(n, f"start-up ({n} parties sampled per round)")
        lr = cfg.strategy.server_lr if cfg.strategy.server_lr is not None else 1.0
        return Strategy(name, sampler, client, agg, ServerOptimizer(lr), NameFilter())

    return build


ROBUST_STRATEGIES: dict[str, Callable[..., Strategy]] = {
    name: _builder(name) for name in ("median", "trimmed_mean", "krum", "multikrum", "bulyan", "normbound")
}
