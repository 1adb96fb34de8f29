"""Each codec's round trip stays within its stated error bound; encodings are compact, pure and
refuse malformed messages."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.compression import HalfPrecision, ScaledSign, TopK, int8, qsgd, terngrad
from pollen.compression.packing import (decode_indices, encode_indices, from_bf16, pack_bits, to_bf16,
                                        unpack_bits, varint_decode, varint_encode)
from pollen.errors import ProtocolError
from pollen.serialization import reply_from_bytes, reply_to_bytes
from pollen.transforms.base import StepContext
from pollen.types import Reply, Update


def make_update(seed: int = 0) -> Update:
    rng = np.random.default_rng(seed)
    delta = {
        "conv.weight": (rng.standard_normal((16, 3, 3, 3)) * 0.02).astype(np.float32),
        "fc.weight": (rng.standard_normal((300, 70)) * 0.01).astype(np.float32),
        "fc.bias": rng.standard_normal(7).astype(np.float32),
        "bn.running_var": rng.random(16).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
    }
    return Update(delta, num_examples=50, metrics={"train_loss": 1.0})


def ctx(seed: int = 1, state: dict | None = None) -> StepContext:
    return StepContext("3", 1, np.random.default_rng(seed), state if state is not None else {})


def roundtrip(codec, update: Update, seed: int = 1) -> tuple[Update, Update]:
    encoded = codec.encode(update, ctx(seed))
    wire = reply_from_bytes(reply_to_bytes(Reply("3", "fit", 1, update=encoded)))  # through safetensors
    return encoded, codec.decode(wire.update)


@pytest.mark.parametrize("kind, rel", [("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_half_precision_relative_error(kind, rel):
    u = make_update()
    _, out = roundtrip(HalfPrecision(kind), u)
    for name in ("conv.weight", "fc.weight", "fc.bias"):
        x, y = u.delta[name], out.delta[name]
        assert y.dtype == np.float32 and y.shape == x.shape
        # relative bound in the normal range plus float16's subnormal spacing
        assert np.all(np.abs(y - x) <= rel * np.abs(x) + 2.0**-25)


def test_fp16_refuses_values_beyond_its_range():
    u = Update({"w": np.array([1e5, 1.0], dtype=np.float32)}, 1)
    with pytest.raises(ValueError, match="bf16"):
        HalfPrecision("fp16").encode(u, ctx())


@pytest.mark.parametrize("codec", [int8(), int8(block=64), qsgd(4, 64), qsgd(2, 512), terngrad(), terngrad(block=128)],
                         ids=["int8", "int8-block", "qsgd4", "qsgd2", "terngrad", "terngrad-block"])
def test_quantizer_error_within_bound(codec):
    u = make_update()
    encoded, out = roundtrip(codec, u)
    for name in ("conv.weight", "fc.weight", "fc.bias"):
        x = u.delta[name].reshape(-1)
        err = np.abs(out.delta[name].reshape(-1) - x)
        assert np.all(err <= codec.max_error(x)), name
    dense = -(-u.delta["fc.weight"].size * codec.bits // 8)
    if "fc.weight::q" in encoded.delta:
        assert encoded.delta["fc.weight::q"].nbytes == dense
    else:  # ternary levels sent sparsely, only when smaller
        assert codec.levels == 1
        assert sum(v.nbytes for k, v in encoded.delta.items() if k.startswith("fc.weight::") and k != "fc.weight::scale") < dense


def test_sparse_ternary_decodes_to_the_same_update_as_dense():
    x = np.zeros(5000, dtype=np.float32)
    x[::97] = np.random.default_rng(0).standard_normal(52)  # few non-zeros: the sparse form wins
    codec = terngrad()
    enc = codec.encode(Update({"w": x}, 1), ctx(5))
    assert "w::sign" in enc.delta and "w::q" not in enc.delta
    sparse = codec.decode(enc).delta["w"]
    dense_codec = terngrad()
    rows_meta = {k: v for k, v in enc.codec["terngrad"]["w"].items() if k not in ("index", "k")}
    levels = np.sign(sparse).astype(np.int64) + 1
    from pollen.compression.packing import pack_bits

    dense = dense_codec.decode_tensor({"q": pack_bits(levels.astype(np.uint8), 2), "scale": enc.delta["w::scale"]},
                                      rows_meta, x.size)
    np.testing.assert_array_equal(sparse, dense)
    assert np.count_nonzero(sparse) <= 52


def test_int8_nearest_error_is_half_a_step_and_small():
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    _, out = roundtrip(int8(), Update({"w": x}, 1))
    assert np.abs(out.delta["w"] - x).max() <= 1 / 254 + 1e-7


def test_topk_keeps_largest_exactly_and_drops_at_most_the_threshold():
    u = make_update()
    codec = TopK(0.05)
    _, out = roundtrip(codec, u)
    x, y = u.delta["fc.weight"].reshape(-1), out.delta["fc.weight"].reshape(-1)
    kept = y != 0
    assert kept.sum() == codec.k_for(x.size)
    np.testing.assert_array_equal(y[kept], x[kept])
    assert np.abs(x[~kept]).max() <= np.abs(x[kept]).min()


@pytest.mark.parametrize("values, rel", [("fp16", 2.0**-11), ("bf16", 2.0**-8), ("int8", None)])
def test_topk_value_encodings(values, rel):
    u = make_update()
    _, out = roundtrip(TopK(0.02, values), u)
    x, y = u.delta["fc.weight"].reshape(-1), out.delta["fc.weight"].reshape(-1)
    ref = TopK(0.02).decode(TopK(0.02).encode(u, ctx())).delta["fc.weight"].reshape(-1)
    kept = ref != 0
    bound = rel * np.abs(x[kept]) + 2.0**-25 if rel else np.abs(x[kept]).max() / 254 + 1e-9
    assert np.all(np.abs(y[kept] - x[kept]) <= bound)
    assert np.all(y[~kept] == 0)


def test_integer_buffers_and_batchnorm_statistics_pass_through():
    u = make_update()
    for codec in (HalfPrecision("fp16"), int8(), qsgd(), terngrad(), TopK(0.01)):
        encoded, out = roundtrip(codec, u)
        assert encoded.delta["bn.num_batches_tracked"] is u.delta["bn.num_batches_tracked"]
        np.testing.assert_array_equal(out.delta["bn.running_var"], u.delta["bn.running_var"])
        assert set(out.delta) == set(u.delta)
        assert out.codec == {} and out.num_examples == 50


def test_codecs_do_not_mutate_their_input():
    u = make_update()
    copies = {k: v.copy() for k, v in u.delta.items()}
    for codec in (HalfPrecision("bf16"), int8(64), qsgd(), terngrad(clip_sigmas=2.5), TopK(0.1, error_feedback=True)):
        codec.encode(u, ctx())
    for k, v in copies.items():
        np.testing.assert_array_equal(u.delta[k], v)


def test_unbiased_attribute():
    assert qsgd().unbiased and terngrad().unbiased
    assert not terngrad(clip_sigmas=2.5).unbiased  # clipping biases TernGrad
    assert not int8().unbiased and not TopK(0.1).unbiased and not HalfPrecision("fp16").unbiased


def test_compressed_sizes():
    u = make_update()
    raw = u.delta["fc.weight"].nbytes
    enc = {c.name: c.encode(u, ctx()) for c in (HalfPrecision("fp16"), int8(), terngrad(), qsgd(4, 512))}
    size = {k: sum(v.nbytes for n, v in e.delta.items() if n.startswith("fc.weight::")) for k, e in enc.items()}
    assert size["fp16"] == raw // 2
    assert size["int8"] == raw // 4 + 4
    assert size["terngrad"] <= raw // 16 + 4  # 2 bits a value, or fewer when sent sparsely
    assert size["qsgd"] == raw // 8 + 4 * -(-u.delta["fc.weight"].size // 512)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bits_roundtrip(bits):
    v = np.random.default_rng(bits).integers(0, 2**bits, size=1001).astype(np.uint8)
    packed = pack_bits(v, bits)
    assert packed.nbytes == -(-v.size * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, v.size), v)


def test_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.14159], dtype=np.float32)
    y = from_bf16(to_bf16(x))
    np.testing.assert_array_equal(y[:4], [1.0, 1.0, 1.0 + 4 * 2**-8, -2.5])  # ties go to even
    assert abs(y[4] - x[4]) <= 2**-8 * abs(x[4])


@pytest.mark.parametrize("idx, n, kind, nbytes", [
    (np.sort(np.random.default_rng(0).choice(100_000, 3000, replace=False)), 100_000, "varint", 3000),
    (np.arange(0, 200_000, 20_000), 200_000, "gaps", 20),  # 20k gaps: 3-byte varints, 2-byte uint16
    (np.arange(0, 1000, 2), 1000, "mask", 125),
    (np.array([2**29, 2**30, 2**30 + 2**29]), 2**31, "int32", 12),  # 5-byte varints
])
def test_index_encodings_pick_the_smallest(idx, n, kind, nbytes):
    arrays, meta = encode_indices(idx, n)
    assert meta["index"] == kind
    assert sum(a.nbytes for a in arrays.values()) <= nbytes + (idx.size // 4 if kind == "varint" else 0)
    np.testing.assert_array_equal(decode_indices(arrays, meta, n), idx)


def test_varints_roundtrip_and_refuse_truncation():
    v = np.array([0, 1, 127, 128, 16383, 16384, 2**21, 2**28 + 5, 2**35 - 1])
    enc = varint_encode(v)
    assert enc.size == 1 + 1 + 1 + 2 + 2 + 3 + 4 + 5 + 5
    np.testing.assert_array_equal(varint_decode(enc, v.size), v)
    with pytest.raises(ProtocolError):
        varint_decode(enc[:-1], v.size)


def test_malformed_messages_are_protocol_errors():
    u = make_update()
    codec = TopK(0.05)
    enc = codec.encode(u, ctx())
    with pytest.raises(ProtocolError):
        codec.decode(u)  # not encoded
    bad = dict(enc.delta)
    del bad["fc.weight::v"]
    with pytest.raises(ProtocolError):
        codec.decode(enc.with_(delta=bad))
    q = int8().encode(u, ctx())
    short = {**q.delta, "fc.weight::q": q.delta["fc.weight::q"][:10]}
    with pytest.raises(ProtocolError):
        int8().decode(q.with_(delta=short))
    too_many = TopK(0.5).encode(u, ctx())
    with pytest.raises(ProtocolError, match="at most"):
        TopK(0.05).decode(too_many.with_(codec={"topk": too_many.codec["topk"]}))


def test_scaled_sign_keeps_signs_and_block_mean_magnitude():
    u = make_update()
    codec = ScaledSign(block=100, error_feedback=False)
    enc, out = roundtrip(codec, u)
    x, y = u.delta["fc.weight"].reshape(-1), out.delta["fc.weight"].reshape(-1)
    assert np.all((y >= 0) == (x >= 0))
    np.testing.assert_allclose(np.abs(y).reshape(-1, 100).mean(axis=1), np.abs(x).reshape(-1, 100).mean(axis=1), rtol=1e-5)
    assert enc.delta["fc.weight::q"].nbytes == x.size // 8 and enc.delta["fc.weight::scale"].size == x.size // 100
    b = out.delta["fc.bias"]  # 7 values, one partial block: the mean is over the real values only
    np.testing.assert_allclose(np.abs(b).mean(), np.abs(u.delta["fc.bias"]).mean(), rtol=1e-6)
    assert not codec.unbiased
