"""The SecAgg+ protocol end to end over the real round loop, with parties whose 'training'
returns fixed deltas: correctness under dropouts at every stage, what the coordinator sees, and
what t − 1 colluding parties can (not) learn."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from pollen.client.party import LocalParty, PartyTables, Shard
from pollen.privacy.secagg.party import task_handlers
from pollen.errors import RunError
from pollen.privacy.secagg import SecAggParams, SecAggPlus, field, masks, shamir
from pollen.privacy.secagg import constants as C
from pollen.server import Coordinator
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.transforms.base import Pipeline, UpdateStep
from pollen.transport.inprocess import InProcessTransport
from pollen.types import Update

D = 20_000


class FixedTrainer:
    """'Training' that returns a fixed delta (and counts examples like the real trainer)."""

    def __init__(self, delta):
        self.delta = delta

    def fit(self, state, data, config, generator, *a, **kw):
        return Update(dict(self.delta), len(data), {"train_loss": 1.0})


class Spy(InProcessTransport):
    """Records every reply that reaches the coordinator."""

    def __init__(self, parties):
        super().__init__(parties)
        self.received = []

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if reply is not None:
            self.received.append(reply)
        return reply


def federation(n=7, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    deltas = {str(i): {"w": (rng.standard_normal(D) * scale).astype(np.float32),
                       "b": (rng.standard_normal(3) * scale).astype(np.float32)} for i in range(n)}
    examples = {str(i): int(rng.integers(20, 200)) for i in range(n)}
    return deltas, examples


def run_round(deltas, examples, step, transport_cls=InProcessTransport, extra_steps=(), handlers=None, **coord_kw):
    pipeline = Pipeline((*extra_steps, step))
    tables = PartyTables(task_handlers=handlers if handlers is not None else task_handlers())
    parties = {p: LocalParty(p, Shard(torch.zeros(examples[p], 1), torch.zeros(examples[p], dtype=torch.long)),
                             FixedTrainer(d), pipeline=pipeline, tables=tables) for p, d in deltas.items()}
    transport = transport_cls(parties)
    state = {"w": np.zeros(D, np.float32), "b": np.zeros(3, np.float32)}
    coord = Coordinator(fedavg(Sampler(), ClientConfig()), transport, rounds=1, pipeline=pipeline, **coord_kw)
    return coord.run(state), transport, parties


def expected_mean(deltas, examples, included):
    w = np.array([examples[p] for p in included], dtype=np.float64)
    return {k: np.average(np.stack([deltas[p][k] for p in included]), axis=0, weights=w) for k in ("w", "b")}


def test_secure_sum_equals_the_plain_weighted_mean():
    deltas, examples = federation()
    step = SecAggPlus(SecAggParams())
    out, _, _ = run_round(deltas, examples, step)
    want = expected_mean(deltas, examples, list(deltas))
    bound = step.last.spec.error_bound
    for k in want:
        assert np.max(np.abs(out[k] - want[k])) <= bound + 1e-6  # + float32 rounding of the result
    assert step.last.included == sorted(deltas, key=int) and step.last.t == 5 and step.last.k == 6


# n = 7, complete graph (k = 6), t = ceil(2/3 · 7) = 5 → up to n − t = 2 parties may drop.
DROPS = [
    {C.STAGE_ADVERTISE: {"2"}},
    {C.STAGE_ADVERTISE: {"2", "4"}},
    {C.STAGE_SHARE_KEYS: {"0", "5"}},
    {C.STAGE_MASKED_INPUT: {"1", "6"}},
    {C.STAGE_CONSISTENCY: {"3", "4"}},
    {C.STAGE_UNMASK: {"0", "4"}},
    {C.STAGE_ADVERTISE: {"6"}, C.STAGE_SHARE_KEYS: {"0"}},
    {C.STAGE_SHARE_KEYS: {"1"}, C.STAGE_MASKED_INPUT: {"2"}},
    {C.STAGE_MASKED_INPUT: {"5"}, C.STAGE_CONSISTENCY: {"1"}},
    {C.STAGE_MASKED_INPUT: {"5"}, C.STAGE_UNMASK: {"0"}},
]


@pytest.mark.parametrize("drop", DROPS, ids=lambda d: "+".join(f"{k}:{len(v)}" for k, v in d.items()))
def test_dropouts_at_every_stage_up_to_n_minus_t(drop):
    deltas, examples = federation()
    step = SecAggPlus(SecAggParams(planned=7), drop=drop)
    out, _, _ = run_round(deltas, examples, step)
    # a party whose masked update arrived is in the sum (U3), whether or not it signs or unmasks
    lost_before_sum = set().union(*(v for s, v in drop.items() if s not in (C.STAGE_CONSISTENCY, C.STAGE_UNMASK)))
    included = [p for p in deltas if p not in lost_before_sum]
    assert step.last.included == included
    want = expected_mean(deltas, examples, included)
    for k in want:
        assert np.max(np.abs(out[k] - want[k])) <= step.last.spec.error_bound + 1e-6


def test_integer_buffers_are_summed_exactly():
    """BatchNorm's step counter moves by whole steps, far beyond the clip range: summed exactly."""
    deltas, examples = federation(n=4)
    for i, d in enumerate(deltas.values()):
        d["steps"] = np.array(40 + i, dtype=np.int64)
    step = SecAggPlus(SecAggParams(clip=0.5))
    pipeline = Pipeline((step,))
    parties = {p: LocalParty(p, Shard(torch.zeros(examples[p], 1), torch.zeros(examples[p], dtype=torch.long)),
                             FixedTrainer(d), pipeline=pipeline, tables=PartyTables(task_handlers=task_handlers()))
               for p, d in deltas.items()}
    state = {"w": np.zeros(D, np.float32), "b": np.zeros(3, np.float32), "steps": np.array(0, np.int64)}
    coord = Coordinator(fedavg(Sampler(), ClientConfig()), InProcessTransport(parties), rounds=1, pipeline=pipeline)
    out = coord.run(state)
    w = np.array(list(examples.values()), dtype=np.float64)
    assert out["steps"] == np.rint(np.average([40, 41, 42, 43], weights=w))


