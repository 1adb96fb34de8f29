"""gRPC's own log lines, read and explained.

gRPC's C core writes its log lines straight to file descriptor 2, past Python's ``sys.stderr`` and
``logging``. A coordinator that refuses a party's TLS handshake prints, per attempt (gRPC 1.85.1)::

    I1203 09:14:44.108173   18327 ssl_transport_security.cc:2563] Handshake failed with error
    SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context

which names neither the cause nor the fix. :class:`StderrCapture` puts a pipe on fd 2 and reads it
in a thread: lines that are not gRPC's pass through unchanged (Python's own ``sys.stderr`` and the
logging handlers that wrote to it are pointed at the real stderr, so the progress display still
sees a terminal); gRPC's lines go to a handler that may consume them. :class:`HandshakeReporter`
turns failed handshakes into one explanation through a logger, at most one every 10 s, with the
count of those it held back — a flood of bad connections does not flood the log.

What gRPC 1.85.1 prints, by case (observed on Linux, default ``GRPC_VERBOSITY``):

- coordinator with TLS, party without (``--insecure``): the line above (``WRONG_VERSION_NUMBER``);
  a plain-HTTP client (curl, a browser): ``HTTP_REQUEST``; a party whose certificate another CA
  made: ``BAD_SIGNATURE: certificate signature failure``; a client that connects by a name the
  server certificate was not made for: ``E… No match found for server name: NAME``.
- coordinator with ``--insecure``, party with TLS: nothing by default; with the ``http`` tracer on
  (``GRPC_TRACE=http``, read once when ``grpc`` is imported) a line ``… Failed parsing HTTP/2
  (Connect string mismatch: expected 'P' (80) got '' (22) at byte 0)`` — 22 (0x16) is the first
  byte of a TLS handshake record. :func:`enable_http_trace` turns the tracer on for an insecure
  coordinator; it also writes ~20 lines per call, which the handler drops.

The capture is optional and best effort: where fd 2 cannot be replaced it does nothing, and
``stop`` puts everything back.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

REPORT_EVERY = 10.0  # seconds: at most one handshake explanation this often
PIPE_BYTES = 1 << 20  # a deep pipe: a writer blocks only if the reader falls 1 MiB behind
_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([^\s\]]+:\d+)\] ?(.*)$")
_MAYBE_LINE = re.compile(rb"^[IWEF]\d{0,4}( |$)")  # the start of a gRPC line still being written
_OPENSSL = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)(?::\s*([^:]*))?")
_MISMATCH = re.compile(r"Connect string mismatch: expected 'P' \(80\) got '(.*?)' \((\d+)\)")

_EXPLANATIONS = {
    "no_tls": "a client connected without TLS (a party started with --insecure?) and was refused: start it without "
              "--insecure and with --certs-dir holding ca.pem and its party-<id>.pem/.key from this federation's CA",
    "http": "a client spoke plain HTTP to the gRPC port (a browser, curl, a health check?) and was refused: parties "
            "connect with 'pollen client --server HOST:PORT'; metrics are on --metrics-port",
    "bad_cert": "a client's TLS handshake failed: its certificate was probably made by another CA; give each party "
                "ca.pem and its own party-<id>.pem/.key from the folder 'pollen certs' wrote for this coordinator",
    "server_name": "a client asked for a server name this coordinator's certificate was not made for: list it in "
                   "'pollen certs --hosts', or start the party with --server-name NAME (a name in the certificate)",
    "tls_at_insecure": "a client connected with TLS, but this coordinator runs with --insecure: start the party with "
                       "--insecure too (local experiments only), or restart the coordinator without --insecure and "
                       "with --certs-dir",
    "not_grpc": "a client that does not speak gRPC connected and was refused: parties connect with "
                "'pollen client --server HOST:PORT'; metrics are on --metrics-port",
}
_SHORT = {"no_tls": "without TLS", "http": "plain HTTP", "bad_cert": "TLS handshake failed",
          "server_name": "unknown server name", "tls_at_insecure": "TLS to this --insecure port", "not_grpc": "not gRPC"}


@dataclass(frozen=True)
class GrpcLine:
    """One line gRPC's C core logged: level (``I``, ``W``, ``E``, ``F``), source (``file.cc:123``), message."""

    level: str
    source: str
    message: str


