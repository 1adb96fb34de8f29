"""Strategies by name, built from a ``RunConfig``."""

from __future__ import annotations

from collections.abc import Callable

from pollen.errors import ConfigError
from pollen.strategy.base import ClientConfig, Sampler, Strategy
from pollen.strategy.fedavg import fedavg

# name -> builder(run_config, sampler, client_config) -> Strategy
_BUILDERS: dict[str, Callable[..., Strategy]] = {
    "fedavg": lambda cfg, sampler, client: fedavg(sampler, client, cfg.strategy.server_lr),
}


def register_strategy(name: str, builder: Callable[..., Strategy]) -> None:
    """Add a named strategy: ``builder(run_config, sampler, client_config) -> Strategy``."""
    _BUILDERS[name] = builder


def available_strategies() -> list[str]:
    """Names accepted by ``build_strategy``."""
    return sorted(_BUILDERS)


def build_strategy(cfg, sampler: Sampler, client: ClientConfig) -> Strategy:
    """Build the strategy ``cfg.strategy.name`` names."""
    name = cfg.strategy.name
    if name not in _BUILDERS:
        raise ConfigError(f"strategy.name: unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}")
    return _BUILDERS[name](cfg, sampler, client)