def test_sparse_graph_with_thirty_percent_dropout():
    deltas, examples = federation(n=20, seed=3)
    step = SecAggPlus(SecAggParams(neighbours=10, threshold=0.51, planned=20, dropout=0.3, seed=1))
    out, _, _ = run_round(deltas, examples, step)
    assert step.last.k == 10 and step.last.t == 6 and len(step.last.included) == 14
    want = expected_mean(deltas, examples, step.last.included)
    assert np.max(np.abs(out["w"] - want["w"])) <= step.last.spec.error_bound + 1e-6


def test_more_than_n_minus_t_dropouts_fail_loudly():
    """n = 7, t = 5: three parties drop after masking, four masked updates arrive, fewer than t. The
    secure sum fails (``protocol.run`` raises RunError); the round loop records the round as not
    aggregated, with the reason, leaves the model as it was, and stops the run with that reason
    after ``max_empty_rounds`` such rounds (``Coordinator._combine``: the round, not the run)."""
    from pollen.telemetry import EventBus, RoundCompleted

    deltas, examples = federation()
    drop = {C.STAGE_MASKED_INPUT: {"0", "1", "2"}}
    step = SecAggPlus(SecAggParams(planned=7), drop=drop)
    records = []
    events = EventBus()
    events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    out, _, _ = run_round(deltas, examples, step, events=events)
    assert records[0]["aggregated"] is False and "threshold" in records[0]["reason"], records[0]
    assert "RunError" in records[0]["reason"]
    assert all(not v.any() for v in out.values())  # nothing was released, nothing applied

    with pytest.raises(RunError, match="threshold"):
        run_round(deltas, examples, SecAggPlus(SecAggParams(planned=7), drop=drop), max_empty_rounds=1)


