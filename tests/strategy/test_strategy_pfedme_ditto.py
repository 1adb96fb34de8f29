"""pFedMe (Dinh et al. 2020) and Ditto (Li et al. 2021) against hand-written float64 loops, their
personal models kept per party and used by personalised evaluation; and frozen tensors (a
pre-trained base under adapters), which never travel either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import pollen
from pollen.client.data import PartyData
from pollen.client.party import PERSONAL_KEY, LocalParty, PartyTables, Shard
from pollen.client.trainer import Trainer, digest_of, frozen_names, state_to_numpy
from pollen.errors import ConfigError
from pollen.server import Coordinator
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.strategy.ditto import DittoClient, ditto
from pollen.strategy.fedprox import fedprox
from pollen.strategy.pfedme import PFedMeClient, pfedme
from pollen.telemetry import EventBus, RoundCompleted
from pollen.transport.inprocess import InProcessTransport
from pollen.types import RoundConfig, Task

LR, N = 0.1, 24
HOOKS = PartyTables(client_hooks={"pfedme": PFedMeClient(), "ditto": DittoClient()})


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _parties(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    parties = {}
    for i in range(n):
        x = torch.randn(N, 4, generator=g) + i  # a feature shift per party
        y = torch.randint(0, 3, (N,), generator=g)
        parties[str(i)] = LocalParty(str(i), PartyData(Shard(x, y), Shard(x[:8], y[:8])), Trainer(model), tables=HOOKS)
    return parties


def _float64(state):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in state.items()})
    return model


def test_pfedme_party_follows_the_papers_steps():
    lam, steps, plr, epochs = 15.0, 3, 0.05, 2
    model = _model()
    party = _parties(model)["0"]
    strat = pfedme(Sampler(), ClientConfig(base=RoundConfig(lr=LR, epochs=epochs, batch_size=N)), lam=lam,
                   steps=steps, personal_lr=plr)
    w0 = state_to_numpy(model)
    cfg = strat.configure(1, list(w0))
    update = party.handle(Task("0", "fit", 1, w0, cfg)).update
    # the reference: full batches (no shuffling effect), θ from the global model, float64
    theta = _float64(w0)
    local = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w0.items()}
    xb, yb = party.train.tensors()
    for _ in range(epochs):  # one batch per epoch
        for _ in range(steps):
            theta.zero_grad()
            nn.functional.cross_entropy(theta(xb.double()), yb).backward()
            with torch.no_grad():
                for k, p in theta.named_parameters():
                    p -= plr * (p.grad + lam * (p - local[k]))
        with torch.no_grad():
            for k, p in theta.named_parameters():
                local[k] = local[k] - LR * lam * (local[k] - p)
    for k in w0:
        np.testing.assert_allclose(update.delta[k], local[k].numpy() - w0[k], atol=1e-5)
        np.testing.assert_allclose(party.state[PERSONAL_KEY][k], theta.state_dict()[k].numpy(), atol=1e-5)
    assert update.metrics["steps"] == epochs * steps
    assert strat.aggregator.weighted is False  # the paper's plain mean over parties


def test_ditto_sends_fedavgs_update_and_keeps_a_personal_model_pulled_to_the_global():
    lam, plr = 0.5, 0.2
    base = ClientConfig(base=RoundConfig(lr=LR, epochs=2, batch_size=8))
    model = _model()
    w0 = state_to_numpy(model)
    ditto_party = _parties(model)["1"]
    plain_party = _parties(_model())["1"]
    strat = ditto(Sampler(), base, lam=lam, personal_lr=plr)
    sent = ditto_party.handle(Task("1", "fit", 1, w0, strat.configure(1, list(w0)))).update
    plain = plain_party.handle(Task("1", "fit", 1, w0, fedavg(Sampler(), base).configure(1, list(w0)))).update
    for k in w0:  # the global model's update is exactly FedAvg's
        np.testing.assert_array_equal(sent.delta[k], plain.delta[k])
    # round 1: v starts at w, pulled to w: FedProx's local model with mu = λ at the personal lr
    prox = fedprox(Sampler(), ClientConfig(base=RoundConfig(lr=plr, epochs=2, batch_size=8)), mu=lam)
    from pollen.client.party import round_seed

    gen = torch.Generator().manual_seed(round_seed(0, "1", 1) ^ 0xD1770)
    ref = Trainer(_model()).fit(w0, ditto_party.train, prox.configure(1, list(w0)), gen)
    personal = ditto_party.state[PERSONAL_KEY]
    for k in w0:
        np.testing.assert_allclose(personal[k], w0[k] + ref.delta[k], atol=1e-6)
    # round 2 starts v from the stored personal model, not from the new global model
    w1 = {k: v + 0.01 for k, v in w0.items()}
    ditto_party.handle(Task("1", "fit", 2, w1, strat.configure(2, list(w1))))
    assert not np.allclose(ditto_party.state[PERSONAL_KEY]["1.weight"], personal["1.weight"])


@pytest.mark.parametrize("make", [lambda c: pfedme(Sampler(), c, lam=5.0, steps=2),
                                  lambda c: ditto(Sampler(), c, lam=0.1)], ids=["pfedme", "ditto"])
def test_personalised_evaluation_uses_each_partys_personal_model(make):
    model = _model()
    parties = _parties(model, n=3)
    records = []
    bus = EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    strat = make(ClientConfig(base=RoundConfig(lr=LR, batch_size=8)))
    final = Coordinator(strat, InProcessTransport(parties), 2, fed_eval=True, events=bus).run(state_to_numpy(model))
    personal = [parties[p].state[PERSONAL_KEY] for p in ("0", "1", "2")]
    assert not np.allclose(personal[0]["1.weight"], personal[2]["1.weight"])
    assert not np.allclose(personal[0]["1.weight"], final["1.weight"])
    per_party = records[-1]["fed_accuracy_parties"]
    for pid, party in parties.items():  # each party's number is its personal model's, not the global one's
        expect = party.trainer.evaluate(personal[int(pid)], party.val).metrics["accuracy"]
        assert per_party[pid] == pytest.approx(expect)


def test_pfedme_and_ditto_by_name_and_refused_with_dp_sgd(tmp_path):
    for name in ("pfedme", "ditto"):
        result = pollen.simulate(dataset="digits", parties=3, rounds=2, strategy=name, runs_dir=str(tmp_path),
                                 name=name, progress=False, threads=1, personal_steps=2)
        assert result.history[-1]["fed_accuracy"] > 0.3
        with pytest.raises(ConfigError, match="personal model"):
            pollen.simulate(dataset="digits", parties=3, rounds=1, strategy=name, dp_sgd=True, noise_multiplier=1.0,
                            delta=1e-5, runs_dir=str(tmp_path), name=f"{name}-dp", progress=False)


# ------------------------------------------------------------ frozen tensors never travel
class Adapted(nn.Module):
    """A frozen "pre-trained" base and a small trainable head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(123)  # the "checkpoint": the same base wherever it is built
        self.base = nn.Linear(4, 16)
        self.base.requires_grad_(False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.base(x)))


