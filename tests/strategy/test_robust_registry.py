"""Robust strategies by name: composition, start-up refusal, defaults for f and β."""

from __future__ import annotations

import pytest

from pollen.errors import StrategyError
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.strategy.robust import Bulyan, Krum, TrimmedMean


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum", "bulyan", "normbound"])
def test_robust_strategies_are_registered(digits_cfg, name):
    s = build_strategy(digits_cfg(strategy={"name": name}))
    assert s.name == name and s.aggregator.linear is False
    assert s.server_optimizer.lr == 1.0


def test_f_defaults_to_the_expected_malicious_count(digits_cfg):
    cfg = digits_cfg(data={"parties": 20}, federation={"parties_per_round": 15},
                     attack={"malicious_fraction": 0.2, "attack": "signflip"}, strategy={"name": "krum"})
    agg = build_strategy(cfg).aggregator
    assert isinstance(agg, Krum) and agg.f == 3 and agg.m == 1
    tm = build_strategy(cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"name": "trimmed_mean"})})).aggregator
    assert isinstance(tm, TrimmedMean) and tm.trimmed(15) == 3


def test_refused_at_start_up_with_the_sampled_count(digits_cfg):
    cfg = digits_cfg(data={"parties": 10}, attack={"malicious_fraction": 0.2, "attack": "alie"},
                     strategy={"name": "bulyan"})
    with pytest.raises(StrategyError, match=r"bulyan with byzantine_f=2 needs n ≥ 4f \+ 3.*start-up \(10 parties"):
        build_strategy(cfg)
    ok = build_strategy(digits_cfg(data={"parties": 11}, federation={"parties_per_round": 11},
                                   strategy={"name": "bulyan", "byzantine_f": 2}))
    assert isinstance(ok.aggregator, Bulyan)