def test_the_coordinator_never_holds_an_unmasked_update(monkeypatch):
    """Every array that reaches the coordinator is a public key, a ciphertext, a share, or a
    masked vector; each masked vector is uniform in Z_2^32 (chi-square p > 1e-6) and carries no
    trace of its party's plaintext; ``dequantize`` runs once, on the sum, and nowhere else."""
    plain, decoded = {}, []
    real_quantize, real_dequantize = field.quantize, field.dequantize

    def quantize(values, spec, weight, rng, *a):  # party side: remember each plaintext
        q, clipped = real_quantize(values, spec, weight, rng, *a)
        plain[len(plain)] = q.copy()
        return q, clipped

    def dequantize(total, spec, *a):  # coordinator side: every call is recorded
        decoded.append(total.copy())
        return real_dequantize(total, spec, *a)

    monkeypatch.setattr(field, "quantize", quantize)
    monkeypatch.setattr(field, "dequantize", dequantize)
    deltas, examples = federation()
    step = SecAggPlus(SecAggParams(), drop={C.STAGE_MASKED_INPUT: {"3"}})
    out, spy, _ = run_round(deltas, examples, step, transport_cls=Spy)

    assert len(decoded) == 1  # the sum, once
    # quantize ran once per party, in id order (party 3 masked too, then dropped)
    included_q = [q for q, pid in zip(plain.values(), sorted(deltas, key=int)) if pid != "3"]
    np.testing.assert_array_equal(decoded[0], np.sum(included_q, axis=0, dtype=np.uint32))

    plaintext_floats = [np.concatenate([d["w"], d["b"]]) for d in deltas.values()]
    size = D + 3
    masked = []
    for reply in spy.received:
        assert reply.kind in C.STAGES
        for name, arr in (reply.update.delta if reply.update else {}).items():
            if arr.size >= size:
                assert name == C.MASKED and arr.dtype == np.int32  # Z_2^32 elements as int32 bits
                masked.append(arr.view(np.uint32))
            else:
                assert arr.dtype == np.uint8 and arr.size <= 512, (name, arr.dtype, arr.size)
    assert len(masked) == 6
    for y in masked:
        assert min(chisquare(np.bincount(y >> 24, minlength=256)).pvalue,
                   chisquare(np.bincount(y & 0xFF, minlength=256)).pvalue) > 1e-6
        for q in plain.values():
            assert np.mean(y == q) < 1e-3
            assert abs(np.corrcoef(y.astype(np.float64), q.view(np.int32).astype(np.float64))[0, 1]) < 0.05
        as_if_plain = y.view(np.int32).astype(np.float64)
        for x in plaintext_floats:
            assert abs(np.corrcoef(as_if_plain, x)[0, 1]) < 0.05


def test_t_minus_one_colluders_and_the_coordinator_cannot_unmask_a_survivor(monkeypatch):
    """The coordinator legitimately rebuilds a survivor h's self-mask seed. To strip h's pairwise
    masks it also needs h's mask key; honest parties never reveal shares of it (h survived), and
    the t − 1 colluders' shares rebuild a wrong key. With t colluders the attack works — the
    threshold is what protects h."""
    held = {}
    handlers = task_handlers()
    real = handlers[C.STAGE_UNMASK]

    def snoop(party, task):  # the colluders hand over every share they hold
        held[party.party_id] = dict(party.state[C.STATE]["shares"])
        return real(party, task)

    handlers[C.STAGE_UNMASK] = snoop
    deltas, examples = federation()
    step = SecAggPlus(SecAggParams())
    _, spy, _ = run_round(deltas, examples, step, transport_cls=Spy, handlers=handlers)
    t, h = step.last.t, "0"
    masked = next(r.update.delta[C.MASKED] for r in spy.received
                  if r.kind == C.STAGE_MASKED_INPUT and r.party_id == h).view(np.uint32)
    mask_pk = next(r.update.delta[C.MASK_PK] for r in spy.received if r.kind == "fit" and r.party_id == h).tobytes()
    seed = shamir.reconstruct([held[p][h][0] for p in list(held)[:t]])  # as the coordinator does

    colluders = [p for p in held if p != h]
    for n_colluding, should_work in ((t - 1, False), (t, True)):
        shares = [held[p][h][1] for p in colluders[:n_colluding]]
        try:
            sk = shamir.reconstruct(shares)
            works = masks.public_bytes(masks.private_from_bytes(sk)) == mask_pk
        except Exception:
            works = False
        assert works is should_work
    assert seed  # the seed alone leaves h's pairwise masks on: y − PRG(seed) is still uniform
    y = masked.copy()
    masks.add_stream(y, masks.derive(seed, C.INFO_SELF, 1), -1)
    assert chisquare(np.bincount(y >> 24, minlength=256)).pvalue > 1e-6


class Clip(UpdateStep):
    """A stand-in for the DP engineer's clip step: scales every delta by 0.5."""

    name, stage = "halve", "clip"

    def encode(self, update, ctx):
        return update.with_(delta={k: v * 0.5 for k, v in update.delta.items()})


def test_masking_consumes_the_pipeline_output():
    deltas, examples = federation(n=4)
    step = SecAggPlus(SecAggParams())
    out, _, _ = run_round(deltas, examples, step, extra_steps=(Clip(),))
    want = expected_mean(deltas, examples, list(deltas))
    np.testing.assert_allclose(out["w"], 0.5 * want["w"], atol=step.last.spec.error_bound + 1e-6)
