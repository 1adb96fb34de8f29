"""What a new user reads when a deployment goes wrong: the party's reading of what gRPC really
reports (servers on 127.0.0.1 in this process), its retries and giving up, and the coordinator's
capture of gRPC's own log lines (a pipe on fd 2) turned into one rate-limited explanation."""

import logging
import os
import socket
import tempfile
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest

from pollen.errors import ConfigError, ModelError, TransportError
from pollen.transport.cli import check_host
from pollen.transport.rpc import grpclog
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc import party as party_module
from pollen.transport.rpc.framing import PROTOCOL_VERSION
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.party import (GrpcParty, PartyOptions, check_model, explain_unreachable, make_channel,
                                        split_address)
from pollen.transport.rpc.service import FederationService, listen_address, start_server
from pollen.transport.rpc.tls import RevocationList

from grpc_helpers import run_in_thread

# What gRPC 1.85.1 logged on fd 2 (observed on Linux), one line per refused connection.
NO_TLS = ("I1203 09:14:44.108173   18327 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
          "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context")
OTHER_CA = ("I1203 09:16:58.796517   19789 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
            "error:1a000064:ECDSA routines:OPENSSL_internal:BAD_SIGNATURE: certificate signature failure")
CURL = ("I1203 09:16:46.514497   19637 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
        "error:1000009c:SSL routines:OPENSSL_internal:HTTP_REQUEST: Invalid certificate verification context")
TLS_AT_INSECURE = ("I1203 09:15:05.527856   18646 chttp2_transport.cc:1937] 0x7fa3cc0029e0 CANCEL PINGS: UNKNOWN:Failed "
                   "parsing HTTP/2 (Connect string mismatch: expected 'P' (80) got '' (22) at byte 0)")
SERVER_NAME = "E1203 09:21:26.181870   22323 ssl_transport_security.cc:3238] No match found for server name: localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(run_cfg):
    """Start a coordinator service on 127.0.0.1 (TLS with ``certs``, or insecure with None)."""
    made = []

    def start(certs, port: int = 0):
        hub = GrpcTransport(1.0)
        service = FederationService(hub, run_cfg.to_dict(), 10**8, certs is None, RevocationList(None))
        server, bound = start_server(service, "127.0.0.1", port, certs)
        made.append((hub, server))
        return hub, server, bound

    yield start
    for hub, server in made:
        hub.close()
        server.stop(0).wait()


def join_error(opts: PartyOptions) -> grpc.RpcError:
    with make_channel(opts) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.FederationStub(ch).Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=opts.party_id),
                                            timeout=30)
    return info.value


# ------------------------------------------------------------ the party's reading of gRPC's errors
def test_tls_party_at_an_insecure_coordinator_is_told_to_start_both_the_same_way(serve, certs):
    _, _, port = serve(None)
    opts = PartyOptions("0", f"localhost:{port}", None, certs_dir=str(certs))
    exc = join_error(opts)
    print("gRPC:", exc.code(), exc.details())
    assert exc.code() == grpc.StatusCode.UNAVAILABLE and "WRONG_VERSION_NUMBER" in exc.details()
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert "runs without TLS (--insecure)" in why and "WRONG_VERSION_NUMBER" in why
    assert "Invalid certificate verification context" not in why  # gRPC's misleading tail is cut


def test_insecure_party_at_a_tls_coordinator_is_told_to_drop_insecure(serve, certs):
    _, _, port = serve(certs)
    opts = PartyOptions("0", f"localhost:{port}", None, insecure=True)
    exc = join_error(opts)
    print("gRPC:", exc.code(), exc.details())
    assert exc.code() == grpc.StatusCode.UNAVAILABLE and exc.details().endswith("Socket closed")
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert "requires TLS" in why and "drop --insecure" in why
    # the same details once the party had joined: the coordinator went away
    assert "connection to the coordinator was lost" in explain_unreachable(exc.code(), exc.details(), opts, joined=True)
    # a coordinator that stops cancels the call in flight: after joining, that is the same loss
    assert "connection to the coordinator was lost" in explain_unreachable(grpc.StatusCode.CANCELLED, "CANCELLED",
                                                                          opts, joined=True)