class Recording(InProcessTransport):
    def __init__(self, parties):
        super().__init__(parties)
        self.tasks, self.replies = [], []

    def submit(self, task):
        self.tasks.append(task)
        super().submit(task)

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if reply is not None:
            self.replies.append(reply)
        return reply


def _frozen_run(strategy, party_model=None, rounds=2):
    model = Adapted()
    g = torch.Generator().manual_seed(0)
    trainer = Trainer(party_model or Adapted())
    parties = {str(i): LocalParty(str(i), PartyData(Shard(torch.randn(N, 4, generator=g), torch.randint(0, 3, (N,), generator=g)),
                                                     Shard(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))),
                                  trainer, tables=HOOKS) for i in range(2)}
    state = state_to_numpy(model)
    names = frozen_names(model)
    transport = Recording(parties)
    final = Coordinator(strategy.with_frozen(names, digest_of({k: state[k] for k in names})), transport, rounds,
                        fed_eval=True).run(state)
    return state, final, transport, parties


@pytest.mark.parametrize("make", [lambda c: fedavg(Sampler(), c), lambda c: ditto(Sampler(), c)], ids=["fedavg", "ditto"])
def test_frozen_tensors_never_travel(make):
    state, final, transport, parties = _frozen_run(make(ClientConfig(base=RoundConfig(lr=LR, batch_size=8))))
    frozen = {"base.weight", "base.bias"}
    assert set(frozen_names(Adapted())) == frozen
    assert len(transport.tasks) == 2 * 2 + 2  # 2 rounds × 2 parties, then one evaluation each
    for task in transport.tasks:
        assert set(task.state) == {"head.weight", "head.bias"}
    fits = [r for r in transport.replies if r.kind == "fit"]
    assert fits and all(r.ok and set(r.update.delta) == {"head.weight", "head.bias"} for r in fits)
    for k in frozen:  # the coordinator's copy is the pre-trained base, untouched
        np.testing.assert_array_equal(final[k], state[k])
    assert not np.allclose(final["head.weight"], state["head.weight"])
    assert all("base.weight" not in p.state.get("private", {}) for p in parties.values())  # not stored per party


def test_a_party_with_another_frozen_base_is_refused():
    other = Adapted()
    with torch.no_grad():
        other.base.weight.add_(1.0)  # another "checkpoint"
    _, _, transport, _ = _frozen_run(fedavg(Sampler(), ClientConfig(base=RoundConfig(lr=LR))), party_model=other, rounds=1)
    fits = [r for r in transport.replies if r.kind == "fit"]
    assert fits and all(not r.ok and "frozen" in r.failure and "pre-trained" in r.failure for r in fits)


@pytest.mark.parametrize("strategy,layers", [("fedbn", "fc1"), ("fedper", "head"), ("pfedme", None)])
def test_checks_do_not_probe_name_filters_with_made_up_names(strategy, layers):
    # the privacy checks and the app check once called strategy.configure(1, ["w"]), which made
    # FedBN's and FedPer's --local-layers filters refuse every configuration ("no tensor matches")
    from pollen.config import make_config
    from pollen.privacy.checks import problems

    cfg = make_config({"data": {"dataset": "digits", "parties": 2},
                       "strategy": {"name": strategy, **({"local_layers": layers} if layers else {})}})
    assert problems(cfg) == []
    dp = make_config({"data": {"dataset": "digits", "parties": 2}, "privacy": {"dp_sgd": True, "noise_multiplier": 1.0,
                                                                             "delta": 1e-5},
                      "strategy": {"name": strategy, **({"local_layers": layers} if layers else {})}})
    assert any("personal model" in p for p in problems(dp)) == (strategy == "pfedme")
