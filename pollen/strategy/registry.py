"""Strategies by name, built from a ``RunConfig``.

``build_strategy`` also applies the strategy section's per-round settings (lr schedule, epochs by
round, the user's config hook, a proximal term) to the client config, so every strategy gets them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from pollen.errors import ConfigError
from pollen.strategy.base import ClientConfig, Sampler, Strategy
from pollen.strategy.byzantine import ROBUST_STRATEGIES
from pollen.strategy.ditto import ditto
from pollen.strategy.fedasync import Staleness
from pollen.strategy.fedavg import fedavg
from pollen.strategy.fedavgm import fedavgm
from pollen.strategy.fedbn import fedbn
from pollen.strategy.fedbuff import AsyncSpec, fedbuff
from pollen.strategy.fednova import fednova
from pollen.strategy.fedopt import fedopt
from pollen.strategy.fedper import fedper
from pollen.strategy.fedprox import fedprox
from pollen.strategy.pfedme import pfedme
from pollen.strategy.scaffold import scaffold
from pollen.strategy.schedule import LrSchedule, load_config_hook, parse_epochs_schedule

Builder = Callable[..., Strategy]
DEFAULT_PARTIES_PER_ROUND = 10  # without --fraction or --parties-per-round (W1's 10 of 100; all when fewer)


def sampler_from_config(cfg) -> Sampler:
    """The party sampler ``cfg.federation`` asks for (the one place that reads its sampling fields).

    ``--parties-per-round`` wins over ``--fraction``; with neither, a round trains
    ``DEFAULT_PARTIES_PER_ROUND`` parties (every party when there are fewer).
    """
    f = cfg.federation
    balanced = f.sampling == "balanced"
    if f.parties_per_round is None and f.fraction is None:
        return Sampler(count=min(DEFAULT_PARTIES_PER_ROUND, cfg.data.parties), seed=cfg.run.seed, balanced=balanced)
    return Sampler(fraction=f.fraction if f.fraction is not None else 1.0, count=f.parties_per_round,
                   seed=cfg.run.seed, balanced=balanced)


def _lr(cfg, default: float = 1.0) -> float:
    return cfg.strategy.server_lr if cfg.strategy.server_lr is not None else default


def _async_spec(cfg, buffer_size: int) -> AsyncSpec:
    s = cfg.strategy
    return AsyncSpec(buffer_size=buffer_size, concurrency=s.async_concurrency, max_staleness=s.max_staleness,
                     staleness=Staleness(s.staleness, s.staleness_a, s.staleness_b))


def _participation(cfg, sampler: Sampler) -> float:
    return sampler.sample_size(cfg.data.parties) / cfg.data.parties


def _fedopt(rule: str) -> Builder:
    def build(cfg, sampler: Sampler, client: ClientConfig) -> Strategy:
        s = cfg.strategy
        return fedopt(rule, sampler, client, _lr(cfg, 0.01), s.beta1, s.beta2, s.tau)

    return build


def _layers(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def _lambda(cfg, default: float) -> float:
    return cfg.strategy.personal_lambda if cfg.strategy.personal_lambda is not None else default


# name -> builder(run_config, sampler, client_config) -> Strategy
_BUILDERS: dict[str, Builder] = {
    "fedavg": lambda cfg, sampler, client: fedavg(sampler, client, _lr(cfg)),
    "fedavgm": lambda cfg, sampler, client: fedavgm(sampler, client, _lr(cfg), cfg.strategy.server_momentum),
    "fedprox": lambda cfg, sampler, client: fedprox(
        sampler, client, cfg.strategy.proximal_mu if cfg.strategy.proximal_mu is not None else 0.01, _lr(cfg)),
    "fedadam": _fedopt("adam"),
    "fedyogi": _fedopt("yogi"),
    "fedadagrad": _fedopt("adagrad"),
    "scaffold": lambda cfg, sampler, client: scaffold(sampler, client, _lr(cfg), _participation(cfg, sampler)),
    "fednova": lambda cfg, sampler, client: fednova(sampler, client, _lr(cfg), cfg.train.momentum),
    "fedbn": lambda cfg, sampler, client: fedbn(sampler, client, _lr(cfg), _layers(cfg.strategy.local_layers)),
    "fedper": lambda cfg, sampler, client: fedper(sampler, client, _lr(cfg), _layers(cfg.strategy.local_layers)),
    "pfedme": lambda cfg, sampler, client: pfedme(sampler, client, _lr(cfg), _lambda(cfg, 15.0),
                                                  cfg.strategy.personal_steps, cfg.strategy.personal_lr),
    "ditto": lambda cfg, sampler, client: ditto(sampler, client, _lr(cfg), _lambda(cfg, 0.1), cfg.strategy.personal_lr),
    "fedbuff": lambda cfg, sampler, client: fedbuff(sampler, client, _async_spec(cfg, cfg.strategy.async_buffer), _lr(cfg)),
    "fedasync": lambda cfg, sampler, client: fedbuff(sampler, client, _async_spec(cfg, 1), _lr(cfg, 0.6), "fedasync"),
    **ROBUST_STRATEGIES,
}


def register_strategy(name: str, builder: Builder) -> None:
    """Add a named strategy: ``builder(run_config, sampler, client_config) -> Strategy``."""
    _BUILDERS[name] = builder


def available_strategies() -> list[str]:
    """Names accepted by ``build_strategy``."""
    return sorted(_BUILDERS)


def per_round_client(cfg, client: ClientConfig) -> ClientConfig:
    """``client`` with the strategy section's lr schedule, epochs by round, config hook and proximal μ.

    Raises:
        ConfigError: both ``train.lr_decay`` and an ``lr_schedule`` set, or a bad schedule or hook.
    """
    s = cfg.strategy
    changes: dict = {}
    if s.lr_schedule != "constant":
        if cfg.train.lr_decay != 1.0:
            raise ConfigError(f"train.lr_decay={cfg.train.lr_decay} and strategy.lr_schedule={s.lr_schedule!r} both set "
                              "the learning rate per round; keep one (lr_decay g is --lr-schedule exp --lr-gamma g)")
        changes["lr_schedule"] = LrSchedule(s.lr_schedule, s.lr_gamma, s.lr_step_rounds, s.lr_min, cfg.federation.rounds)
    if s.epochs_schedule:
        changes["epochs_by_round"] = parse_epochs_schedule(s.epochs_schedule)
    if s.config_hook:
        changes["hook"] = load_config_hook(s.config_hook)
    if s.proximal_mu is not None:
        changes["base"] = client.base.with_(proximal_mu=s.proximal_mu)
    return replace(client, **changes) if changes else client


def build_strategy(cfg, sampler: Sampler, client: ClientConfig) -> Strategy:
    """Build the strategy ``cfg.strategy.name`` names."""
    name = cfg.strategy.name
    if name not in _BUILDERS:
        raise ConfigError(f"strategy.name: unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}")
    strategy = _BUILDERS[name](cfg, sampler, per_round_client(cfg, client))
    if cfg.strategy.ema:
        if strategy.asynchronous is not None:
            raise ConfigError(f"strategy.ema: the iterate average needs synchronous rounds; {name!r} is asynchronous")
        from pollen.strategy.averaging import IterateAverage

        strategy = replace(strategy, server_optimizer=IterateAverage(strategy.server_optimizer, cfg.strategy.ema))
    return strategy
