"""Malicious parties built by the federation: each attack changes the sent update as stated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollen.attacks import MaliciousTrainer, alie_z_max, select_malicious
from pollen.attacks.poison import flip_labels
from pollen.client.party import round_seed
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.types import Task


def _setup(digits_cfg, attack: str, **extra):
    cfg = digits_cfg(data={"parties": 10, "holdout": 0.0},
                     attack={"malicious_fraction": 0.3, "attack": attack, **extra})
    fed = assemble(cfg)
    trainer = fed.trainer()
    parties = fed.parties(trainer)
    bad = sorted(select_malicious(fed.party_ids, 0.3, 0), key=int)
    state = {k: v.detach().numpy().copy() for k, v in trainer.model.state_dict().items()}
    return cfg, fed, trainer, parties, bad, state


def _fit(cfg, party, state, rnd=1):
    reply = party.handle(Task(party.party_id, "fit", rnd, state, base_round_config(cfg).with_(round=rnd)))
    assert reply.ok, reply.failure
    return reply.update


def _honest(fed, trainer, pid, state, cfg, rnd=1, flip=False):
    """The update ``pid`` computes when it trains honestly (on flipped labels if asked)."""
    x, y = fed.party_data(pid).train.tensors()
    if flip:
        y = flip_labels(y, 10)
    gen = torch.Generator().manual_seed(round_seed(cfg.run.seed, pid, rnd))
    return trainer.fit(state, (x, y), base_round_config(cfg).with_(round=rnd), gen)


@pytest.mark.parametrize("attack", ["signflip", "scaling", "labelflip", "gaussian", "alie", "ipm"])
def test_each_attack_changes_the_update_as_stated(digits_cfg, attack):
    cfg, fed, trainer, parties, bad, state = _setup(digits_cfg, attack, attack_scale=3.0)
    assert len(bad) == 3
    for pid, party in parties.items():
        assert isinstance(party.trainer, MaliciousTrainer) == (pid in bad)
    sent = _fit(cfg, parties[bad[0]], state)
    assert sent.metrics["malicious"] == 1.0
    honest = _honest(fed, trainer, bad[0], state, cfg, flip=attack in ("labelflip", "scaling"))
    name = next(iter(sent.delta))  # the first layer's weight
    h, s = honest.delta[name], sent.delta[name]
    if attack == "signflip":
        np.testing.assert_allclose(s, -3.0 * h, rtol=1e-5, atol=1e-7)
    elif attack == "scaling":
        np.testing.assert_allclose(s, 3.0 * h, rtol=1e-5, atol=1e-7)
    elif attack == "labelflip":
        np.testing.assert_allclose(s, h, rtol=1e-5, atol=1e-7)
        assert not np.allclose(_honest(fed, trainer, bad[0], state, cfg).delta[name], h)
    elif attack == "gaussian":
        assert s.shape == h.shape and float(np.std(s)) == pytest.approx(1.0, rel=0.1)
    else:  # colluding: all sampled attackers (all 10 parties are sampled: n = 10, f = 3)
        benign = np.stack([_honest(fed, trainer, p, state, cfg).delta[name].astype(np.float64) for p in bad])
        expect = (benign.mean(0) - alie_z_max(10, 3) * benign.std(0)) if attack == "alie" else -0.5 * benign.mean(0)
        np.testing.assert_allclose(s, expect, rtol=1e-4, atol=1e-6)
    good = next(p for p in fed.party_ids if p not in bad)
    assert "malicious" not in _fit(cfg, parties[good], state).metrics
