"""Prometheus metrics: the sink turns round events into metrics, the collector reads transport
counters, and /metrics serves them over HTTP on 127.0.0.1."""

import socket
import urllib.request

from pollen.telemetry.events import PartyReplied, RoundCompleted, RoundStarted
from pollen.telemetry.prometheus import PrometheusSink


def _stats():
    return {"parties_connected": 3, "bytes_in": 1000, "bytes_out": 2500, "rejected": {"invalid": 2, "stale": 1}, "dropped": 1}


def _feed(sink):
    sink(RoundStarted(1, ("0", "1", "2")))
    sink(PartyReplied(1, "0", "fit", 0.1))
    sink(PartyReplied(1, "1", "fit", 0.1))
    sink(PartyReplied(1, "2", "fit", 0.1, failure="party lost"))
    sink(RoundCompleted(1, {"round": 1, "parties": ["0", "1"], "parties_failed": ["2"], "seconds": 1.5, "accuracy": 0.75}))


def test_sink_and_collector_metrics():
    sink = PrometheusSink(_stats)
    _feed(sink)
    text = sink.text()
    for line in ("pollen_rounds_completed_total 1.0", "pollen_current_round 1.0", "pollen_round_replies 2.0",
                 "pollen_round_failures 1.0", "pollen_replies_total 2.0", "pollen_failures_total 1.0",
                 "pollen_last_accuracy 0.75", "pollen_round_duration_seconds_count 1.0",
                 'pollen_round_duration_seconds_bucket{le="2.0"} 1.0', "pollen_parties_connected 3.0",
                 "pollen_bytes_in_total 1000.0", "pollen_bytes_out_total 2500.0",
                 'pollen_rejected_messages_total{reason="invalid"} 2.0', "pollen_parties_dropped_total 1.0"):
        assert line in text, line


def test_metrics_endpoint_serves_over_http():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = PrometheusSink(_stats)
    sink.serve(port, "127.0.0.1")
    _feed(sink)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "pollen_rounds_completed_total 1.0" in body and "pollen_parties_connected 3.0" in body


def test_json_logs_carry_event_fields():
    import json
    import logging

    from pollen.transport.rpc.logs import JsonFormatter

    record = logging.LogRecord("pollen.transport.grpc", logging.WARNING, __file__, 1, "refused message (%s): %s",
                               ("stale", "no open task"), None)
    record.event, record.reason, record.party = "refused", "stale", "3"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["message"] == "refused message (stale): no open task"
    assert (line["event"], line["reason"], line["party"]) == ("refused", "stale", "3") and line["time"].endswith("Z")
