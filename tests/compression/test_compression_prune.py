"""Client-side pruning (mask round trip), downlink compression and autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollen.client.trainer import autocast
from pollen.compression import Downlink, Prune
from pollen.compression.downlink import decode_model, encode_model
from pollen.errors import ConfigError, ProtocolError
from pollen.serialization import reply_from_bytes, reply_to_bytes, task_from_bytes, task_to_bytes
from pollen.transforms.base import Pipeline, StepContext
from pollen.types import Reply, RoundConfig, Task, Update


def setup(seed: int = 0):
    rng = np.random.default_rng(seed)
    glob = {"conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
            "fc.weight": rng.standard_normal((20, 30)).astype(np.float32),
            "fc.bias": rng.standard_normal(20).astype(np.float32),
            "steps": np.array(5, dtype=np.int64)}
    delta = {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32) if v.dtype == np.float32 else np.array(1)
             for k, v in glob.items()}
    return glob, Update(delta, 10)


def through_wire(update: Update) -> Update:
    return reply_from_bytes(reply_to_bytes(Reply("1", "fit", 2, update=update))).update


@pytest.mark.parametrize("method", ["magnitude", "channel"])
def test_pruned_update_rebuilds_the_pruned_local_model(method):
    glob, u = setup()
    step = Prune(method, 0.5)
    enc = step.encode(u, StepContext("1", 2, np.random.default_rng(0), {}, glob))
    out = step.decode_against(through_wire(enc), glob)
    for name in ("conv.weight", "fc.weight"):
        local = glob[name] + u.delta[name]
        rebuilt = glob[name] + out.delta[name]
        zero = rebuilt == 0
        np.testing.assert_allclose(rebuilt[~zero], local[~zero], rtol=1e-6, atol=1e-6)
        if method == "magnitude":
            assert zero.sum() == local.size // 2
            assert np.abs(local[zero]).max() <= np.abs(local[~zero]).min()
        else:  # whole output channels, the ones with the smallest norm
            rows = zero.reshape(zero.shape[0], -1)
            assert set(rows.all(axis=1)) | set(~rows.any(axis=1)) <= {True, False}
            assert rows.all(axis=1).sum() == zero.shape[0] // 2
            norms = np.linalg.norm(local.reshape(local.shape[0], -1), axis=1)
            assert norms[rows.all(axis=1)].max() <= norms[~rows.all(axis=1)].min()
    np.testing.assert_array_equal(out.delta["fc.bias"], u.delta["fc.bias"])  # 1-D: sent whole
    assert out.delta["steps"] == u.delta["steps"]


def test_masks_are_compact():
    glob, u = setup()
    enc = Prune("magnitude", 0.5).encode(u, StepContext("1", 2, np.random.default_rng(0), {}, glob))
    n = glob["fc.weight"].size
    assert enc.delta["fc.weight::mask"].nbytes == n // 8  # one bit per weight
    ch = Prune("channel", 0.5).encode(u, StepContext("1", 2, np.random.default_rng(0), {}, glob))
    assert ch.delta["fc.weight::ch"].nbytes == 3  # 20 channels → 3 bytes
    assert ch.delta["fc.weight::v"].size == n // 2


def test_pruned_update_needs_the_global_model():
    glob, u = setup()
    step = Prune()
    enc = step.encode(u, StepContext("1", 2, np.random.default_rng(0), {}, glob))
    with pytest.raises(ProtocolError, match="global model"):
        Pipeline((step,)).decode(enc)
    wrong = {**glob, "fc.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(ProtocolError):
        step.decode_against(enc, wrong)


@pytest.mark.parametrize("kind, rel", [("fp16", 2.0**-11), ("bf16", 2.0**-8), ("int8", None)])
def test_downlink_model_roundtrip(kind, rel):
    glob, _ = setup()
    sent = encode_model(glob, kind, block=16)
    task = task_from_bytes(task_to_bytes(Task("1", "fit", 1, sent, RoundConfig())))
    got = decode_model(task.state, kind, block=16)
    assert set(got) == set(glob) and got["steps"] == glob["steps"]
    for name in ("conv.weight", "fc.weight", "fc.bias"):
        x, y = glob[name], got[name]
        assert y.shape == x.shape and y.dtype == np.float32
        if rel:
            assert np.all(np.abs(y - x) <= rel * np.abs(x) + 2.0**-25)
        else:  # int8: half a step of each block's max-abs scale
            blocks = np.abs(x.reshape(-1))
            bound = np.repeat([b.max() / 254 for b in np.array_split(blocks, range(16, blocks.size, 16))], 16)[: x.size]
            assert np.all(np.abs(y - x).reshape(-1) <= bound + 1e-7)
    ratio = sum(v.nbytes for v in glob.values()) / sum(v.nbytes for v in sent.values())
    assert ratio > (1.9 if kind != "int8" else 3.0)


def test_downlink_step_tells_parties_how_to_decode():
    glob, _ = setup()
    step = Downlink("int8", 0)
    config = Pipeline((step,)).configure(RoundConfig())
    assert config.extra["downlink"] == {"kind": "int8", "block": 0}
    sent = Pipeline((step,)).encode_model(glob, config)
    got = Pipeline((Downlink("int8", 0),)).decode_model(sent, config)
    assert np.abs(got["fc.weight"] - glob["fc.weight"]).max() <= np.abs(glob["fc.weight"]).max() / 254 + 1e-7
    with pytest.raises(ProtocolError):
        decode_model({"fc.weight::v": sent["fc.weight::v"]}, "int8")  # scales missing


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_context(name, dtype):
    lin = torch.nn.Linear(4, 3)
    with autocast(RoundConfig(extra={"autocast": name})):
        out = lin(torch.randn(2, 4))
    assert out.dtype == dtype
    with autocast(RoundConfig()):
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ConfigError):
        autocast(RoundConfig(extra={"autocast": "fp8"}))


def test_autocast_training_through_the_config(digits_cfg):
    from pollen.simulation import simulate

    result = simulate(digits_cfg(compression={"autocast": "bf16"}, federation={"rounds": 2}, simulation={"threads": 1}))
    assert result.history[-1]["accuracy"] > 0.2


def test_grpc_checks_plain_replies_against_a_compressed_downlink():
    from pollen.transport.rpc.messages import _check_delta

    glob, u = setup()
    step = Downlink("int8", 0)
    config = step.configure(RoundConfig())
    task = Task("1", "fit", 1, step.encode_model(glob, config), config)
    plain = {k: (v if v.dtype != np.float32 else np.zeros_like(v)) for k, v in glob.items()}
    _check_delta(plain, task, {})  # the reply's layout is the decoded model's
    with pytest.raises(ProtocolError):
        _check_delta({**plain, "fc.weight": np.zeros((2, 2), np.float32)}, task, {})
