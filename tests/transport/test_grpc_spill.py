"""A streamed gRPC round keeps its global model on disk while the uploads are folded
(pollen.server.spill): with a forced tiny chunk size both ways, the parties download the very
global, the round's result is the in-memory mean (and bit for bit the result of the same round
with the global in memory), the coordinator holds none of the global's arrays while the parties
upload, and the checkpoint written after the round is the new model."""

from __future__ import annotations

import gc
import threading
import weakref

import grpc
import numpy as np

from pollen.compose import assemble, open_run
from pollen.config import make_config
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, RECEIVE_WINDOW, assemble as join_chunks, grpc_options, to_chunks
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.messages import reply_message, task_from_message
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList
from pollen.types import Reply, Update

PARTIES = 3


def _model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.normal(size=(5, 3, 3)).astype(np.float32), "fc.bias": rng.normal(size=7).astype(np.float32),
            "bn.num_batches_tracked": np.array(3 + seed, dtype=np.int64)}


def _update(i: int) -> Update:
    return Update(_model(i + 1), 10 + i)


def _round(tmp_path, name: str, handed: bool, fail: bool = False):
    """One round over gRPC on 127.0.0.1; the parties take their turns one after another (the same
    arrival order every time). ``handed``: the model is handed over to ``Coordinator.run``;
    else the test keeps it and drives ``run_round`` (the global then stays in memory). ``fail``:
    every party replies with a failure (the round aggregates nothing)."""
    model = _model(0)
    refs = [weakref.ref(v) for v in model.values()]
    hub = GrpcTransport(heartbeat_interval=3600, chunk_bytes=11, min_parties=PARTIES)  # 11: elements cut in two
    server, port = start_server(FederationService(hub, {}, 10**9, True, RevocationList(None)), "127.0.0.1", 0, None,
                                receive_window=RECEIVE_WINDOW)
    seen: dict[str, object] = {"downloads": [], "global_alive": []}
    errors: list[Exception] = []
    joined = threading.Event()

    def parties() -> None:
        try:
            channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=grpc_options()) for _ in range(PARTIES)]
            stubs = [pb_grpc.FederationStub(ch) for ch in channels]
            tokens = [s.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=str(i))).session
                      for i, s in enumerate(stubs)]
            joined.set()
            for i, (stub, token) in enumerate(zip(stubs, tokens)):
                msg = None
                while msg is None:
                    msg = join_chunks(stub.GetTask(pb.TaskRequest(session=token, wait_seconds=5)), 10**9)
                task = task_from_message(msg.header, msg.payload)
                seen["downloads"].append({k: v.copy() for k, v in task.state.items()})
                gc.collect()  # the round is folding now: is the global still held somewhere?
                seen["global_alive"].append(any(r() is not None for r in refs))
                reply = Reply(str(i), "fit", task.round, failure="out of memory") if fail else \
                    Reply(str(i), "fit", task.round, update=_update(i), seconds=0.1)
                header, payload = reply_message(reply)
                assert stub.SendReply(to_chunks(header, payload, session=token, chunk_bytes=7)).accepted
            for ch in channels:
                ch.close()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            joined.set()

    want_global = {k: v.copy() for k, v in model.items()}
    t = threading.Thread(target=parties, daemon=True)
    t.start()
    try:
        assert joined.wait(30)
        cfg = make_config({"federation": {"rounds": 1, "stream_aggregate": "on", "parties_per_round": PARTIES},
                           "data": {"parties": PARTIES, "holdout": 0.0}, "run": {"progress": False}})
        fed = assemble(cfg)
        folder = open_run(fed, run_dir=tmp_path / name)
        coordinator = fed.coordinator(hub, folder.events, folder.checkpointer)
        if handed:
            box = [model]
            del model
            new = coordinator.run(box.pop())
        else:
            outcome, _ = coordinator.run_round(1, model, coordinator.strategy.server_optimizer.init(model))
            new = outcome.state
        t.join(timeout=60)
    finally:
        hub.close()
        server.stop(0)
    assert not errors, errors
    assert outcome_ok(new)
    for got in seen["downloads"]:  # every party got the very global (served from the file when spilled)
        for k, v in want_global.items():
            np.testing.assert_array_equal(got[k], v)
    return new, seen, folder


def outcome_ok(new) -> bool:
    """Every tensor of the new model is in memory (nothing left on the round's file)."""
    return set(new) == set(_model(0)) and all(isinstance(v, (np.ndarray, np.generic)) for v in new.values())


def test_a_streamed_round_keeps_its_global_on_disk_and_gives_the_in_memory_mean(tmp_path):
    new, seen, folder = _round(tmp_path, "spilled", handed=True)
    assert seen["global_alive"] == [False] * PARTIES  # no array of the global while the uploads were folded
    base = _model(0)
    ups = [_update(i) for i in range(PARTIES)]
    w = [u.num_examples for u in ups]
    for name, x in base.items():
        mean = np.average(np.stack([u.delta[name].astype(np.float64) for u in ups]), axis=0, weights=w)
        if x.dtype.kind == "f":
            np.testing.assert_allclose(new[name], x + mean, rtol=1e-5, atol=1e-6)
        else:
            assert new[name] == x + np.rint(mean)
        assert new[name].dtype == x.dtype and new[name].shape == x.shape
    in_memory, seen_kept, _ = _round(tmp_path, "kept", handed=False)
    assert seen_kept["global_alive"] == [True] * PARTIES  # the caller kept it: the check can fail
    for name in new:
        np.testing.assert_array_equal(new[name], in_memory[name])  # the same sums in the same order
    saved = folder.checkpointer.resume_point().state  # the checkpoint after the round is the new model
    for name in new:
        np.testing.assert_array_equal(saved[name], new[name])
    leftovers = [p.name for p in (tmp_path / "spilled").rglob("*") if "tmp" in p.name]
    assert leftovers == []  # the spill file was anonymous


def test_a_round_that_aggregates_nothing_reads_its_global_back_from_disk(tmp_path):
    new, seen, folder = _round(tmp_path, "failed", handed=True, fail=True)
    assert seen["global_alive"] == [False] * PARTIES
    for name, v in _model(0).items():
        np.testing.assert_array_equal(new[name], v)  # the global, whole again and unchanged
    saved = folder.checkpointer.resume_point().state
    for name in new:
        np.testing.assert_array_equal(saved[name], new[name])
