"""Every message is checked before use: bad ones are refused, logged and counted, the refused
party loses that task, and the federation goes on."""

import json

import grpc
import numpy as np
import pytest

from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import GRPC_MESSAGE_LIMIT, PROTOCOL_VERSION, assemble, to_chunks
from pollen.transport.rpc.messages import reply_message
from pollen.types import Reply, RoundConfig, Task, Update

STATE = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.zeros((), np.int64)}


def _open_task(c, stub, session, party="0", rnd=1):
    c.hub.submit(Task(party, "fit", rnd, STATE, RoundConfig(round=rnd)))
    msg = assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=5)), 2**30)
    assert msg.header["round"] == rnd
    return msg


def _good(party="0", rnd=1, **delta_changes):
    delta = {k: np.zeros_like(v) for k, v in STATE.items()}
    delta.update(delta_changes)
    return reply_message(Reply(party, "fit", rnd, update=Update(delta, 5, {"loss": 1.0})))


def _send(stub, session, header, payload, **chunk_fields):
    chunks = list(to_chunks(header, payload, session=session))
    for k, v in chunk_fields.items():
        setattr(chunks[0], k, v)
    return stub.SendReply(iter(chunks), timeout=10)


def _refused(call, code):
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    return err.value.details()


@pytest.fixture
def party0(coordinator):
    c = coordinator(heartbeat=30.0)
    ch, stub, session = c.join("0")
    yield c, stub, session
    ch.close()


def _costs_the_task(c, why):
    reply = c.hub.poll(timeout=5)
    assert reply is not None and reply.party_id == "0" and not reply.ok and why in reply.failure
    assert c.hub.pending() == 0


def test_valid_reply_is_accepted_and_measured(party0):
    c, stub, session = party0
    _open_task(c, stub, session)
    assert _send(stub, session, *_good()).accepted
    reply = c.hub.poll(timeout=5)
    assert reply.ok and reply.update.num_examples == 5 and reply.bytes_up > 0 and reply.bytes_down > 0


def test_garbage_payload_is_refused(party0):
    c, stub, session = party0
    _open_task(c, stub, session)
    header, _ = _good()
    details = _refused(lambda: _send(stub, session, header, b"\x07garbage bytes, not safetensors" * 10), grpc.StatusCode.INVALID_ARGUMENT)
    assert "payload" in details
    assert c.hub.stats.rejected["invalid"] == 1
    _costs_the_task(c, "reply refused")


def test_garbage_header_is_refused(party0):
    c, stub, session = party0
    _open_task(c, stub, session)
    bad = pb.Chunk(session=session, header_json="{not json", total_size=3, data=b"abc")
    _refused(lambda: stub.SendReply(iter([bad]), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
    assert c.hub.stats.rejected["malformed"] == 1


def test_truncated_stream_is_refused(party0):
    c, stub, session = party0
    _open_task(c, stub, session)
    header, payload = _good()
    details = _refused(lambda: _send(stub, session, header, payload, total_size=payload.size + 1000),
                       grpc.StatusCode.INVALID_ARGUMENT)
    assert "truncated" in details and c.hub.stats.rejected["malformed"] == 1


def test_oversized_message_is_refused_and_server_survives(coordinator):
    c = coordinator(heartbeat=30.0, max_bytes=10_000)
    ch, stub, session = c.join("0")
    _open_task(c, stub, session)
    header, payload = _good()
    details = _refused(lambda: _send(stub, session, header, payload, total_size=10**9), grpc.StatusCode.INVALID_ARGUMENT)
    assert "limit" in details and c.hub.stats.rejected["oversized"] == 1
    huge = pb.Chunk(session=session, header_json=json.dumps(header), total_size=GRPC_MESSAGE_LIMIT + 10,
                    data=b"\0" * (GRPC_MESSAGE_LIMIT + 10))  # one chunk over gRPC's own message limit
    _refused(lambda: stub.SendReply(iter([huge]), timeout=10), grpc.StatusCode.RESOURCE_EXHAUSTED)
    _refused(lambda: _send(stub, session, *_good()), grpc.StatusCode.FAILED_PRECONDITION)  # the party lost its round
    assert c.hub.stats.rejected["stale"] == 1  # the service still answers, and the refused round stays closed
    ch.close()


def test_replayed_reply_from_an_earlier_round_is_refused(party0):
    c, stub, session = party0
    _open_task(c, stub, session, rnd=1)
    old = _good(rnd=1)
    assert _send(stub, session, *old).accepted
    assert c.hub.poll(timeout=5).ok
    _open_task(c, stub, session, rnd=2)
    details = _refused(lambda: _send(stub, session, *old), grpc.StatusCode.FAILED_PRECONDITION)
    assert "round 1" in details and c.hub.stats.rejected["stale"] == 1
    assert _send(stub, session, *_good(rnd=2)).accepted  # the open round-2 task is still answerable
    assert c.hub.poll(timeout=5).round == 2


def test_party_claiming_another_id_is_refused(coordinator):
    c = coordinator(heartbeat=30.0)
    ch, stub, session = c.join("0")
    # join as party 1 with party 0's certificate
    details = _refused(lambda: stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="1"), timeout=10),
                       grpc.StatusCode.PERMISSION_DENIED)
    assert "party-0" in details
    # send a reply that claims to come from party 1 on party 0's session
    ch1, stub1, session1 = c.join("1")
    c.hub.submit(Task("1", "fit", 1, STATE, RoundConfig(round=1)))
    _refused(lambda: _send(stub, session, *_good(party="1")), grpc.StatusCode.PERMISSION_DENIED)
    # use party 1's session token from party 0's connection
    _refused(lambda: _send(stub, session1, *_good(party="1")), grpc.StatusCode.PERMISSION_DENIED)
    assert c.hub.stats.rejected["identity"] == 3
    ch.close(), ch1.close()


