"""Per-round configuration: lr schedules, local epochs by round, a user hook loaded from a file,
and the strategy flags on the command line."""

from __future__ import annotations

import math

import pytest

from pollen.cli import add_config_flags, config_from_args
from pollen.errors import ConfigError
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.strategy import ClientConfig
from pollen.strategy.schedule import LrSchedule, load_config_hook, parse_epochs_schedule
from pollen.types import RoundConfig


def _lrs(schedule, rounds=6, base=0.1):
    return [schedule.lr(base, r) for r in range(1, rounds + 1)]


def test_lr_schedules():
    assert _lrs(LrSchedule("constant")) == [0.1] * 6
    assert _lrs(LrSchedule("exp", gamma=0.5)) == pytest.approx([0.1 * 0.5**r for r in range(6)])
    assert _lrs(LrSchedule("step", gamma=0.1, step_rounds=2)) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cos = _lrs(LrSchedule("cosine", min_lr=0.01, total_rounds=6))
    assert cos[0] == pytest.approx(0.1) and cos[-1] == pytest.approx(0.01)
    assert cos[2] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 2 / 5)) / 2)
    with pytest.raises(ConfigError, match="unknown"):
        LrSchedule("linear")


def test_epochs_by_round_and_hook_without_subclassing():
    client = ClientConfig(base=RoundConfig(lr=0.1, epochs=1), lr_schedule=LrSchedule("step", 0.5, 2),
                          epochs_by_round=parse_epochs_schedule("3:2,5:4"),
                          hook=lambda r, c: c.with_(batch_size=16 * r))
    cfgs = [client.configure(r, None) for r in range(1, 7)]
    assert [c.epochs for c in cfgs] == [1, 1, 2, 2, 4, 4]
    assert [c.lr for c in cfgs] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert [c.batch_size for c in cfgs] == [16, 32, 48, 64, 80, 96]
    assert client.base.epochs == 1  # configure never mutates the base
    with pytest.raises(ConfigError, match="round:epochs"):
        parse_epochs_schedule("3-2")


def _cfg(argv):
    import argparse

    p = argparse.ArgumentParser()
    add_config_flags(p)
    return config_from_args(p.parse_args(argv))


def test_cli_flags_build_the_strategies(tmp_path):
    cfg = _cfg(["--dataset", "digits", "--strategy", "fedprox", "--proximal-mu", "0.01"])
    strat = build_strategy(cfg)
    assert strat.name == "fedprox" and strat.configure(1, ["w"]).proximal_mu == 0.01
    adam = build_strategy(_cfg(["--strategy", "fedadam", "--beta1", "0.8", "--tau", "0.01"]))
    assert (adam.server_optimizer.lr, adam.server_optimizer.beta1, adam.server_optimizer.tau) == (0.01, 0.8, 0.01)
    assert build_strategy(_cfg(["--strategy", "fedadam", "--server-lr", "0.1"])).server_optimizer.lr == 0.1
    buff = build_strategy(_cfg(["--strategy", "fedbuff", "--async-buffer", "3", "--max-staleness", "4"]))
    assert (buff.asynchronous.buffer_size, buff.asynchronous.max_staleness) == (3, 4)
    assert build_strategy(_cfg(["--strategy", "fedasync"])).asynchronous.buffer_size == 1
    hook_file = tmp_path / "hooks.py"
    hook_file.write_text("def warmup(rnd, cfg):\n    return cfg.with_(lr=cfg.lr * min(1.0, rnd / 3))\n")
    cfg = _cfg(["--strategy", "fedavg", "--config-hook", f"{hook_file}:warmup", "--lr", "0.3",
                "--lr-schedule", "cosine", "--rounds", "5", "--epochs-schedule", "1:1,4:3"])
    s = build_strategy(cfg)
    assert s.configure(1, ["w"]).lr == pytest.approx(0.1)
    assert s.configure(4, ["w"]).epochs == 3


def test_bad_hooks_and_conflicts_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="path/to/file.py:function"):
        load_config_hook("nohook")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_hook(str(tmp_path / "missing.py") + ":f")
    (tmp_path / "h.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no function"):
        load_config_hook(f"{tmp_path / 'h.py'}:f")
    with pytest.raises(ConfigError, match="lr_decay"):
        build_strategy(_cfg(["--lr-decay", "0.9", "--lr-schedule", "step"]))
