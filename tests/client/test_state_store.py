"""The party-state store: its LRU, the disk round trip, volatile keys, and resumed runs reading the
state saved before the round they replay."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.client.state_store import PartyStateStore
from pollen.errors import RunError


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"scaffold_ci": {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(4, dtype=np.int64)},
            "compress:topk:residual": {"w": rng.normal(size=5).astype(np.float32)},
            "dp_sgd": {"history": [[1.0, 0.01, 10]], "calibration": {"sigma": 1.1}},
            "client_dp_participations": 3, "flat": rng.normal(size=2)}


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k, v in a.items():
        if isinstance(v, dict) and v and isinstance(next(iter(v.values())), np.ndarray):
            assert set(v) == set(b[k])
            for name, arr in v.items():
                np.testing.assert_array_equal(arr, b[k][name])
                assert arr.dtype == b[k][name].dtype
        elif isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b[k])
        else:
            assert v == b[k]


def test_disk_round_trip_and_lru_bound(tmp_path):
    store = PartyStateStore(tmp_path, capacity=2)
    for i in range(5):
        st = store.get(str(i))
        st.update(_state(i))
        store.save(str(i), st, round=1)
    assert store.in_memory() == 2  # the LRU holds the last two; the others wait on disk
    assert store.writes == 5
    fresh = PartyStateStore(tmp_path, capacity=2)  # a new process (a restarted run, another actor)
    for i in range(5):
        _same(fresh.get(str(i)), _state(i))
    assert fresh.reads == 5
    assert fresh.get("4") is fresh.get("4")  # served from memory the second time
    assert fresh.reads == 5


def test_lru_keeps_recent_states_in_memory(tmp_path):
    store = PartyStateStore(tmp_path, capacity=3)
    for i in range(3):
        store.save(str(i), store.get(str(i)) | {"n": i}, 1)
    store.get("0")  # 0 becomes the most recent: 1 is the least recently used
    store.save("3", {"n": 3}, 1)
    store.get("3")
    reads = store.reads
    store.get("0"), store.get("2"), store.get("3")
    assert store.reads == reads  # still in memory
    assert store.get("1") == {"n": 1} and store.reads == reads + 1  # evicted, read back from disk


def test_empty_state_writes_nothing_and_volatile_keys_stay_in_memory(tmp_path):
    store = PartyStateStore(tmp_path, capacity=4, volatile={"secagg"})
    store.save("7", {}, 1)
    assert not any(tmp_path.rglob("*.safetensors"))
    st = store.get("8")
    st.update(secagg={"secret": b"never on disk"}, n=2)
    store.save("8", st, 1)
    assert store.get("8")["secagg"] == {"secret": b"never on disk"}  # in memory for the round
    assert PartyStateStore(tmp_path, volatile={"secagg"}).get("8") == {"n": 2}
    assert b"never on disk" not in b"".join(p.read_bytes() for p in tmp_path.rglob("*.safetensors"))


def test_unserialisable_state_is_refused_with_the_key_named(tmp_path):
    store = PartyStateStore(tmp_path)
    with pytest.raises(RunError, match="party 3: state 'obj'"):
        store.save("3", {"obj": object()}, 1)


def test_resumed_run_reads_the_state_saved_before_its_first_round(tmp_path):
    store = PartyStateStore(tmp_path)
    for rnd in (1, 2, 3):  # the crash came after round 3's party work, before its checkpoint
        store.save("5", {"n": rnd}, rnd)
    assert PartyStateStore(tmp_path, resume_round=3).get("5") == {"n": 2}  # round 3 is replayed
    assert PartyStateStore(tmp_path, resume_round=4).get("5") == {"n": 3}
    assert PartyStateStore(tmp_path, resume_round=1).get("5") == {}
    replay = PartyStateStore(tmp_path, resume_round=3)
    replay.save("5", {"n": 33}, 3)  # the replayed round overwrites its own state, keeps round 2's
    assert PartyStateStore(tmp_path, resume_round=3).get("5") == {"n": 2}
    assert PartyStateStore(tmp_path).get("5") == {"n": 33}


def test_memory_only_store_keeps_everything(tmp_path):
    store = PartyStateStore(None, capacity=1)
    for i in range(3):
        store.save(str(i), store.get(str(i)) | {"n": i}, 1)
    assert store.in_memory() == 3 and [store.get(str(i))["n"] for i in range(3)] == [0, 1, 2]


def test_zero_dimensional_tensors_keep_their_shape(tmp_path):
    """A personal model's BatchNorm counter (``num_batches_tracked``, shape ()) comes back as shape (),
    not (1,): the model would refuse it."""
    store = PartyStateStore(tmp_path, capacity=1)
    st = store.get("0")
    st["personal"] = {"bn.num_batches_tracked": np.array(7, dtype=np.int64), "w": np.ones((2, 2), np.float32).T}
    st["scalar"] = np.array(1.5, dtype=np.float32)
    store.save("0", st, round=1)
    store.clear_memory()
    back = store.get("0")
    assert back["personal"]["bn.num_batches_tracked"].shape == () and int(back["personal"]["bn.num_batches_tracked"]) == 7
    assert back["scalar"].shape == () and back["personal"]["w"].shape == (2, 2)