def test_party_certificate_from_another_ca_is_named(serve, certs, foreign_certs, tmp_path):
    _, _, port = serve(certs)
    mixed = tmp_path / "mixed"  # the coordinator's ca.pem, but a party certificate another CA made
    mixed.mkdir()
    (mixed / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
    for ext in ("pem", "key"):
        (mixed / f"party-0.{ext}").write_bytes((foreign_certs / f"party-0.{ext}").read_bytes())
    opts = PartyOptions("0", f"localhost:{port}", None, certs_dir=str(mixed))
    exc = join_error(opts)
    print("gRPC:", exc.code(), exc.details())
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert "does not accept this party's certificate" in why and "party-0.pem" in why


def test_coordinator_certificate_from_another_ca_is_named(serve, certs, foreign_certs):
    _, _, port = serve(certs)
    opts = PartyOptions("0", f"localhost:{port}", None, certs_dir=str(foreign_certs))
    exc = join_error(opts)
    print("gRPC:", exc.code(), exc.details())
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert "does not trust the coordinator's certificate" in why and "BAD_SIGNATURE" in why


def test_a_coordinator_certificate_for_another_name_is_named(serve, run_cfg, tmp_path):
    from pollen.transport.rpc.tls import make_certs

    other = make_certs(tmp_path / "other", ["0"], ["coordinator.example"])  # not made for "localhost"
    _, _, port = serve(other)
    opts = PartyOptions("0", f"localhost:{port}", None, certs_dir=str(other))
    exc = join_error(opts)
    print("gRPC:", exc.code(), exc.details())
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert "not made for the name 'localhost'" in why and "--server-name" in why


def test_nothing_listening_is_named():
    opts = PartyOptions("0", f"127.0.0.1:{free_port()}", None, insecure=True)
    exc = join_error(opts)
    why = explain_unreachable(exc.code(), exc.details(), opts)
    assert why.startswith("connection refused: nothing listens there")


# ------------------------------------------------------------ retries
class _Records(logging.Handler):
    """Collects ``pollen.party`` records and sets ``seen`` when one matches ``want``."""

    def __init__(self, want=lambda r: False) -> None:
        super().__init__(logging.DEBUG)
        self.records, self.want, self.seen = [], want, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.want(record):
            self.seen.set()


@pytest.fixture
def party_log():
    logger = logging.getLogger("pollen.party")
    handlers = []

    def attach(want=lambda r: False) -> _Records:
        h = _Records(want)
        logger.addHandler(h)
        handlers.append(h)
        return h

    old = logger.level
    logger.setLevel(logging.INFO)
    yield attach
    logger.setLevel(old)
    for h in handlers:
        logger.removeHandler(h)


def test_unreachable_coordinator_each_retry_said_and_given_up_in_time(shards, party_log):
    rec = party_log()
    port = free_port()
    party = GrpcParty(PartyOptions("1", f"127.0.0.1:{port}", str(shards / "party1"), insecure=True,
                                   retry_seconds=1.0, backoff_base=0.2, backoff_cap=0.4))
    with pytest.raises(TransportError, match=rf"gave up after 1 s without reaching the coordinator at 127.0.0.1:{port}"):
        party.run()
    retries = [r for r in rec.records if r.getMessage().startswith("cannot reach the coordinator")]
    assert retries and all(r.levelno == logging.WARNING for r in retries)  # shown without -v
    assert f"cannot reach the coordinator at 127.0.0.1:{port}: connection refused" in retries[0].getMessage()
    assert [r.args[2] for r in retries] == list(range(1, len(retries) + 1))  # retry 1, 2, …
    for r in retries:
        _, _, _, wait, left = r.args
        assert 0 <= wait <= left  # never waits past the time it gives up at
        assert f"retry {r.args[2]} in {wait:.1f} s (giving up in {left:.0f} s)" in r.getMessage()


def test_a_refusal_at_the_other_localhost_address_does_not_hide_the_tls_mismatch(serve, certs, shards, party_log):
    # "localhost" is [::1] and 127.0.0.1; the coordinator listens on 127.0.0.1 only. gRPC reports the
    # last address it tried, which after the first attempts is [::1]: "Connection refused".
    rec = party_log()
    _, _, port = serve(None)
    party = GrpcParty(PartyOptions("0", f"localhost:{port}", str(shards / "party0"), certs_dir=str(certs),
                                   retry_seconds=3.0, backoff_base=0.5, backoff_cap=0.5))  # flips after ~5 tries
    with pytest.raises(TransportError, match=r"runs without TLS \(--insecure\)"):
        party.run()
    retries = [r.getMessage() for r in rec.records if r.getMessage().startswith("cannot reach")]
    told = [i for i, m in enumerate(retries) if "runs without TLS (--insecure)" in m]
    assert told and len(retries) - told[0] >= 3, retries
    assert all("runs without TLS (--insecure)" in m for m in retries[told[0]:]), retries  # once known, kept


def test_a_new_outage_after_joining_gets_the_full_retry_time_again(serve, certs, shards, party_log, monkeypatch):
    # A party started before its coordinator fails a few times, then joins; when the coordinator
    # goes away much later, the party must retry for --retry-seconds again, not give up at once.
    real = party_module.time
    later = [0.0]  # seconds added to the party's clock
    monkeypatch.setattr(party_module, "time", SimpleNamespace(monotonic=lambda: real.monotonic() + later[0]))
    port = free_port()
    waiting = party_log(lambda r: r.getMessage().startswith("cannot reach"))
    joined = party_log(lambda r: getattr(r, "event", None) == "join")  # logged after the party counts its join
    party = GrpcParty(PartyOptions("1", f"localhost:{port}", str(shards / "party1"), certs_dir=str(certs),
                                   retry_seconds=60.0, backoff_base=0.05, backoff_cap=0.2))
    errors = []
    t = run_in_thread(lambda: _run(party, errors))
    assert waiting.seen.wait(60), "the party did not report the missing coordinator"
    hub, server, _ = serve(certs, port)
    assert hub.wait_for_parties(1, timeout=60)
    # the hub sees the join before the party has counted it: without this wait the outage below could
    # look like the pre-join one continuing (an hour long) and the party would rightly give up
    assert joined.seen.wait(60), "the party did not say it joined"
    retrying = party_log(lambda r: r.getMessage().startswith("cannot reach"))
    later[0] = 3600.0  # an hour of training later …
    server.stop(0).wait()  # … the coordinator goes away
    assert retrying.seen.wait(60) or errors, "the party neither retried nor failed"
    party.stop()
    t.join(timeout=60)
    assert not errors, errors  # it retried instead of giving up at once
    assert "lost" in retrying.records[-1].getMessage() or "refused" in retrying.records[-1].getMessage()


def _run(party: GrpcParty, errors: list) -> None:
    try:
        party.run()
    except TransportError as exc:
        errors.append(exc)


# ------------------------------------------------------------ addresses
def test_addresses_with_the_port_in_the_wrong_place_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="HOST:PORT, e.g. localhost:9394"):
        split_address("localhost")
    with pytest.raises(ConfigError, match="without a scheme, e.g. localhost:9394"):
        split_address("http://localhost:9394/")
    with pytest.raises(ConfigError, match=r"--host 0\.0\.0\.0 --port 9394"):
        check_host("0.0.0.0:9394")
    with pytest.raises(ConfigError, match=r"--host ::1 --port 9394"):
        check_host("[::1]:9394")
    for ok in ("0.0.0.0", "127.0.0.1", "localhost", "::", "[::]", "fe80::1", None):
        check_host(ok)
    assert listen_address("::", 9394) == "[::]:9394" and listen_address("0.0.0.0", 1) == "0.0.0.0:1"


