"""Structured logs for ``pollen server``/``pollen client --log-json``: one JSON object per line
(time, level, logger, message, and the event's fields), for log shippers (Loki, ELK, CloudWatch)."""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("event", "party", "reason", "round", "peer", "seconds")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; ``extra={"event": …, "party": …}`` fields are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        return json.dumps(out, default=str)


def use_json_logs(level: int = logging.INFO) -> None:
    """Send Pollen's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pollen")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
