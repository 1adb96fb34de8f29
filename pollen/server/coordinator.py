"""The coordinator's round loop — the one place where a round is defined.

Simulation (in-process, process pool), gRPC and any other transport drive this same loop::

    for each round r:
        parties   = strategy.sampler.select(r, transport.available())
        config    = strategy.configure(r)                  # what each party is told
        sent      = pipeline.encode_model(global, config)   # downlink compression (or as is)
        replies   = collect(transport, tasks, deadline)     # stragglers past it are dropped
        updates   = [pipeline.decode(u, global) for u in replies]   # decompress
        updates   = pipeline.combine(updates, …)           # HE / secure sum: one recovered sum
        delta     = strategy.aggregator(updates)
        delta     = pipeline.after_aggregate(delta)         # central DP noise
        global    = strategy.server_optimizer.step(global, delta)
        evaluate, checkpoint, emit RoundCompleted

An asynchronous strategy (FedBuff, FedAsync: ``strategy.asynchronous`` set) runs the same round
with ``_async_collect`` in place of sampling + ``collect``: up to C tasks stay in flight across
rounds, and a round is one server step taken after K arrivals, each tagged with its staleness.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pollen.errors import PollenError, RunError
from pollen.serialization import reply_nbytes, task_to_bytes
from pollen.server.checkpoint import Checkpointer
from pollen.server.replies import (Expected, check_combined, check_decoded, check_evaluation, check_update, clean_text,
                                   expected, party_metrics, round_fields)
from pollen.server.shutdown import deferred_signals
from pollen.server.spill import restore, spill_round
from pollen.strategy.base import Strategy
from pollen.strategy.fedbuff import STALENESS_KEY
from pollen.telemetry.events import EventBus, PartyReplied, RoundCompleted, RoundStarted, RunCompleted, RunStarted
from pollen.transforms.base import Pipeline, empty_pipeline
from pollen.transport.base import Transport
from pollen.types import EvalResult, ModelState, Reply, RoundConfig, Task, Update, state_nbytes

Evaluator = Callable[[Mapping[str, np.ndarray]], EvalResult]


@dataclass
class RoundOutcome:
    """What one round produced (the coordinator's own view; history gets ``record``)."""

    state: ModelState
    record: dict[str, Any]


def collect(transport: Transport, tasks: Sequence[Task], timeout: float | None,
            on_reply: Callable[[Reply], Reply] | None = None) -> tuple[list[Reply], list[str]]:
    """Submit ``tasks`` and gather their replies until all came or ``timeout`` seconds passed.

    Args:
        on_reply: called with each reply of the round as it arrives; what it returns is kept (a
            streaming sum folds the update and keeps the reply without it).

    Returns:
        (replies of this round, ids of parties that did not reply in time).
    """
    for task in tasks:
        transport.submit(task)
    waiting = {t.party_id for t in tasks}
    rnd = tasks[0].round if tasks else 0
    kind = tasks[0].kind if tasks else "fit"
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Reply] = []
    while waiting:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        reply = transport.poll(left)
        if reply is None:
            if deadline is None and transport.pending() == 0:
                break  # nothing in flight will ever answer
            continue
        if reply.round != rnd or reply.kind != kind or reply.party_id not in waiting:
            continue  # a late reply from an earlier round, or a duplicate
        waiting.discard(reply.party_id)
        replies.append(reply if on_reply is None else on_reply(reply))
    if waiting:
        transport.forget(rnd)
    return replies, sorted(waiting)


def task_sizes(tasks: Sequence[Task]) -> dict[str, int]:
    """Exact bytes of each task's serialised message (``pollen.serialization``).

    Tasks that share their state and config differ only in the party id, so one serialisation per
    length of the (JSON-quoted) party id gives every size.
    """
    seen: dict[tuple[int, int, int], int] = {}
    out: dict[str, int] = {}
    for task in tasks:
        key = (id(task.state), id(task.config), len(json.dumps(task.party_id)))
        if key not in seen:
            seen[key] = len(task_to_bytes(task))
        out[task.party_id] = seen[key]
    return out