def test_a_different_model_is_refused_with_the_fix_first():
    with pytest.raises(ModelError) as info:
        check_model([["w", [10, 13], "float32"]], [["w", [10, 64], "float32"]])
    text = str(info.value)
    assert text.index("check that this party's data has the coordinator's features") < text.index("w [10, 13] here")
    assert len(text.split("(")[0]) < 300  # the fix survives the coordinator's 300-character record


# ------------------------------------------------------------ gRPC's own log lines
@pytest.mark.parametrize("line, kind", [(NO_TLS, "no_tls"), (OTHER_CA, "bad_cert"), (CURL, "http"),
                                        (TLS_AT_INSECURE, "tls_at_insecure"), (SERVER_NAME, "server_name")])
def test_grpc_lines_of_refused_connections_are_classified(line, kind):
    parsed = grpclog.parse_line(line)
    assert parsed is not None and parsed.level in "IE"
    found = grpclog.classify(parsed.message)
    assert found is not None and found[0] == kind
    assert grpclog.explanation(*found).endswith(f"(gRPC: {found[1]})")


def test_other_lines_are_not_grpc_or_not_handshakes():
    assert grpclog.parse_line("round 3/20  accuracy 0.9000") is None
    assert grpclog.parse_line("INFO pollen.server: hello") is None
    line = grpclog.parse_line("I1203 09:15:05.524694   18646 chttp2_transport.cc:1118] W:0x7f SERVER state IDLE -> WRITING")
    assert line is not None and grpclog.classify(line.message) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refused_connections_is_one_line_per_ten_seconds_with_a_count(caplog):
    clock = _Clock()
    report = grpclog.HandshakeReporter(logging.getLogger("pollen.server"), clock=clock)
    caplog.set_level(logging.WARNING, "pollen.server")
    for i in range(1000):  # 1000 bad handshakes within 9.99 s
        clock.now = i * 0.00999
        report("no_tls", "WRONG_VERSION_NUMBER")
    report("bad_cert", "BAD_SIGNATURE")
    assert len(caplog.records) == 1 and "without TLS" in caplog.records[0].getMessage()
    clock.now = 10.5
    report("no_tls", "WRONG_VERSION_NUMBER")
    assert len(caplog.records) == 2
    assert "[1000 more refused connections (999 without TLS, 1 TLS handshake failed)" in caplog.records[1].getMessage()
    report("no_tls", "WRONG_VERSION_NUMBER")
    report.flush()
    assert len(caplog.records) == 3 and caplog.records[2].getMessage().startswith("1 more refused connections")
    assert all(r.event == "handshake_failed" for r in caplog.records)


