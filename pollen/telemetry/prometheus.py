"""Prometheus metrics of a run: a sink on the event bus plus a collector of transport counters,
served on ``/metrics`` by ``prometheus-client`` (the ``metrics`` extra).

Metric names (all prefixed ``pollen_``): ``rounds_completed_total``, ``current_round``,
``round_duration_seconds`` (histogram), ``round_replies`` / ``round_failures`` (last round),
``replies_total`` / ``failures_total``, ``last_accuracy``, and from the transport
``parties_connected``, ``bytes_in_total``, ``bytes_out_total``, ``rejected_messages_total{reason}``,
``parties_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pollen.errors import require
from pollen.telemetry.events import Event, PartyReplied, RoundCompleted, RoundStarted

ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
StatsFn = Callable[[], Mapping[str, Any]]


def _prom():
    return require("prometheus_client", "metrics", "Prometheus metrics (--metrics-port)")


class PrometheusSink:
    """Turns round events into Prometheus metrics in its own registry.

    Args:
        transport_stats: a function returning the transport's counters (``parties_connected``,
            ``bytes_in``, ``bytes_out``, ``rejected`` {reason: count}, ``dropped``), or None.
    """

    def __init__(self, transport_stats: StatsFn | None = None) -> None:
        prom = _prom()
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.rounds = prom.Counter("pollen_rounds_completed", "rounds completed", registry=r)
        self.current = prom.Gauge("pollen_current_round", "the round in progress (or last finished)", registry=r)
        self.duration = prom.Histogram("pollen_round_duration_seconds", "wall seconds per round", buckets=ROUND_BUCKETS, registry=r)
        self.replies = prom.Gauge("pollen_round_replies", "successful replies in the last round", registry=r)
        self.failures = prom.Gauge("pollen_round_failures", "parties that failed or timed out in the last round", registry=r)
        self.replies_total = prom.Counter("pollen_replies", "successful fit replies", registry=r)
        self.failures_total = prom.Counter("pollen_failures", "failed or timed-out fit tasks", registry=r)
        self.accuracy = prom.Gauge("pollen_last_accuracy", "test accuracy of the global model after the last evaluated round", registry=r)
        if transport_stats is not None:
            r.register(_TransportCollector(transport_stats))

    def __call__(self, event: Event) -> None:
        if isinstance(event, RoundStarted):
            self.current.set(event.round)
        elif isinstance(event, PartyReplied) and event.kind == "fit" and event.failure is None:
            self.replies_total.inc()
        elif isinstance(event, RoundCompleted):
            rec = event.record
            self.rounds.inc()
            self.duration.observe(float(rec.get("seconds", 0.0)))
            self.replies.set(len(rec.get("parties", [])))
            failed = len(rec.get("parties_failed", []))
            self.failures.set(failed)
            self.failures_total.inc(failed)
            if rec.get("accuracy") is not None:
                self.accuracy.set(rec["accuracy"])

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``host:port`` from a background thread."""
        _prom().start_http_server(port, addr=host, registry=self.registry)

    def text(self) -> str:
        """The current metrics in the Prometheus text format."""
        return _prom().generate_latest(self.registry).decode()


class _TransportCollector:
    def __init__(self, stats: StatsFn) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats()
        yield GaugeMetricFamily("pollen_parties_connected", "parties connected and alive", value=s.get("parties_connected", 0))
        yield CounterMetricFamily("pollen_bytes_in", "bytes received from parties", value=s.get("bytes_in", 0))
        yield CounterMetricFamily("pollen_bytes_out", "bytes sent to parties", value=s.get("bytes_out", 0))
        yield CounterMetricFamily("pollen_parties_dropped", "parties dropped after missing heartbeats", value=s.get("dropped", 0))
        rejected = CounterMetricFamily("pollen_rejected_messages", "messages refused by validation", labels=["reason"])
        for reason, count in sorted(s.get("rejected", {}).items()):
            rejected.add_metric([reason], count)
        yield rejected
