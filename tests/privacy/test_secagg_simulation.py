"""Full simulated federations on digits with secure aggregation on: they learn, and the final
model stays within the quantisation tolerance of plain FedAvg run with the same seeds."""

import numpy as np
import pytest

from pollen.errors import ConfigError
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.simulation.run import simulate

# A small MLP on digits without held-out splits: each run takes a few seconds.
ROUNDS = {"federation": {"rounds": 3}, "train": {"lr": 0.1, "epochs": 2}, "model": {"model": "mlp"}}


def _run(digits_cfg, **privacy):
    return simulate(digits_cfg(**ROUNDS, data={"dataset": "digits", "parties": 4, "holdout": 0}, privacy=privacy,
                               run={"name": "sa" if privacy else "plain"}))


def test_secagg_learns_and_tracks_plain_fedavg(digits_cfg):
    plain = _run(digits_cfg)
    secure = _run(digits_cfg, secagg=True)
    acc_plain, acc_secure = plain.history[-1]["accuracy"], secure.history[-1]["accuracy"]
    assert acc_secure >= 0.80  # digits, 4 parties, 3 rounds: plain FedAvg reached 0.875 here
    assert abs(acc_secure - acc_plain) <= 0.02
    bound = secure.history[0]["secagg_error_bound"]
    assert 0 < bound < 1e-5
    # The same training from a model a few quantisation steps away: the models stay close.
    diff = max(float(np.max(np.abs(secure.state[k] - plain.state[k]))) for k in plain.state)
    assert diff < 1e-4  # measured: 1e-6
    h = secure.history[0]
    assert h["secagg_parties"] == 4 and h["secagg_dropped"] == 0
    assert h["bytes_up"] >= plain.history[0]["bytes_up"]  # the masked vectors are counted


def test_secagg_with_dropout_after_masking_still_learns(digits_cfg):
    res = simulate(digits_cfg(**ROUNDS, data={"dataset": "digits", "parties": 10, "holdout": 0},
                              privacy={"secagg": True, "secagg_dropout": 0.3}))
    assert all(h["secagg_dropped"] == 3 and h["secagg_parties"] == 7 for h in res.history)
    acc = [h["accuracy"] for h in res.history]
    assert acc[-1] >= 0.6 and acc[-1] > acc[0]  # 10 small parties, 3 rounds: 0.68 measured (chance 0.1)


def test_impossible_combinations_are_refused(digits_cfg):
    with pytest.raises(ConfigError, match="codec"):
        assemble(digits_cfg(privacy={"secagg": True}, compression={"codec": "topk"}))
    with pytest.raises(ConfigError, match="at least 2 parties"):
        assemble(digits_cfg(privacy={"secagg": True}, federation={"parties_per_round": 1}))
