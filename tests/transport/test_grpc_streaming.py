"""Updates folded chunk by chunk as their gRPC stream arrives: a forced tiny chunk size (elements
cut between chunks) gives the in-memory mean; a NaN in a later chunk spoils the round and says
whose stream broke; a real gRPC run that streams trains the model an in-memory run trains; and
(slow) a model larger than 2 GB makes the round trip over gRPC."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pollen.server.streaming import StreamingMean
from pollen.transport.rpc.framing import to_chunks
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.messages import reply_message
from pollen.transport.rpc.service import FederationService
from pollen.transport.rpc.tls import RevocationList
from pollen.types import Reply, RoundConfig, Task, Update


class _Aborted(Exception):
    pass


class _Context:
    """What the service reads of a gRPC context (no TLS)."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code, detail):
        raise _Aborted(f"{code}: {detail}")


def _model(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(size=(5, 3, 3)).astype(np.float32), "fc.bias": rng.normal(size=7).astype(np.float32),
            "bn.num_batches_tracked": np.array(3, dtype=np.int64)}


def _service_round(updates: dict[str, Update], chunk_bytes: int, model: dict):
    hub = GrpcTransport(heartbeat_interval=3600)
    service = FederationService(hub, {}, 10**9, True, RevocationList(None))
    sessions = {pid: hub.join(pid, "test") for pid in updates}
    for pid in updates:
        hub.submit(Task(pid, "fit", 1, model, RoundConfig()))
        assert hub.next_task(sessions[pid], 1.0).party_id == pid
    sink = StreamingMean(model)
    hub.fold_into(sink, 1)
    outcomes = {}
    for pid, update in updates.items():
        header, payload = reply_message(Reply(pid, "fit", 1, update=update, seconds=0.5))
        chunks = to_chunks(header, payload, session=sessions[pid].token, chunk_bytes=chunk_bytes)
        try:
            outcomes[pid] = service.SendReply(chunks, _Context()).accepted
        except _Aborted as exc:
            outcomes[pid] = str(exc)
    replies = [hub.poll(1.0) for _ in updates]
    hub.fold_into(None, 1)
    sink.close()
    hub.close()
    return sink, outcomes, replies


def test_a_forced_tiny_chunk_size_folds_to_the_in_memory_mean():
    model = _model(0)
    updates = {str(i): Update(_model(i + 1), 10 + i, {"loss": float(i)}) for i in range(3)}
    sink, outcomes, replies = _service_round(updates, chunk_bytes=7, model=model)  # 7: elements cut in two
    assert all(v is True for v in outcomes.values())
    assert all(r.ok and r.update.delta == {} and r.update.codec == {"folded": True} for r in replies)
    assert sorted(r.update.num_examples for r in replies) == [10, 11, 12]
    got = sink.finish()
    w = [u.num_examples for u in updates.values()]
    for name in model:
        ref = np.average(np.stack([u.delta[name].astype(np.float64) for u in updates.values()]), axis=0, weights=w)
        if name.endswith("num_batches_tracked"):
            assert got[name] == np.rint(ref)
        else:
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6)
    assert sink.raw_bytes == 3 * sum(v.nbytes for v in model.values())


def test_a_nan_in_a_later_chunk_spoils_the_round_and_names_the_party():
    model = _model(0)
    bad = _model(2)
    bad["fc.bias"][-1] = np.nan  # the last tensor: its chunk comes after others were folded
    updates = {"0": Update(_model(1), 10), "1": Update(bad, 10)}
    sink, outcomes, replies = _service_round(updates, chunk_bytes=16, model=model)
    assert outcomes["0"] is True and "NaN" in outcomes["1"]
    assert sink.spoiled and "party 1" in sink.spoiled
    assert {r.party_id: r.ok for r in replies} == {"0": True, "1": False}


def test_a_misshapen_upload_is_refused_before_anything_is_folded():
    model = _model(0)
    wrong = {**_model(1), "fc.bias": np.zeros(8, np.float32)}
    sink, outcomes, _ = _service_round({"0": Update(_model(1), 10), "1": Update(wrong, 10)}, 64, model)
    assert outcomes["0"] is True and "fc.bias" in outcomes["1"]
    assert sink.spoiled is None  # nothing of party 1 reached the sum
    np.testing.assert_allclose(sink.finish()["fc.bias"], _model(1)["fc.bias"], rtol=1e-6)  # (10·x)/10


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    from pollen.data import load_dataset, partition, write_shards

    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", 3, 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def test_a_streamed_grpc_run_trains_the_in_memory_model(digit_shards, run_over_grpc):
    from pollen.config import make_config

    def cfg(mode: str):
        return make_config({"data": {"dataset": "digits", "parties": 3, "holdout": 0.0}, "model": {"model": "mlp"},
                            "federation": {"rounds": 2, "stream_aggregate": mode}, "run": {"seed": 0}})

    plain, _ = run_over_grpc(cfg("off"), *digit_shards, ["0", "1", "2"])
    streamed, records = run_over_grpc(cfg("on"), *digit_shards, ["0", "1", "2"])
    for name, v in plain.items():
        np.testing.assert_allclose(streamed[name], v, rtol=1e-4, atol=1e-5)  # arrival order vs party order
    assert all(r["aggregated"] for r in records)


@pytest.mark.slow
def test_a_model_larger_than_2_gb_makes_the_round_trip_over_grpc():
    """One party, one round, a 2.15 GB float32 tensor (> 2³¹ bytes, protobuf's message limit)
    down to the party and its update back, folded chunk by chunk at the coordinator."""
    import grpc

    from pollen.compose import assemble
    from pollen.config import make_config
    from pollen.transport.rpc import pollen_pb2 as pb
    from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
    from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble as join_chunks, grpc_options
    from pollen.transport.rpc.messages import task_from_message
    from pollen.transport.rpc.service import start_server

    n = 2**31 // 4 + 1024  # float32 elements: just over 2 GiB
    model = {"w": np.zeros(n, dtype=np.float32)}
    model["w"][::4096] = 1.0
    hub = GrpcTransport(heartbeat_interval=3600)
    server, port = start_server(FederationService(hub, {}, 2**33, True, RevocationList(None)), "127.0.0.1", 0, None)
    errors = []

    def party():  # echoes its task's model, +1 on every 4096th element, as its update
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_options()) as ch:
                stub = pb_grpc.FederationStub(ch)
                token = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="0")).session
                msg = None
                while msg is None:
                    msg = join_chunks(stub.GetTask(pb.TaskRequest(session=token, wait_seconds=5)), 2**62)
                task = task_from_message(msg.header, msg.payload)
                delta = task.state["w"]  # a view of the received buffer: no copy
                assert delta.nbytes > 2**31 and delta[4096] == 1.0
                header, payload = reply_message(Reply("0", "fit", task.round, update=Update({"w": delta}, 5)))
                assert stub.SendReply(to_chunks(header, payload, session=token)).accepted
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=party, daemon=True)
    t.start()
    try:
        assert hub.wait_for_parties(1, timeout=60)
        cfg = make_config({"federation": {"rounds": 1, "stream_aggregate": "on"}, "data": {"parties": 1, "holdout": 0.0}})
        fed = assemble(cfg)
        coordinator = fed.coordinator(hub)
        new = coordinator.run(model)
        t.join(timeout=600)
    finally:
        hub.close()
        server.stop(0)
    assert not errors, errors
    assert new["w"].nbytes > 2**31
    assert new["w"][4096] == 2.0 and new["w"][1] == 0.0  # global + the mean of one update
