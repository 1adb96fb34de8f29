"""The wire's tensor layout is safetensors': readable by the safetensors library and able to read
it, and every malformed header is refused before a byte is interpreted."""

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load, save

from pollen.errors import ProtocolError
from pollen.transport.rpc.tensors import Encoded, decode

STATE = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array(7, np.int64),
         "e": np.zeros((0, 2), np.float16), "m": np.array([True, False])}


def test_round_trip_and_safetensors_compatibility():
    enc = Encoded(STATE, {"order": list(STATE)})
    raw = enc.tobytes()
    assert b"".join(enc.chunks(5)) == raw and b"".join(enc.chunks(1 << 20)) == raw
    ours, meta = decode(bytearray(raw))
    assert list(ours) == list(STATE) and meta == {"order": list(STATE)}
    theirs = load(raw)
    for k, v in STATE.items():
        for got in (ours[k], theirs[k]):
            assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v)
    from_lib, _ = decode(save(STATE))
    assert all(np.array_equal(from_lib[k], v) for k, v in STATE.items())


def _payload(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("payload, why", [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 10**9) + b"{}", "truncated or garbage"),
    (struct.pack("<Q", 3) + b"{x}", "not valid JSON"),
    (_payload({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "do not follow"),
    (_payload({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12 bytes"),
    (_payload({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "unknown dtype"),
    (_payload({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "bad shape"),
    (_payload({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 8), "bad header entry"),
    (_payload({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "after its last tensor"),
    (_payload({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "do not follow"),
])
def test_malformed_payloads_are_refused(payload, why):
    with pytest.raises(ProtocolError, match=why):
        decode(payload)


def test_unsendable_dtype_is_refused():
    with pytest.raises(ProtocolError, match="cannot be sent"):
        Encoded({"c": np.zeros(2, np.complex64)})
