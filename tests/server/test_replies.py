"""An enrolled party that lies in any field of its reply loses its own round; the coordinator, its
round record and its history survive — also after a resume (issue 12, item 1).

Each case is a reply from party "2" next to two honest parties. Before issue 12 a metric named
``num_examples`` crashed the coordinator (TypeError), metrics named ``round``/``parties``/``epsilon``
overwrote the history, a ``codec`` header skipped the shape check (an extra tensor: KeyError; a
(1,)-shaped tensor broadcast over a weight), a codec's metadata chose the size its decoder
allocated, and an evaluation metric named ``loss`` crashed federated evaluation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pollen.compose import assemble
from pollen.config import make_config
from pollen.server import Checkpointer, Coordinator
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.telemetry import EventBus, RoundCompleted
from pollen.telemetry.history import HistorySink, read_history
from pollen.telemetry.report import write_report
from pollen.transport.base import Transport
from pollen.types import EvalResult, Reply, Update

STATE = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.zeros((), np.int64)}
HONEST = {"0": 1.0, "1": 3.0}  # party -> the value of each of its float deltas


def _delta(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, np.float32), "b": np.full(3, value, np.float32), "n": np.array(1, np.int64)}


class Liar(Transport):
    """Honest parties 0 and 1; party 2 answers with whatever ``lie(task)`` builds."""

    def __init__(self, lie, evaluation=None, encode=lambda u: u):
        self.lie, self.evaluation, self.encode = lie, evaluation, encode
        self.queue = []

    def available(self):
        return ["0", "1", "2"]

    def submit(self, task):
        self.queue.append(task)

    def poll(self, timeout=None):
        if not self.queue:
            return None
        t = self.queue.pop(0)
        if t.kind == "evaluate":
            ev = self.evaluation if t.party_id == "2" and self.evaluation is not None else EvalResult(1.0, 0.5, 10)
            return Reply(t.party_id, "evaluate", t.round, evaluation=ev)
        if t.party_id == "2":
            return self.lie(t)
        honest = Update(_delta(HONEST[t.party_id]), 10, {"train_loss": 0.5})
        return Reply(t.party_id, "fit", t.round, update=self.encode(honest))

    def pending(self):
        return len(self.queue)


def _fit(update: Update):
    return lambda t: Reply("2", "fit", t.round, update=update)


def _run(transport, rounds=2, pipeline=None, checkpointer=None, events=None, start=1, state=None, opt=None):
    records = []
    bus = events or EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    kw = {"pipeline": pipeline} if pipeline is not None else {}
    coord = Coordinator(fedavg(Sampler(), ClientConfig()), transport, rounds=rounds, events=bus, fed_eval=True,
                        checkpointer=checkpointer, **kw)
    return coord.run(state if state is not None else dict(STATE), start_round=start, optimizer_state=opt), records


def _honest_only(final, rounds=2):
    mean = sum(HONEST.values()) / len(HONEST)
    np.testing.assert_allclose(final["w"], np.full((2, 3), rounds * mean))
    np.testing.assert_allclose(final["b"], np.full(3, rounds * mean))


def _assert_intact(records, rounds=2):
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    for r in records:
        assert r["parties"] == ["0", "1"] and r["num_examples"] == 20 and r["aggregated"] is True
        assert "epsilon" not in r and r["party_metrics"]["train_loss"] == pytest.approx(0.5)


# ---------------------------------------------------------------- refused fields
REFUSED = {
    "metric NaN": (Update(_delta(9.0), 10, {"train_loss": float("nan")}), "finite"),
    "metric inf": (Update(_delta(9.0), 10, {"train_loss": float("inf")}), "finite"),
    "metric 1e300": (Update(_delta(9.0), 10, {"train_loss": 1e300}), "outside"),
    "metric string": (Update(_delta(9.0), 10, {"train_loss": "low"}), "number"),
    "metric staleness": (Update(_delta(9.0), 10, {"staleness": 0.0}), "coordinator"),
    "steps 1e12": (Update(_delta(9.0), 10, {"steps": 1e12}), "steps"),
    "too many metrics": (Update(_delta(9.0), 10, {f"m{i}": 1.0 for i in range(65)}), "at most"),
    "examples negative": (Update(_delta(9.0), -5, {}), "num_examples"),
    "examples zero": (Update(_delta(9.0), 0, {}), "num_examples"),
    "examples bool": (Update(_delta(9.0), True, {}), "num_examples"),
    "examples 1e13": (Update(_delta(9.0), 10**13, {}), "num_examples"),
    "examples fractional": (Update(_delta(9.0), 2.5, {}), "whole"),
    "examples string": (Update(_delta(9.0), "10", {}), "num_examples"),
    "codec header, extra tensor": (Update({**_delta(9.0), "extra": np.ones(3, np.float32)}, 10, {}, {"fp16": {}}),
                                   "codecs"),
    "codec header, (1,) tensor": (Update({**_delta(9.0), "w": np.full(1, 9.0, np.float32)}, 10, {}, {"fp16": {}}),
                                  "codecs"),
    "extra tensor": (Update({**_delta(9.0), "extra": np.ones(3, np.float32)}, 10, {}), "unexpected"),
    "missing tensor": (Update({"w": _delta(9.0)["w"]}, 10, {}), "missing"),
    "(1,) tensor": (Update({**_delta(9.0), "w": np.full(1, 9.0, np.float32)}, 10, {}), "'w'"),
    "NaN tensor": (Update({**_delta(9.0), "b": np.full(3, np.nan, np.float32)}, 10, {}), "NaN"),
    "int tensor for float": (Update({**_delta(9.0), "b": np.full(3, 9, np.int32)}, 10, {}), "'b'"),
    "float buffer for int": (Update({**_delta(9.0), "n": np.array(1.0)}, 10, {}), "'n'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_field_costs_the_party_its_round_only(case):
    update, why = REFUSED[case]
    final, records = _run(Liar(_fit(update)))
    _honest_only(final)
    _assert_intact(records)
    for r in records:
        assert r["parties_failed"] == ["2"] and why in r["failures"]["2"], r["failures"]


# ---------------------------------------------------------------- accepted, in their own namespace
def test_metrics_named_like_round_fields_stay_in_the_party_namespace():
    lies = {"num_examples": 5.0, "round": 333.0, "parties": 7.0, "epsilon": 1e9, "aggregated": 0.0, "seconds": 1e6,
            "train_loss": 0.5}
    final, records = _run(Liar(_fit(Update(_delta(HONEST["1"]), 10, lies))))
    mean = (10 * HONEST["0"] + 20 * HONEST["1"]) / 30
    np.testing.assert_allclose(final["w"], np.full((2, 3), 2 * mean), rtol=1e-6)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert r["parties"] == ["0", "1", "2"] and r["num_examples"] == 30 and r["aggregated"] is True
        assert "epsilon" not in r and r["seconds"] < 1e5  # a run without DP records no ε, whatever a party says
        assert r["party_metrics"]["round"] == pytest.approx(111.0)  # the example-weighted mean, namespaced
        assert r["party_metrics"]["epsilon"] == 1e9  # the party's claim, where it cannot pass for the run's


def test_privacy_figures_are_lifted_only_when_the_run_asked_parties_for_them():
    from pollen.server.replies import expected, round_fields
    from pollen.types import RoundConfig

    u = [Update(_delta(1.0), 10, {"epsilon": 2.5, "epsilon_record": 2.5})]
    plain = assemble(make_config({"data": {"dataset": "digits"}})).pipeline
    asked_dp = RoundConfig(extra={"dp_sgd": {"delta": 1e-5}})
    assert "epsilon" not in round_fields(u, expected(STATE, RoundConfig(), plain))
    assert round_fields(u, expected(STATE, asked_dp, plain))["epsilon"] == 2.5
    local = assemble(make_config({"data": {"dataset": "digits"}, "privacy": {
        "client_dp": "local", "client_noise_multiplier": 1.0, "delta": 1e-5}})).pipeline
    assert round_fields(u, expected(STATE, RoundConfig(), local))["epsilon"] == 2.5


# ---------------------------------------------------------------- codecs of the configured pipeline
def _topk_pipeline():
    return assemble(make_config({"data": {"dataset": "digits"}, "compression": {"codec": "topk"}})).pipeline


def _topk(update):
    """Party 2's honest top-k encoding of ``update``, for crafted variants."""
    from pollen.transforms.base import StepContext

    return _topk_pipeline().encode(update, StepContext("2", 1, np.random.default_rng(0)))


