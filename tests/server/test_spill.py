"""A big streamed round's global model kept on disk (pollen.server.spill): the placeholders free the
arrays, stream the same bytes as the arrays would, add back bit for bit into the running sum's
buffers (read a few bytes at a time), refuse to be read as arrays, and are only made where nothing
needs the global in memory before the step."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from pollen.errors import RunError
from pollen.server import spill as spill_mod
from pollen.server.spill import SpilledTensor, held_bytes, restore, spill, spill_round
from pollen.server.streaming import StreamingMean, step
from pollen.strategy.base import ServerOptimizer
from pollen.strategy.fedavgm import ServerMomentum
from pollen.transport.rpc.tensors import Encoded
from pollen.types import Update


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=7).astype(np.float64),
            "head": rng.normal(size=3).astype(np.float32), "count": np.array(4, dtype=np.int64),
            "empty": np.zeros((0, 3), np.float32)}


def test_spilling_frees_the_arrays_and_keeps_their_layout(tmp_path):
    state = _state()
    want = {k: v.copy() for k, v in state.items()}
    refs = [weakref.ref(v) for v in state.values()]
    s = spill(state, list(state), tmp_path)
    gc.collect()
    assert all(r() is None for r in refs)  # nothing but the state held them
    assert held_bytes(state) == 0 and s.nbytes == sum(v.nbytes for v in want.values())
    assert list(tmp_path.iterdir()) == []  # an anonymous file: nothing to clean up after a crash
    for k, v in state.items():
        assert isinstance(v, SpilledTensor)
        assert (v.shape, v.dtype, v.nbytes, v.size) == (want[k].shape, want[k].dtype, want[k].nbytes, want[k].size)
    with pytest.raises(RunError, match="on disk"):
        np.asarray(state["w"])
    restore(state)
    for k, v in want.items():
        np.testing.assert_array_equal(state[k], v)
        assert state[k].dtype == v.dtype
    assert held_bytes(state) == sum(v.nbytes for v in want.values())
    s.close()


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_a_spilled_state_streams_the_bytes_the_arrays_would(tmp_path, chunk):
    state = _state(1)
    arrays = Encoded(dict(state), {"order": list(state)})
    s = spill(state, ["w", "b", "count", "empty"], tmp_path)  # "head" stays in memory: a mix
    mixed = Encoded(state, {"order": list(state)})
    assert mixed.head == arrays.head and mixed.size == arrays.size
    assert b"".join(mixed.chunks(chunk)) == b"".join(arrays.chunks(chunk)) == arrays.tobytes() == mixed.tobytes()
    assert all(len(c) == chunk for c in list(mixed.chunks(chunk))[:-1])
    s.close()


def test_the_global_is_added_back_bit_for_bit_a_few_bytes_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(spill_mod, "READ_BYTES", 12)  # 3 float32 per read: rows cut everywhere
    rng = np.random.default_rng(2)
    ups = [Update({k: (rng.normal(size=v.shape) if v.dtype.kind == "f" else np.array(rng.integers(0, 9)))
                   .astype(v.dtype) for k, v in _state().items() if k != "head"}, int(rng.integers(1, 30)))
           for _ in range(4)]

    def streamed(on_disk: bool, lr: float):
        state = _state()
        mean = StreamingMean(state)
        for u in ups:
            mean.add(u)
        s = spill(state, list(state), tmp_path) if on_disk else None
        new, _ = step(ServerOptimizer(lr=lr), state, mean.finish(), {})
        if s is not None:
            assert isinstance(new["head"], SpilledTensor)  # not in any update: the round loop restores it
            restore(new)
            s.close()
        return new

    for lr in (1.0, 0.5):
        plain, disk = streamed(False, lr), streamed(True, lr)
        for k in plain:
            np.testing.assert_array_equal(disk[k], plain[k])
            assert disk[k].dtype == plain[k].dtype


class _Wire:
    serves_files = True


class _Local:
    pass


def test_only_a_round_that_needs_no_global_in_memory_spills(tmp_path):
    state = _state()
    assert spill_round(state, dict(state), ServerOptimizer(), _Local(), tmp_path) is None  # transport cannot
    assert spill_round(state, dict(state), ServerMomentum(1.0, 0.9), _Wire(), tmp_path) is None  # steps on x itself
    compressed = {k: v.copy() for k, v in state.items()}
    assert spill_round(state, compressed, ServerOptimizer(), _Wire(), tmp_path) is None  # not the global's arrays
    assert held_bytes(state) == sum(v.nbytes for v in state.values())
    s = spill_round(state, {k: state[k] for k in ("w", "b")}, ServerOptimizer(), _Wire(), tmp_path)
    assert s is not None and set(s.tensors) == {"w", "b"}
    assert isinstance(state["w"], SpilledTensor) and isinstance(state["head"], np.ndarray)
    s.close()


def test_the_file_stays_open_while_a_download_reads_it_and_goes_with_its_last_reader(tmp_path):
    state = _state()
    s = spill(state, list(state), tmp_path)
    payload = Encoded({k: state[k] for k in state}, {"order": list(state)})
    stream = payload.chunks(16)
    first = next(stream)
    file = weakref.ref(state["w"].file_span.file)
    del s, state  # the round is over: only the straggler's download holds the file
    gc.collect()
    assert file() is not None and not file().closed
    assert len(first + b"".join(stream)) == payload.size
    del payload, stream
    assert file() is None  # no reference cycle: it went at once, without waiting for the garbage collector
