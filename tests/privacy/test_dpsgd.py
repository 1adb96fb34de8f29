"""DP-SGD through Opacus: equals plain training without noise or clipping, Poisson batches,
per-party ε and the budget stop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from pollen.client.party import LocalParty, Shard
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.errors import PrivacyError
from pollen.privacy.accountant import RDPAccountant, participation_steps
from pollen.privacy.dpsgd import dp_fit, dp_train, make_private_model, poisson_batches
from pollen.types import RoundConfig, Task


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_zero_noise_no_clipping_equals_plain_training():
    x, y = _data()
    batches = list(torch.randperm(96, generator=torch.Generator().manual_seed(1)).split(16))
    cfg = RoundConfig(lr=0.1, batch_size=16, momentum=0.5)
    plain, private = _net(), _net()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.5)
    for idx in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(plain(x[idx]), y[idx]).backward()
        opt.step()
    dp_train(private, x, y, batches, cfg, noise_multiplier=0.0, max_grad_norm=1e9, expected_batch_size=16,
             generator=torch.Generator().manual_seed(2))
    for a, b in zip(plain.state_dict().values(), private.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in private.parameters())


def test_noise_and_clipping_change_training():
    x, y = _data()
    batches = list(torch.arange(96).split(16))
    a, b = _net(), _net()
    cfg = RoundConfig(lr=0.1, batch_size=16)
    dp_train(a, x, y, batches, cfg, 0.0, 1e9, 16, torch.Generator().manual_seed(0))
    dp_train(b, x, y, batches, cfg, 1.0, 0.1, 16, torch.Generator().manual_seed(0))
    assert not torch.allclose(a[3].weight, b[3].weight)


def test_a_large_poisson_batch_in_chunks_gives_the_same_step():
    """Chunks of 1, 5 and all examples: per-example clipping, one noise-free step each, same result."""
    x, y = _data()
    batches = [torch.arange(0, 40), torch.arange(40, 96)]
    cfg = RoundConfig(lr=0.1, batch_size=48, momentum=0.5)
    per_example = 4 * sum(p.numel() for p in _net().parameters())
    nets = []
    for budget in (None, per_example, 5 * per_example):
        net = make_private_model(_net())
        out = dp_train(net, x, y, batches, cfg, 0.0, 0.05, 48, torch.Generator().manual_seed(0),
                       grad_sample_bytes=budget)
        assert out["steps"] == 2
        nets.append((net, out))
    for net, out in nets[1:]:
        assert out["train_loss"] == pytest.approx(nets[0][1]["train_loss"], rel=1e-5)
        for a, b in zip(nets[0][0].state_dict().values(), net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(nets[0][0].state_dict()["3.weight"], _net().state_dict()["3.weight"])  # it trained


def test_empty_poisson_batch_still_steps_with_noise():
    x, y = _data()
    net = _net()
    before = copy.deepcopy(net.state_dict())
    dp_train(net, x, y, [torch.zeros(0, dtype=torch.long)], RoundConfig(lr=0.1), 1.0, 1.0, 16,
             torch.Generator().manual_seed(0))
    assert not torch.equal(before["3.weight"], net.state_dict()["3.weight"])  # noise only


def test_poisson_batches_have_the_expected_size():
    batches = poisson_batches(1000, 0.05, 400, torch.Generator().manual_seed(0))
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(50, rel=0.05)
    assert sizes.std() > 3  # Poisson-like, not fixed-size


def test_batchnorm_becomes_groupnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    fixed = make_private_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())


def _party(n=64):
    x, y = _data(n)
    return LocalParty("3", Shard(x, y), Trainer(_net()))


def _dp_config(rnd, **settings):
    dp = {"noise_multiplier": None, "max_grad_norm": 1.0, "target_epsilon": 3.0, "delta": 1e-5,
          "accountant": "rdp", "participations": 2, "headline": True, **settings}
    return RoundConfig(round=rnd, lr=0.05, batch_size=16, extra={"dp_sgd": dp})


def test_party_reports_epsilon_and_stops_past_its_budget():
    party = _party()
    state = state_to_numpy(party.trainer.model)
    q, steps = participation_steps(1, 64, 16)
    eps = []
    for rnd in (1, 2):
        reply = party.handle(Task("3", "fit", rnd, state, _dp_config(rnd)))
        assert reply.ok, reply.failure
        eps.append(reply.update.metrics["epsilon"])
    sigma = reply.update.metrics["noise_multiplier"]
    acc = RDPAccountant()
    acc.step(sigma, q, 2 * steps)
    assert eps[1] == pytest.approx(acc.get_epsilon(1e-5)) and eps[0] < eps[1] <= 3.0
    third = party.handle(Task("3", "fit", 3, state, _dp_config(3)))  # past the planned 2 participations
    assert not third.ok and "privacy budget exhausted" in third.failure and "stops training" in third.failure


def test_fixed_noise_reports_prv_and_rdp():
    party = _party()
    state = state_to_numpy(party.trainer.model)
    cfg = _dp_config(1, noise_multiplier=1.1, target_epsilon=None, accountant="prv", headline=False)
    up = dp_fit(party.trainer, state, party.train, cfg, torch.Generator(), {})
    assert "epsilon" not in up.metrics
    assert 0 < up.metrics["epsilon_record"] <= up.metrics["epsilon_record_rdp"] * 1.01
    assert up.metrics["noise_multiplier"] == 1.1


def test_dp_sgd_run_stays_within_target(digits_cfg):
    import json

    from pollen.simulation import simulate

    cfg = digits_cfg(federation={"rounds": 2}, privacy={"dp_sgd": True, "target_epsilon": 4.0, "delta": 1e-5})
    result = simulate(cfg)
    lines = [json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert 0 < lines[0]["epsilon"] < lines[1]["epsilon"] <= 4.0
    assert not lines[1]["parties_failed"]