def weighted_eval(results: Sequence[EvalResult]) -> EvalResult | None:
    """Example-weighted loss and metrics over several evaluations. A value a party could not compute
    (NaN: an AUC on one class) is left out of that metric's mean, with its weight."""
    n = sum(r.num_examples for r in results)
    if n == 0:
        return None

    def mean(values: list[tuple[float, int]]) -> float:
        good = [(v, w) for v, w in values if v is not None and math.isfinite(v)]
        total = sum(w for _, w in good)
        return sum(v * w for v, w in good) / total if total else float("nan")

    names = sorted({k for r in results for k in r.metrics})
    metrics = {k: mean([(r.metrics.get(k), r.num_examples) for r in results]) for k in names}
    return EvalResult(loss=mean([(r.loss, r.num_examples) for r in results]), accuracy=metrics.get("accuracy"),
                      num_examples=n, metrics=metrics)


def mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of the parties' metrics (``pollen.server.replies.party_metrics``)."""
    return party_metrics(updates)


@dataclass
class Coordinator:
    """Runs rounds of federated training over a transport.

    Attributes:
        strategy: sampler + client config + aggregator + server optimizer + name filter.
        transport: how parties are reached.
        rounds: the last round to run.
        pipeline: the server side of the update pipeline (decoders, central noise).
        evaluate: server-side evaluation of the global model (None to skip).
        eval_every: evaluate on the server every this many rounds (and after the last).
        fed_eval: run federated evaluation on the parties' held-out splits.
        fed_eval_every: federated evaluation every this many rounds (0: after the last round only).
        fed_eval_parties: federated evaluation asks at most this many parties (a seeded sample).
        stream_aggregate: ``auto``/``on``/``off``: fold updates as they arrive (``streaming.py``).
        min_fit_parties: fewest successful replies for a round to be aggregated.
        round_timeout: seconds to wait for replies (None waits for all).
        events: where the loop's events go.
        checkpointer: saves the state after every round (None disables).
        primary_metric: the app's headline metric (federated evaluation records it per party).
        max_empty_rounds: stop the run (``RunError``) after this many rounds in a row aggregated
            nothing (0: never).
        control: pause / resume / stop / reconfigure / remove-party commands, applied between
            rounds (``pollen.server.control``).
    """

    strategy: Strategy
    transport: Transport
    rounds: int
    pipeline: Pipeline = field(default_factory=empty_pipeline)
    evaluate: Evaluator | None = None
    eval_every: int = 1
    fed_eval: bool = False
    fed_eval_every: int = 0
    fed_eval_parties: int | None = None
    stream_aggregate: str = "auto"
    min_fit_parties: int = 1
    round_timeout: float | None = None
    events: EventBus = field(default_factory=EventBus)
    checkpointer: Checkpointer | None = None
    primary_metric: str = "accuracy"
    max_empty_rounds: int = 0
    control: Any = None  # pollen.server.control.Control: commands applied between rounds (None: none)
    _in_flight: dict[str, int] = field(default_factory=dict, init=False, repr=False)  # async: party -> version
    _dispatched: int = field(default=0, init=False, repr=False)

    def run(
        self, state: ModelState, start_round: int = 1, optimizer_state: dict[str, np.ndarray] | None = None
    ) -> ModelState:
        """Run rounds ``start_round … rounds`` from ``state``; return the final global model."""
        opt = self.strategy.server_optimizer
        opt_state = optimizer_state if optimizer_state is not None else opt.init(state)
        self.events.emit(RunStarted(self.rounds, start_round, len(self.transport.available())))
        started = time.perf_counter()
        last: dict[str, Any] = {}
        empty: list[dict[str, Any]] = []  # the rounds in a row that aggregated nothing
        state = dict(state)  # the loop's own mapping: a big streamed round swaps its arrays for a file (spill.py)
        for rnd in range(start_round, self.rounds + 1):
            if self.control is not None and not self.control.between_rounds(self, rnd):
                break  # stopped by a control command, after the last round's checkpoint
            outcome, opt_state = self.run_round(rnd, state, opt_state, own=True)
            state = outcome.state
            last = outcome.record
            with deferred_signals():  # a SIGTERM meanwhile stops the run once both are written
                if self.checkpointer is not None:
                    self.checkpointer.save(rnd, state, opt_state, outcome.record,
                                           {"pipeline": self.pipeline.state_dict()})
                # After the checkpoint: history never runs ahead of what `--resume` can continue from.
                self.events.emit(RoundCompleted(rnd, outcome.record))
            empty = [] if outcome.record.get("aggregated", True) else [*empty, outcome.record]
            if self.max_empty_rounds and len(empty) >= self.max_empty_rounds:
                raise RunError(no_progress(empty))
        self.events.emit(RunCompleted({**last, "wall_seconds": time.perf_counter() - started}))
        return state

    def run_round(
        self, rnd: int, state: ModelState, opt_state: dict[str, np.ndarray], own: bool = False
    ) -> tuple[RoundOutcome, dict[str, np.ndarray]]:
        """One round: sample, instruct, collect, aggregate, step, evaluate.

        Args:
            own: ``state`` is the caller's to give up: a round that streams a big model chunk by chunk
                keeps its global on disk while the updates are folded (``pollen.server.spill``),
                swapping ``state``'s arrays for placeholders until the new model is made.
        """
        t0 = time.perf_counter()
        config = self.pipeline.configure(self.strategy.configure(rnd, list(state)))
        # the model (+ SCAFFOLD's c), less the frozen tensors every party builds itself
        payload = self.strategy.payload(self.strategy.server_optimizer.broadcast(state, opt_state))
        sent = self.pipeline.encode_model(payload, config)  # downlink compression (identity by default)
        asked = expected(payload, config, self.pipeline)  # what a reply may contain
        staleness: list[int] | None = None
        info: dict[str, Any] = {}
        stream = None  # a running sum, or None: hold the round's updates
        spilled = None  # the round's global on disk (spill.py), or None
        if self.strategy.asynchronous is None:
            chosen = self.strategy.sampler.select(rnd, self.transport.available())
            stream = self._stream(state, chosen)
            self.events.emit(RoundStarted(rnd, tuple(chosen)))
            chunked = stream is not None and stream.in_place and not any(s.stage == "compress" for s in self.pipeline.steps)
            chunked = chunked and self.transport.fold_into(stream, rnd)  # e.g. gRPC folds chunk by chunk
            if own and chunked:  # the global read from a file while the sum is made (not a second model in memory)
                spilled = spill_round(state, sent, self.strategy.server_optimizer, self.transport,
                                      self.checkpointer.dir.parent if self.checkpointer is not None else None)
                if spilled is not None:
                    payload = sent = {k: state[k] for k in sent}
            # asked in party order: the order the updates are summed in, so an inline round folds
            # each update as it comes (``OrderedFold``) and holds one at a time
            tasks = [Task(pid, "fit", rnd, sent, config) for pid in sorted(chosen, key=_id_key)]
            try:
                checked = lambda u, ref: self._decode(u, ref, asked)  # noqa: E731
                replies, late = collect(self.transport, tasks, self.round_timeout,
                                        None if stream is None else lambda r: fold(stream, r, checked, state))
            finally:
                if chunked:
                    self.transport.fold_into(None, rnd)
                if stream is not None:
                    stream.close()  # an upload still being folded now spoils the sum (it says whose)
            # Aggregate in party order, not arrival order: float sums then do not depend on timing.
            replies.sort(key=lambda r: _id_key(r.party_id))
        else:  # FedBuff / FedAsync: K arrivals from the tasks in flight
            tasks, replies, staleness, info = self._async_collect(rnd, sent, config)
            late = []
        down = self._bytes_down(tasks, replies, late, rnd, staleness is not None)
        up = 0
        ok: list[Reply] = []
        updates: list[Update] = []
        failed: list[str] = list(late)
        reasons: dict[str, str] = {pid: "no reply before the round's deadline" for pid in late}
        for i, reply in enumerate(replies):
            update, failure, sent = None, None if reply.failure is None else clean_text(reply.failure), 0
            if reply.ok and reply.update is not None and stream is not None:
                sent = reply.bytes_up  # folded already (streaming.fold measured it)
                update = reply.update
            elif reply.ok and reply.update is not None:
                sent = reply.bytes_up or reply_nbytes(reply)  # transports that measure set bytes_up
                update, failure = self._decode(reply.update, state, asked)
            elif self.transport.measures_bytes:
                sent = reply.bytes_up  # what crossed the wire, a refused or failed reply's too
            up += sent
            if update is not None and staleness is not None:  # the async aggregator weights by it
                update = update.with_(metrics={**update.metrics, STALENESS_KEY: float(staleness[i])})
            reported = dict(update.metrics) if update is not None else {}  # checked, never the raw reply's
            self.events.emit(PartyReplied(rnd, reply.party_id, "fit", reply.seconds, failure, reported, sent))
            if update is not None:
                ok.append(reply)
                updates.append(update)
            else:
                failed.append(reply.party_id)
                reasons[reply.party_id] = failure or "no update"
        record: dict[str, Any] = {"round": rnd, "parties": [r.party_id for r in ok], "parties_failed": sorted(failed), **info}
        if reasons:
            record["failures"] = {pid: reasons[pid] for pid in sorted(reasons, key=_id_key)}
        raw_up = stream.raw_bytes if stream is not None else sum(state_nbytes(u.delta) for u in updates)
        record.update(compression_up=raw_up / up if up else None,
                      compression_down=state_nbytes(payload) * len(tasks) / down if down else None)
        combined, why = None, None
        if stream is not None and stream.spoiled:
            why = f"streamed aggregate spoiled: {stream.spoiled}"
        elif len(ok) >= max(self.min_fit_parties, 1):
            combined, why = (updates, None) if stream is not None else self._combine(updates, ok, rnd, asked)
        if combined is not None:
            updates = combined
            delta = stream.finish() if stream is not None else self.strategy.aggregator.aggregate(updates)
            delta = self.pipeline.after_aggregate(delta, rnd, len(updates))
            if stream is not None and stream.in_place:  # the new model written into the running sum's buffers
                from pollen.server.streaming import step as stream_step

                state, opt_state = stream_step(self.strategy.server_optimizer, state, delta, opt_state)
            else:
                state, opt_state = self.strategy.server_optimizer.step(state, delta, opt_state)
            record.update(aggregated=True, num_examples=sum(u.num_examples for u in updates), **round_fields(updates, asked))
            report = self.pipeline.report(rnd)
            up += int(report.pop("bytes_up", 0))  # messages a step exchanged in combine (secure aggregation)
            down += int(report.pop("bytes_down", 0))
            record.update(report)
        else:
            record.update(aggregated=False, reason=why or f"{len(ok)} replies < min_fit_parties={self.min_fit_parties}")
        if spilled is not None:  # what the step did not replace (a round that aggregated nothing: all) comes back
            stream = delta = spilled = None  # an unused running sum goes first; the file goes with its last reader
            restore(state)
        if self.transport.clock() is not None and "virtual_seconds" not in record:
            record.update(virtual_seconds=self.transport.clock())
        record.update(self._evaluate(rnd, state, getattr(self.strategy.server_optimizer, "iterate", None), opt_state))
        record.update(seconds=time.perf_counter() - t0, bytes_up=up, bytes_down=down)
        return RoundOutcome(state, record), opt_state

    def _bytes_down(self, tasks: list[Task], replies: list[Reply], late: list[str], rnd: int, asynchronous: bool) -> int:
        """Bytes of this round's tasks that were sent: measured by the transport where it can (a task
        never sent counts 0), else each task's serialised size."""
        if not self.transport.measures_bytes:
            sizes = task_sizes(tasks)
            if asynchronous:
                return sum(sizes.values())  # the tasks sent this round (replies may answer older ones)
            return sum(r.bytes_down or sizes[r.party_id] for r in replies) + sum(sizes[p] for p in late)
        if asynchronous:  # replies may answer tasks of earlier rounds: count what their streams moved
            return sum(r.bytes_down for r in replies)
        return sum(r.bytes_down for r in replies) + sum(self.transport.sent_bytes(p, rnd, "fit") or 0 for p in late)

    def _async_collect(
        self, rnd: int, sent: ModelState, config: RoundConfig
    ) -> tuple[list[Task], list[Reply], list[int], dict[str, Any]]:
        """FedBuff (FedAsync when K = 1): keep C tasks in flight, return K arrivals no staler than
        the bound with their staleness ``rnd − version started from``.

        Returns:
            (tasks sent this round, replies, staleness of each reply, extra history fields).
        """
        spec = self.strategy.asynchronous
        last = rnd == self.rounds
        tasks = self._top_up(rnd, sent, config)
        self.events.emit(RoundStarted(rnd, tuple(t.party_id for t in tasks)))
        deadline = None if self.round_timeout is None else time.monotonic() + self.round_timeout
        replies: list[Reply] = []
        staleness: list[int] = []
        stale: list[str] = []
        while sum(r.ok for r in replies) < spec.buffer_size and self._in_flight:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            reply = self.transport.poll(left)
            if reply is None:
                if deadline is None and self.transport.pending() == 0:
                    self._in_flight.clear()  # nothing in flight will ever answer
                continue
            if reply.kind != "fit" or self._in_flight.get(reply.party_id) != reply.round:
                continue  # a duplicate, or a task abandoned earlier
            del self._in_flight[reply.party_id]
            tau = rnd - reply.round
            if reply.ok and tau > spec.max_staleness:
                stale.append(reply.party_id)
                self.events.emit(PartyReplied(rnd, reply.party_id, "fit", reply.seconds, f"stale by {tau} steps"))
            else:
                replies.append(reply)
                staleness.append(tau)
            if not last:
                tasks += self._top_up(rnd, sent, config)
        info: dict[str, Any] = {"parties_stale": sorted(stale), "staleness_max": max(staleness, default=0),
                                "staleness_mean": float(np.mean(staleness)) if staleness else 0.0}
        if self.transport.clock() is not None:
            info["virtual_seconds"] = self.transport.clock()  # the K-th arrival, before abandoning the rest
        if last:  # the run ends: abandon what is still in flight
            self.transport.forget(rnd)
            self._in_flight.clear()
        return tasks, replies, staleness, info

    def _top_up(self, rnd: int, sent: ModelState, config: RoundConfig) -> list[Task]:
        """Submit fit tasks of version ``rnd`` to random idle parties until C are in flight."""
        spec = self.strategy.asynchronous
        available = self.transport.available()
        idle = [p for p in available if p not in self._in_flight]
        want = spec.in_flight(self.strategy.sampler.sample_size(len(available)))
        need = min(want - len(self._in_flight), len(idle))
        if need <= 0:
            return []
        rng = np.random.default_rng([self.strategy.sampler.seed, rnd, self._dispatched])
        tasks = [Task(idle[i], "fit", rnd, sent, config) for i in rng.choice(len(idle), need, replace=False)]
        for task in tasks:
            self.transport.submit(task)
            self._in_flight[task.party_id] = rnd
            self._dispatched += 1
        return tasks

    def _stream(self, state: ModelState, chosen: Sequence[str]) -> Any:
        """The round's running sum (``streaming.py``): in arrival order when it streams
        (``--stream-aggregate on``, or ``auto`` for big rounds), else in party order where the
        aggregator is linear and nothing combines the updates itself; None: hold the updates."""
        from pollen.server.streaming import OrderedFold, StreamingMean, can_stream, streaming_wanted

        why_not = can_stream(self.strategy.aggregator, self.pipeline, self.strategy.asynchronous)
        if streaming_wanted(self.stream_aggregate, state, why_not, len(chosen)):
            return StreamingMean(state, getattr(self.strategy.aggregator, "weighted", True))
        if self.stream_aggregate == "auto" and why_not is None:
            return OrderedFold(self.strategy.aggregator, sorted(chosen, key=_id_key))
        return None

    def _decode(self, update: Update, reference: ModelState, asked: Expected) -> tuple[Update | None, str | None]:
        """One party's update checked against what it was asked for (``pollen.server.replies``) and
        through the pipeline's decoders; a message that does not fit costs that party its round
        (``(None, reason)``), not the server its life."""
        try:
            update = check_update(update, asked)
            return check_decoded(self.pipeline.decode(update, reference), asked), None
        except PollenError as exc:
            return None, clean_text(f"refused: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a decoder tripping on crafted arrays costs that party only
            return None, clean_text(f"refused: could not decode ({type(exc).__name__}: {exc})")

    def _combine(self, updates: list[Update], ok: list[Reply], rnd: int,
                 asked: Expected) -> tuple[list[Update] | None, str | None]:
        """The pipeline's ``combine`` (secure sum, decryption); a protocol that cannot finish costs the
        round its aggregation (``(None, reason)``), not the run."""
        try:
            combined = self.pipeline.combine(updates, [r.party_id for r in ok], rnd, self.transport)
            check_combined(combined, asked)
            return combined, None
        except PollenError as exc:
            return None, clean_text(f"{type(exc).__name__}: {exc}", 500)

    def _evaluate(self, rnd: int, state: ModelState, iterate: Callable[..., ModelState] | None = None,
                  opt_state: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Server-side and federated evaluation of ``state``; with an iterate average (``--ema``),
        the iterate the parties train from is evaluated too (``iterate_loss``, ``iterate_<metric>``)."""
        out: dict[str, Any] = {}
        last = rnd == self.rounds
        if self.evaluate is not None and (rnd % max(self.eval_every, 1) == 0 or last):
            res = self.evaluate(state)
            out.update(loss=res.loss, **res.metrics)
            if iterate is not None and opt_state is not None:
                res = self.evaluate(iterate(state, opt_state))
                out.update(iterate_loss=res.loss, **{f"iterate_{k}": v for k, v in res.metrics.items()})
        periodic = self.fed_eval_every and rnd % self.fed_eval_every == 0 and self.strategy.asynchronous is None
        if self.fed_eval and (last or periodic):  # async: only at the end (before, tasks are in flight)
            cfg = self.strategy.configure(rnd, list(state)).with_(extra={"personalized": True})
            asked = eval_sample(self.transport.available(), self.fed_eval_parties, self.strategy.sampler.seed, rnd)
            sent = self.strategy.payload(state)  # less the frozen tensors every party builds itself
            tasks = [Task(pid, "evaluate", rnd, sent, cfg) for pid in asked]
            replies, _ = collect(self.transport, tasks, self.round_timeout)
            good = _checked_evaluations(replies)
            res = weighted_eval([r.evaluation for r in good])
            if res is not None:
                out.update(fed_loss=res.loss, **{f"fed_{k}": v for k, v in res.metrics.items()})
                key = self.primary_metric
                values = {r.party_id: (r.evaluation.loss if key == "loss" else r.evaluation.metrics.get(key)) for r in good}
                out[f"fed_{key}_parties"] = {p: (v if v is not None and math.isfinite(v) else None)
                                             for p, v in values.items()}
        for k, v in list(out.items()):
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


def no_progress(records: Sequence[Mapping[str, Any]]) -> str:
    """Why a run stops after rounds in a row that aggregated nothing: the rounds, the last reason and
    the parties' failures, and the fix."""
    first, last = records[0], records[-1]
    failures = last.get("failures") or {}
    said = "; ".join(f"party {p}: {why[:160]}" for p, why in list(failures.items())[:3])
    more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
    return (f"stopped: rounds {first.get('round')}-{last.get('round')} aggregated nothing ({len(records)} in a row, "
            f"--max-empty-rounds {len(records)}): {last.get('reason', '?')}" + (f"; {said}{more}" if said else "")
            + "; fix what the parties report, then continue with --resume (or raise --max-empty-rounds)")


def _checked_evaluations(replies: Sequence[Reply]) -> list[Reply]:
    """The evaluate replies that carry a valid evaluation of at least one example (others are left out)."""
    good = []
    for r in replies:
        if not r.ok or r.evaluation is None:
            continue
        try:
            ev = check_evaluation(r.evaluation)
        except PollenError:
            continue
        if ev.num_examples > 0:
            good.append(Reply(r.party_id, r.kind, r.round, evaluation=ev, seconds=r.seconds))
    return good


def eval_sample(available: Sequence[str], limit: int | None, seed: int, rnd: int) -> Sequence[str]:
    """The parties federated evaluation asks: all of them, or ``limit`` drawn by (seed, round), so
    that its cost does not grow with the parties that exist."""
    if limit is None or len(available) <= limit:
        return available
    rng = np.random.default_rng([seed, rnd, 0xE7A1])
    return [available[i] for i in np.sort(rng.choice(len(available), limit, replace=False))]


def fold(stream: Any, reply: Reply, decode: Callable[[Update, ModelState], tuple[Update | None, str | None]],
         reference: ModelState) -> Reply:
    """Decode a fit reply's update and fold it into the round's running sum as it arrives; the
    reply is kept without its delta (a failed decode keeps the reply as a failure)."""
    if not reply.ok or reply.update is None:
        stream.skip(reply.party_id)
        return reply
    if reply.update.codec.get("folded"):  # the transport folded it chunk by chunk as it arrived
        return replace(reply, update=reply.update.with_(codec={}))
    up = reply.bytes_up or reply_nbytes(reply)
    update, failure = decode(reply.update, reference)
    if update is None:
        stream.skip(reply.party_id)
        return replace(reply, update=None, failure=failure, bytes_up=up)
    try:
        return replace(reply, update=stream.add(update, reply.party_id), bytes_up=up)
    except PollenError as exc:  # checked before anything is folded: the sum is untouched
        stream.skip(reply.party_id)
        return replace(reply, update=None, failure=f"aggregate: {exc}", bytes_up=up)


def _id_key(party_id: str) -> tuple[int, int | str]:
    return (0, int(party_id)) if party_id.isdigit() else (1, party_id)