def parse_line(text: str) -> GrpcLine | None:
    """The parts of a gRPC log line, or None when ``text`` is not one."""
    m = _LINE.match(text)
    return GrpcLine(m.group(1), m.group(2), m.group(3)) if m else None


def classify(message: str) -> tuple[str, str] | None:
    """``(kind, gRPC's reason)`` when ``message`` reports a connection refused at the handshake, else None.

    Kinds: ``no_tls``, ``http``, ``bad_cert``, ``server_name``, ``tls_at_insecure``, ``not_grpc``.
    """
    if "Handshake failed" in message:
        m = _OPENSSL.search(message)
        if m is None:
            return "bad_cert", message.split("Handshake failed", 1)[1].strip(" :")[:120]
        code, text = m.group(1), (m.group(2) or "").strip()
        kind = {"WRONG_VERSION_NUMBER": "no_tls", "HTTP_REQUEST": "http"}.get(code, "bad_cert")
        # those two come with "Invalid certificate verification context", which misleads
        return kind, f"{code}: {text}" if kind == "bad_cert" and text else code
    if "No match found for server name" in message:
        return "server_name", message.strip()
    m = _MISMATCH.search(message)
    if m:
        first = int(m.group(2))
        return ("tls_at_insecure" if first == 0x16 else "not_grpc"), f"first byte {first:#04x}, not an HTTP/2 preface"
    return None


def explanation(kind: str, reason: str) -> str:
    """The user's reading of a refused connection of ``kind``, with gRPC's own reason."""
    return f"{_EXPLANATIONS[kind]} (gRPC: {reason})"


class HandshakeReporter:
    """Logs refused connections as one explanation at most every ``every`` seconds; those held back
    are counted, by kind, in the next explanation (or by ``flush``).

    Args:
        log: where the explanations go (``warning``).
        every: seconds between two explanations.
        clock: monotonic seconds (a test passes its own).
    """

    def __init__(self, log: logging.Logger, every: float = REPORT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log, self.every, self.clock = log, every, clock
        self._last: float | None = None
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, kind: str, reason: str) -> None:
        """One refused connection."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.every:
                self._held[kind] += 1
                return
            held, self._held, self._last = self._held, Counter(), now
        more = f" [{_count(held)} since the last such message]" if held else ""
        self.log.warning("%s%s", explanation(kind, reason), more, extra={"event": "handshake_failed", "reason": kind})

    def flush(self) -> None:
        """Log the count still held back (when the capture stops)."""
        with self._lock:
            held, self._held = self._held, Counter()
        if held:
            self.log.warning("%s since the last explanation", _count(held),
                             extra={"event": "handshake_failed", "reason": "held"})


def _count(held: Counter[str]) -> str:
    """``3 more refused connections (2 without TLS, 1 TLS handshake failed)``."""
    kinds = ", ".join(f"{n} {_SHORT.get(k, k)}" for k, n in held.most_common())
    return f"{sum(held.values())} more refused connections ({kinds})"


def server_handler(report: Callable[[str, str], None], drop_info: bool) -> Callable[[GrpcLine], bool]:
    """A coordinator's handler: refused connections go to ``report``; with ``drop_info`` (the http
    tracer was turned on by us, not by the user) gRPC's other INFO lines are dropped too."""

    def handle(line: GrpcLine) -> bool:
        found = classify(line.message)
        if found is not None:
            report(*found)
            return True
        return drop_info and line.level == "I"

    return handle


def party_handler(line: GrpcLine) -> bool:
    """A party's handler: its own failed handshakes are explained by its retry message, so gRPC's
    raw line about them is dropped; everything else passes."""
    return classify(line.message) is not None


def enable_http_trace() -> bool:
    """Turn gRPC's ``http`` tracer on, which is how an insecure coordinator learns that a party spoke
    TLS to it. Only possible before ``grpc`` is imported, and only when the user set no
    ``GRPC_TRACE`` of their own.

    Returns:
        True when this call turned it on (its lines are then ours to drop).
    """
    if "grpc" in sys.modules or os.environ.get("GRPC_TRACE"):
        return False
    os.environ["GRPC_TRACE"] = "http"
    try:
        import grpc  # noqa: F401  (gRPC reads GRPC_TRACE once, here)
    finally:
        del os.environ["GRPC_TRACE"]  # not inherited by child processes
    return True