def _garbage(part: np.ndarray) -> np.ndarray:
    """A codec's array with indices far out of range (or values of another length)."""
    if part.dtype.kind in "iu":
        return np.full(part.shape, np.iinfo(part.dtype).max, part.dtype)
    return np.ones(part.size + 7, part.dtype)


def test_codec_metadata_is_checked_against_the_model_before_decoding():
    good = _topk(Update(_delta(9.0), 10, {}))
    meta = good.codec["topk"]
    huge = {**meta, "w": {**meta["w"], "shape": [10**6, 10**6]}}  # would make its decoder allocate 8 TB
    unknown = {**meta, "ghost": meta["w"]}
    cases = {"huge": (good.with_(codec={"topk": huge}), "shape"),
             "unknown tensor": (good.with_(codec={"topk": unknown}), "did not ask"),
             "another codec": (good.with_(codec={"int8": meta}), "codecs"),
             "no codec": (Update(_delta(9.0), 10, {}), "codecs"),
             "garbage arrays": (good.with_(delta={k: _garbage(v) if "::" in k else v for k, v in good.delta.items()}),
                                "refused")}
    for name, (update, why) in cases.items():
        final, records = _run(Liar(_fit(update), encode=_topk), rounds=1, pipeline=_topk_pipeline())
        assert records[0]["parties_failed"] == ["2"] and why in records[0]["failures"]["2"], (name, records[0])
        assert records[0]["parties"] == ["0", "1"], name