@pytest.mark.parametrize("change, why", [
    ({"w": np.full((4, 3), np.nan, np.float32)}, "NaN"),
    ({"b": np.array([0, np.inf, 0], np.float32)}, "NaN or Inf"),
    ({"w": np.zeros((3, 4), np.float32)}, "expected float32[4, 3]"),
    ({"w": np.zeros((4, 3), np.float64)}, "expected float32"),
    ({"extra": np.zeros(2, np.float32)}, "unexpected ['extra']"),
])
def test_bad_tensors_are_refused(party0, change, why):
    c, stub, session = party0
    _open_task(c, stub, session)
    details = _refused(lambda: _send(stub, session, *_good(**change)), grpc.StatusCode.INVALID_ARGUMENT)
    assert why in details
    _costs_the_task(c, "reply refused")


def test_bad_counts_are_refused(party0):
    c, stub, session = party0
    _open_task(c, stub, session)
    header, payload = _good()
    header["num_examples"] = -3
    assert "num_examples" in _refused(lambda: _send(stub, session, header, payload), grpc.StatusCode.INVALID_ARGUMENT)


def test_unknown_party_from_another_ca_is_refused(coordinator, foreign_certs):
    c = coordinator()
    ch = c.channel("party-0", certs=foreign_certs)
    stub = pb_grpc.FederationStub(ch)
    _refused(lambda: stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="0"), timeout=10),
             grpc.StatusCode.UNAVAILABLE)  # the TLS handshake fails: certificate not signed by this run's CA
    assert c.hub.available() == []
    ch.close()


def test_revoked_party_is_refused(coordinator, tmp_path):
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# revoked\n")
    c = coordinator(revoked=revoked)
    ch, stub, session = c.join("2")
    revoked.write_text("2\n")  # revoked while connected: its next call is refused
    _refused(lambda: stub.Heartbeat(pb.HeartbeatRequest(session=session), timeout=10), grpc.StatusCode.PERMISSION_DENIED)
    assert c.hub.available() == []
    _refused(lambda: stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="2"), timeout=10),
             grpc.StatusCode.PERMISSION_DENIED)
    assert c.hub.stats.rejected["revoked"] == 2
    ch.close()


def test_protocol_version_mismatch_says_so(coordinator):
    c = coordinator()
    ch = c.channel("party-0")
    stub = pb_grpc.FederationStub(ch)
    details = _refused(lambda: stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION + 1, party_id="0"), timeout=10),
                       grpc.StatusCode.FAILED_PRECONDITION)
    assert "protocol version mismatch" in details and "same pollen version" in details
    ch.close()


def test_late_join_and_leave(coordinator):
    c = coordinator(heartbeat=30.0)
    ch0, stub0, s0 = c.join("0")
    assert c.hub.available() == ["0"]
    ch1, stub1, s1 = c.join("1")  # joins after the first round was sampled: takes part from the next
    assert c.hub.available() == ["0", "1"]
    c.hub.submit(Task("1", "fit", 2, STATE, RoundConfig(round=2)))
    assert stub1.Leave(pb.LeaveRequest(session=s1), timeout=10).accepted
    reply = c.hub.poll(timeout=5)
    assert reply.party_id == "1" and reply.failure == "party left"
    assert c.hub.available() == ["0"] and c.hub.pending() == 0
    _refused(lambda: stub1.Heartbeat(pb.HeartbeatRequest(session=s1), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
    ch0.close(), ch1.close()