_active = threading.Lock()  # one capture per process


class StderrCapture:
    """fd 2 through a pipe read by a thread; gRPC's lines go to ``handler`` (True: consumed), the rest
    to the real stderr unchanged. Use as a context manager, or ``start``/``stop``.

    Args:
        handler: called with each gRPC line; returns True to drop it.
    """

    def __init__(self, handler: Callable[[GrpcLine], bool]) -> None:
        self.handler = handler
        self.active = False
        self._saved = self._out = self._read_fd = -1
        self._thread: threading.Thread | None = None
        self._old_stderr = self._new_stderr = None

    def __enter__(self) -> StderrCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> bool:
        """Capture fd 2; False (and nothing changed) where it cannot be replaced."""
        if not _active.acquire(blocking=False):
            return False
        opened: list[int] = []
        try:
            _flush(sys.stderr)
            self._saved = os.dup(2)
            opened.append(self._saved)
            self._out = os.dup(self._saved)
            opened.append(self._out)
            self._read_fd, write_fd = os.pipe()
            opened += [self._read_fd, write_fd]
            _deepen(write_fd)
            os.dup2(write_fd, 2)
            os.close(write_fd)
        except OSError:
            for fd in opened:
                _close(fd)
            _active.release()
            return False
        self._thread = threading.Thread(target=self._read, name="pollen-grpc-stderr", daemon=True)
        self._thread.start()
        self._redirect_python()
        self.active = True
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Put fd 2, ``sys.stderr`` and the logging handlers back; let the reader finish what is in the pipe."""
        if not self.active:
            return
        self.active = False
        _flush(sys.stderr)
        try:
            os.dup2(self._saved, 2)  # closes the pipe's last write end: the reader sees its end
        except OSError:
            pass
        if self._thread is not None:
            # what is still in the pipe is handled first (a forked child still holding the pipe: the
            # thread ends with it)
            self._thread.join(timeout)
        self._restore_python()
        _close(self._saved)
        _active.release()

    # ---------------------------------------------------------------- Python's side
    def _redirect_python(self) -> None:
        """Point ``sys.stderr`` (and the handlers that hold it) at the real stderr, when it writes to fd 2."""
        old = sys.stderr
        if old is None or _fileno(old) != 2:
            return
        try:
            raw = io.FileIO(os.dup(self._saved), "w", closefd=True)
        except OSError:
            return
        self._old_stderr = old
        self._new_stderr = io.TextIOWrapper(io.BufferedWriter(raw), encoding=old.encoding, errors=old.errors,
                                            line_buffering=True, write_through=True)
        sys.stderr = self._new_stderr
        _repoint_handlers(old, self._new_stderr)

    def _restore_python(self) -> None:
        if self._new_stderr is None:
            return
        if sys.stderr is self._new_stderr:
            sys.stderr = self._old_stderr
        _repoint_handlers(self._new_stderr, self._old_stderr)
        _flush(self._new_stderr)
        self._new_stderr.close()
        self._old_stderr = self._new_stderr = None

    # ---------------------------------------------------------------- the reader thread
    def _read(self) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(self._read_fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not self._consumed(line))
                if pending and not _MAYBE_LINE.match(pending[:8]):  # a partial line (a progress bar): now
                    out, pending = out + pending, b""
                _write_all(self._out, out)
            if pending and not self._consumed(pending):
                _write_all(self._out, pending)
        finally:
            _close(self._read_fd)
            _close(self._out)

    def _consumed(self, raw: bytes) -> bool:
        try:
            line = parse_line(raw.decode("utf-8", "replace").rstrip("\r"))
            return line is not None and bool(self.handler(line))
        except Exception:  # noqa: BLE001 — a failing handler must not lose the line or stop the reader
            return False


def _repoint_handlers(old: object, new: object) -> None:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is old:
                h.setStream(new)


def _fileno(stream: object) -> int:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return -1


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        pass


def _deepen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # Linux only
    except (ImportError, AttributeError, OSError):
        pass  # the default depth (64 KiB on Linux) works too


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except OSError:
            return  # the real stderr is gone: nothing to tell


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
