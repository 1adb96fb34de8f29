"""SCAFFOLD (Karimireddy et al. 2020, option II): the party's corrected steps, its control variate
kept between rounds, and the server's updates of x and c, against hand-written formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pollen.client.party import LocalParty, PartyTables, Shard
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.strategy import ClientConfig, Sampler
from pollen.strategy.scaffold import C_PREFIX, DC_PREFIX, PARTY_KEY, ScaffoldClient, ScaffoldServer, scaffold
from pollen.types import RoundConfig, Task

LR, EPOCHS, N = 0.1, 3, 24


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    g = torch.Generator().manual_seed(seed)
    parties = {}
    for pid in ("0", "1"):
        x = torch.randn(N, 4, generator=g)
        y = torch.randint(0, 3, (N,), generator=g)
        parties[pid] = LocalParty(pid, Shard(x, y), Trainer(model),
                                  tables=PartyTables(client_hooks={"scaffold": ScaffoldClient()}))
    return model, parties


def _strategy():
    base = RoundConfig(lr=LR, epochs=EPOCHS, batch_size=N)  # full batch: K = EPOCHS steps, no shuffling effect
    return scaffold(Sampler(), ClientConfig(base=base), server_lr=1.0, participation=0.5)


def _manual_local(x0, party, c, ci):
    """y ← y − η (∇f(y) − cᵢ + c), K full-batch steps, in float64 numpy via torch autograd."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in x0.items()})
    xb, yb = party.train.tensors()
    for _ in range(EPOCHS):
        model.zero_grad()
        nn.functional.cross_entropy(model(xb.double()), yb).backward()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= LR * (p.grad + torch.from_numpy((c[name] - ci[name]).astype(np.float64)))
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_control_variates_persist_and_follow_option_two():
    model, parties = _setup()
    strat = _strategy()
    opt = strat.server_optimizer
    x = state_to_numpy(model)
    opt_state = opt.init(x)
    ci_hist = {pid: {k: np.zeros_like(v) for k, v in x.items()} for pid in parties}
    c = {k: np.zeros_like(v) for k, v in x.items()}
    for rnd in (1, 2, 3):
        payload = opt.broadcast(x, opt_state)
        assert {k[len(C_PREFIX):] for k in payload if k.startswith(C_PREFIX)} == set(x)
        cfg = strat.configure(rnd, list(x))
        updates = []
        for pid, party in parties.items():
            reply = party.handle(Task(pid, "fit", rnd, payload, cfg))
            assert reply.ok, reply.failure
            u = reply.update
            # the corrected local steps, by hand
            y = _manual_local(x, party, c, ci_hist[pid])
            for k in x:
                np.testing.assert_allclose(u.delta[k], y[k] - x[k], atol=2e-5)
            # option II: cᵢ⁺ = cᵢ − c + (x − y)/(K η), kept in the party's state
            ci_new = {k: ci_hist[pid][k] - c[k] + (x[k] - y[k]) / (EPOCHS * LR) for k in x}
            for k in x:
                np.testing.assert_allclose(party.state[PARTY_KEY][k], ci_new[k], atol=2e-4)
                np.testing.assert_allclose(u.delta[DC_PREFIX + k], ci_new[k] - ci_hist[pid][k], atol=2e-4)
            ci_hist[pid] = {k: party.state[PARTY_KEY][k].copy() for k in x}
            updates.append(u)
        # server: x ← x + η_g mean(Δy); c ← c + |S|/N mean(Δc), plain means
        delta = strat.aggregator.aggregate(updates)
        new_x, opt_state = opt.step(x, delta, opt_state)
        for k in x:
            np.testing.assert_allclose(new_x[k], x[k] + np.mean([u.delta[k] for u in updates], axis=0), rtol=1e-6)
            c_ref = c[k] + 0.5 * np.mean([u.delta[DC_PREFIX + k] for u in updates], axis=0)
            np.testing.assert_allclose(opt_state[f"c/{k}"], c_ref, rtol=1e-5, atol=1e-7)
        x = new_x
        c = {k: opt_state[f"c/{k}"].copy() for k in x}
    assert any(np.abs(v).max() > 1e-4 for v in c.values())  # the correction was not trivially zero


def test_parties_keep_separate_control_variates():
    model, parties = _setup(1)
    strat = _strategy()
    x = state_to_numpy(model)
    payload = strat.server_optimizer.broadcast(x, strat.server_optimizer.init(x))
    for pid, party in parties.items():
        party.handle(Task(pid, "fit", 1, payload, strat.configure(1, list(x))))
    a, b = parties["0"].state[PARTY_KEY], parties["1"].state[PARTY_KEY]
    assert not np.allclose(a["1.weight"], b["1.weight"])


def test_server_refuses_bad_participation():
    from pollen.errors import StrategyError

    with pytest.raises(StrategyError, match="participation"):
        ScaffoldServer(1.0, participation=0.0)
