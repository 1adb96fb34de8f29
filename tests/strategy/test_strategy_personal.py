"""FedBN never sends BatchNorm tensors and keeps them per party; FedPer never sends the head and
reports both the global model's and each party's personalised accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollen.client.data import PartyData
from pollen.client.party import LocalParty, Shard
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.errors import StrategyError
from pollen.models import build_model
from pollen.server import Coordinator
from pollen.strategy import ClientConfig, Sampler
from pollen.strategy.fedbn import BatchNormFilter, fedbn
from pollen.strategy.fedper import HeadFilter, fedper
from pollen.telemetry import EventBus, RoundCompleted
from pollen.transport.inprocess import InProcessTransport
from pollen.types import EvalResult, RoundConfig


class Recording(InProcessTransport):
    """The in-process transport, keeping every reply it hands back."""

    def __init__(self, parties):
        super().__init__(parties)
        self.replies = []

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if reply is not None:
            self.replies.append(reply)
        return reply


def _federation(n=3, seed=0):
    torch.manual_seed(seed)
    trainer = Trainer(build_model("small_cnn", (1, 8, 8), 10))
    g = torch.Generator().manual_seed(seed)
    parties = {}
    for i in range(n):
        # a feature shift per party (FedBN's setting): different input scale and offset
        x = torch.randn(40, 1, 8, 8, generator=g) * (1 + i) + i
        y = torch.randint(0, 10, (40,), generator=g)
        parties[str(i)] = LocalParty(str(i), PartyData(Shard(x, y), Shard(x[:10], y[:10])), trainer)
    return trainer, parties


def _run(strategy, rounds=2):
    trainer, parties = _federation()
    transport = Recording(parties)
    records = []
    bus = EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    state = state_to_numpy(trainer.model)
    evaluate = lambda s: EvalResult(0.0, 0.5, 1)  # noqa: E731 - a stand-in server test set
    Coordinator(strategy, transport, rounds, evaluate=evaluate, fed_eval=True, events=bus).run(state)
    return state, parties, transport, records


def _client():
    return ClientConfig(base=RoundConfig(lr=0.05, batch_size=8))


def test_fedbn_never_sends_batchnorm_tensors():
    state, parties, transport, _ = _run(fedbn(Sampler(), _client()))
    fits = [r for r in transport.replies if r.kind == "fit"]
    assert len(fits) == 6
    bn = {k for k in state if k.startswith("bn.")}
    assert bn == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    for reply in fits:
        assert reply.ok, reply.failure
        assert not bn & set(reply.update.delta), "a BatchNorm tensor left a party"
        assert set(reply.update.delta) == set(state) - bn
    # each party keeps its own BatchNorm statistics between rounds, and they differ (feature shift)
    means = [parties[p].state["private"]["bn.running_mean"] for p in ("0", "1", "2")]
    assert set(parties["0"].state["private"]) == bn
    assert not np.allclose(means[0], means[2])


def test_fedbn_refuses_a_model_without_batchnorm():
    with pytest.raises(StrategyError, match="BatchNorm"):
        BatchNormFilter().shared(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])


def test_fedper_never_sends_the_head_and_reports_both_accuracies():
    state, parties, transport, records = _run(fedper(Sampler(), _client()))
    head = {"head.weight", "head.bias"}
    for reply in (r for r in transport.replies if r.kind == "fit"):
        assert reply.ok, reply.failure
        assert not head & set(reply.update.delta), "the head left a party"
    last = records[-1]
    assert last["accuracy"] == 0.5  # the global model, on the server's test set
    per_party = last["fed_accuracy_parties"]
    assert set(per_party) == {"0", "1", "2"}
    n = [10, 10, 10]
    assert last["fed_accuracy"] == pytest.approx(np.average(list(per_party.values()), weights=n))
    heads = [parties[p].state["private"]["head.weight"] for p in ("0", "1")]
    assert not np.allclose(heads[0], heads[1])


def test_fedper_head_detection_and_explicit_layers():
    names = ["features.0.weight", "features.0.bias", "classifier.3.weight", "classifier.3.bias"]
    assert HeadFilter().shared(names) == ("features.0.weight", "features.0.bias")
    assert HeadFilter(("features.0",)).shared(names) == ("classifier.3.weight", "classifier.3.bias")
    with pytest.raises(StrategyError, match="no tensor matches"):
        HeadFilter(("decoder",)).shared(names)