def test_a_masked_update_with_a_layout_other_than_the_model_is_refused():
    from pollen.server.replies import Expected, check_update
    from pollen.errors import ProtocolError

    exp = Expected({k: (v.shape, v.dtype) for k, v in STATE.items()}, frozenset(STATE), frozenset({"secagg"}), "secagg",
                   frozenset())
    layout = {"names": list(STATE), "shapes": [[2, 3], [3], []], "dtypes": ["float32", "float32", "int64"]}
    ok = Update({}, 10, {}, {"secagg": {"stage": "advertise", "layout": layout}})
    check_update(ok, exp)
    huge = {**layout, "shapes": [[10**9, 10**9], [3], []]}  # the coordinator would allocate the sum's vector
    for bad in (huge, {**layout, "names": ["w", "b", "x"]}, {**layout, "dtypes": ["int8", "float32", "int64"]}, None):
        with pytest.raises(ProtocolError):
            check_update(ok.with_(codec={"secagg": {"stage": "advertise", "layout": bad}}), exp)


# ---------------------------------------------------------------- failures and evaluations
def test_a_failure_message_cannot_fake_log_lines_or_terminal_output():
    text = "boom\n2026-01-01 INFO pollen: party 0 joined\x1b[2J[/bold] " + "x" * 5000
    final, records = _run(Liar(lambda t: Reply("2", "fit", t.round, failure=text)))
    from pollen.server.replies import clean_text

    reason = records[0]["failures"]["2"]
    assert "\n" not in reason and "\x1b" not in reason and len(reason) <= 300 and reason.startswith("boom")
    assert clean_text("a\tb\x00c") == "a b c"


@pytest.mark.parametrize("ev", [EvalResult(1.0, None, 10, {"loss": 0.1}),  # crashed fed eval (duplicate fed_loss)
                                EvalResult(1.0, 7.0, 10), EvalResult(1.0, 0.5, -10),
                                EvalResult(float("inf"), 0.5, 10), EvalResult(1.0, 0.5, 10**13),
                                EvalResult(1.0, 0.5, 10, {"auc_parties": 0.5})])
def test_a_bad_evaluation_is_left_out(ev):
    final, records = _run(Liar(_fit(Update(_delta(HONEST["1"]), 10, {})), evaluation=ev), rounds=1)
    assert records[0]["fed_accuracy"] == 0.5 and records[0]["fed_loss"] == 1.0
    assert set(records[0]["fed_accuracy_parties"]) == {"0", "1"}


def test_evaluation_allows_an_undefined_metric():
    from pollen.server.replies import check_evaluation

    ev = check_evaluation(EvalResult(0.3, None, 5, {"auc": float("nan")}))
    assert math.isnan(ev.metrics["auc"]) and ev.num_examples == 5


# ---------------------------------------------------------------- after a resume
def test_a_resumed_coordinator_holds_against_the_same_party(tmp_path):
    lies = Update({**_delta(9.0), "w": np.full(1, 9.0, np.float32)}, 10, {"num_examples": 1.0, "round": 333.0},
                  {"fp16": {}})
    ck = Checkpointer(tmp_path)
    bus = EventBus()
    bus.subscribe(HistorySink(tmp_path / "history.jsonl"))
    _run(Liar(_fit(lies)), rounds=2, checkpointer=ck, events=bus)
    point = ck.resume_point()
    bus = EventBus()
    bus.subscribe(HistorySink(tmp_path / "history.jsonl", point.start - 1, point.record))
    final, records = _run(Liar(_fit(lies)), rounds=4, checkpointer=ck, events=bus, start=point.start,
                          state=point.state, opt=point.optimizer_state)
    _honest_only(final, rounds=4)
    history = read_history(tmp_path)
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert all(r["parties_failed"] == ["2"] and r["parties"] == ["0", "1"] for r in history)
    (tmp_path / "summary.json").write_text(json.dumps({}))
    assert "| 4 |" in write_report(tmp_path).read_text()  # the report reads the history it left
