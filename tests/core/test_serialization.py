import numpy as np
import pytest

from pollen.errors import ProtocolError
from pollen.serialization import reply_from_bytes, reply_to_bytes, state_from_bytes, state_to_bytes, task_from_bytes, task_to_bytes
from pollen.types import EvalResult, Reply, RoundConfig, Task, Update


def _state():
    rng = np.random.default_rng(0)
    return {"b.weight": rng.normal(size=(3, 4)).astype(np.float32), "a.count": np.array(7, dtype=np.int64),
            "c": rng.normal(size=5).astype(np.float16)}


def test_state_round_trip_keeps_order_dtype_shape():
    s = _state()
    out, meta = state_from_bytes(state_to_bytes(s, {"order": list(s), "x": 1}))
    assert list(out) == list(s) and meta["x"] == 1
    for k in s:
        assert out[k].dtype == s[k].dtype and out[k].shape == s[k].shape
        np.testing.assert_array_equal(out[k], s[k])


def test_task_and_reply_round_trip():
    cfg = RoundConfig(round=3, lr=0.1, shared_names=("b.weight",), extra={"k": [1, 2]})
    t = task_from_bytes(task_to_bytes(Task("7", "fit", 3, _state(), cfg)))
    assert (t.party_id, t.kind, t.round, t.config) == ("7", "fit", 3, cfg)
    r = Reply("7", "fit", 3, update=Update(_state(), 42, {"train_loss": 0.5}, {"codec": "x"}), seconds=1.5)
    back = reply_from_bytes(reply_to_bytes(r))
    assert back.update.num_examples == 42 and back.update.metrics == {"train_loss": 0.5} and back.update.codec == {"codec": "x"}
    np.testing.assert_array_equal(back.update.delta["b.weight"], r.update.delta["b.weight"])
    e = reply_from_bytes(reply_to_bytes(Reply("1", "evaluate", 2, evaluation=EvalResult(0.3, 0.9, 10))))
    assert e.evaluation == EvalResult(0.3, 0.9, 10) and e.update is None
    f = reply_from_bytes(reply_to_bytes(Reply("1", "fit", 2, failure="boom")))
    assert not f.ok and f.failure == "boom"


@pytest.mark.parametrize("data", [b"", b"garbage bytes that are not a payload", b"\xff" * 8 + b"{}"])
def test_garbage_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        state_from_bytes(data)


def test_truncated_payload_is_a_protocol_error():
    blob = state_to_bytes(_state())
    with pytest.raises(ProtocolError):
        state_from_bytes(blob[: len(blob) - 10])


def test_reply_nbytes_is_the_serialised_length_without_serialising():
    import numpy as np

    from pollen.serialization import reply_nbytes, reply_to_bytes
    from pollen.types import EvalResult, Reply, Update

    rng = np.random.default_rng(0)
    delta = {"conv.weight": rng.normal(size=(4, 3, 3)).astype(np.float32), "n": np.array(7, np.int64),
             "fc.b": rng.normal(size=3).astype(np.float16)}
    replies = [Reply("3", "fit", 1, update=Update(delta, 12, {"loss": 0.25, "acc": 1 / 3})),
               Reply("12345", "fit", 22, update=Update(delta, 1, {'we"ird\\key': 1e-300}, {"codec": "x\ny"}), seconds=3.5),
               Reply("7", "evaluate", 2, evaluation=EvalResult(0.5, 0.75, 10, {"auc": float("nan")})),
               Reply("é", "fit", 3, failure='boom "quoted" \\ ✓'), Reply("0", "fit", 1, update=Update({}, 3))]
    for reply in replies * 2:  # the second pass uses the cached layouts
        assert reply_nbytes(reply) == len(reply_to_bytes(reply))