@contextmanager
def fake_stderr():
    """fd 2 on a temporary file (what the real stderr would receive), then put back. Entered in the
    test's body: pytest puts its own capture file on fd 2 again between a fixture and the test."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield f
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def test_capture_passes_other_output_through_and_hands_grpc_lines_over():
    seen = []
    capture = grpclog.StderrCapture(lambda line: seen.append(line) or "Handshake" in line.message)
    with fake_stderr() as real:
        before = os.fstat(2)
        assert capture.start()
        assert not grpclog.StderrCapture(lambda line: False).start()  # one capture per process
        os.write(2, b"a line of our own\n")
        os.write(2, (NO_TLS + "\n").encode())
        os.write(2, (SERVER_NAME + "\n").encode())  # a gRPC line the handler does not take
        os.write(2, b"a progress bar\r")  # no newline: passed on at once, not held
        capture.stop()
        after = os.fstat(2)
        real.seek(0)
        out = real.read().decode()
    assert (after.st_ino, after.st_dev) == (before.st_ino, before.st_dev)  # fd 2 is back
    assert out == "a line of our own\n" + SERVER_NAME + "\n" + "a progress bar\r"
    assert [line.message[:16] for line in seen] == ["Handshake failed", "No match found f"]


def test_a_tls_coordinator_explains_a_party_without_tls_once(serve, certs):
    # The real gRPC line, from gRPC's C core in this process, through the pipe to the reporter.
    explained = threading.Event()
    kinds = []

    def report(kind: str, reason: str) -> None:
        kinds.append((kind, reason))
        explained.set()

    capture = grpclog.StderrCapture(grpclog.server_handler(report, drop_info=False))
    _, _, port = serve(certs)
    with fake_stderr() as real:
        assert capture.start()
        try:
            join_error(PartyOptions("0", f"localhost:{port}", None, insecure=True))
            assert explained.wait(60), "gRPC's handshake line did not reach the reporter"
        finally:
            capture.stop()
        real.seek(0)
        printed = real.read()
    assert kinds[0] == ("no_tls", "WRONG_VERSION_NUMBER")
    assert b"Handshake failed" not in printed  # explained, not printed raw
