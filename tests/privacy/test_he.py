"""CKKS homomorphic encryption: the aggregate equals the plain sum, the server holds no secret key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

ts = pytest.importorskip("tenseal")

from pollen.client.party import LocalParty, PartyTables, Shard  # noqa: E402
from pollen.errors import ConfigError, PrivacyError  # noqa: E402
from pollen.privacy import he  # noqa: E402
from pollen.privacy.he_step import CKKSEncrypt, task_handlers  # noqa: E402
from pollen.strategy.base import WeightedMean  # noqa: E402
from pollen.transforms.base import Pipeline, StepContext, check_pipeline  # noqa: E402
from pollen.transport.inprocess import InProcessTransport  # noqa: E402
from pollen.types import Update  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A full key directory (parties) and a server directory holding no secret.ctx at all."""
    root = tmp_path_factory.mktemp("he")
    he.write_keys(root / "party", scale_bits=36)
    server = root / "server"
    server.mkdir()
    for name in (he.PUBLIC_FILE, he.INFO_FILE):
        shutil.copy(root / "party" / name, server / name)
    return root / "party", server


def _updates(rng: np.random.Generator, parties: int) -> list[Update]:
    shapes = {"conv.weight": (8, 1, 5, 5), "conv.bias": (8,), "fc.weight": (10, 1200), "fc.bias": (10,)}
    return [Update({k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()},
                   num_examples=int(rng.integers(20, 700))) for _ in range(parties)]


def _transport(party_keys, ids):
    step = CKKSEncrypt(party_keys)
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    tables = PartyTables(task_handlers=task_handlers())
    parties = {pid: LocalParty(pid, Shard(x, y), trainer=None, pipeline=Pipeline((step,)), tables=tables) for pid in ids}
    return step, InProcessTransport(parties)


def _encrypt(step, updates, ids):
    ctx = [StepContext(pid, 1, np.random.default_rng(0)) for pid in ids]
    return [step.encode(u, c) for u, c in zip(updates, ctx)]


def test_encrypted_aggregate_equals_plain_weighted_mean(keys):
    party_keys, server_keys = keys
    ids = [str(i) for i in range(5)]
    updates = _updates(np.random.default_rng(1), len(ids))
    party_step, transport = _transport(party_keys, ids)
    encrypted = _encrypt(party_step, updates, ids)
    assert all(set(u.delta) == {he.DATA_KEY, he.OFFSETS_KEY} and u.delta[he.DATA_KEY].dtype == np.uint8 for u in encrypted)
    # 12,218 values → 3 ciphertexts of 4,096 slots
    assert len(encrypted[0].delta[he.OFFSETS_KEY]) == 4
    server = CKKSEncrypt(server_keys)
    combined = server.combine(encrypted, ids, 1, transport)
    assert len(combined) == 1 and combined[0].num_examples == sum(u.num_examples for u in updates)
    got = WeightedMean().aggregate(combined)
    want = WeightedMean().aggregate(updates)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype
        assert np.max(np.abs(got[k] - want[k])) < 1e-6, k


def test_server_context_has_no_secret_key(keys):
    party_keys, server_keys = keys
    server = CKKSEncrypt(server_keys)
    ctx = server.public_context()
    assert not ctx.has_secret_key() and ctx.is_public()
    assert not (server_keys / he.SECRET_FILE).exists()
    vec = ts.ckks_vector(ctx, [1.0, 2.0])  # encryption needs only the public key …
    with pytest.raises(ValueError):
        vec.decrypt()  # … decryption cannot happen without the secret key
    with pytest.raises(PrivacyError, match="secret key"):
        he.load_context(party_keys / he.SECRET_FILE, secret=False)
    secret = he.load_context(party_keys / he.SECRET_FILE, secret=True)
    with pytest.raises(PrivacyError, match="secret key"):
        he.sum_encrypted(secret, [he.encrypt_vector(secret, np.ones(3), 4096)])


def test_a_round_without_the_secret_on_the_server(keys):
    """The whole combine path runs from a directory with no secret.ctx; only a party decrypts."""
    party_keys, server_keys = keys
    ids = ["a", "b", "c"]
    updates = _updates(np.random.default_rng(2), 3)
    party_step, transport = _transport(party_keys, ids)
    server = CKKSEncrypt(server_keys)
    server.combine(_encrypt(party_step, updates, ids), ids, 7, transport)
    holders = [p for p in transport.parties.values() if "ckks_secret" in p.state]
    assert [p.party_id for p in holders] == ["a"]
    assert all(not hasattr(v, "has_secret_key") or not v.has_secret_key() for v in vars(server).values())


def test_bad_packages_and_overflow_are_refused(keys):
    party_keys, _ = keys
    step = CKKSEncrypt(party_keys)
    u = _updates(np.random.default_rng(3), 1)[0]
    enc = step.encode(u, StepContext("0", 1, np.random.default_rng(0)))
    bad = dict(enc.delta)
    bad[he.OFFSETS_KEY] = bad[he.OFFSETS_KEY] + 1
    with pytest.raises(PrivacyError, match="malformed"):
        he.unpack(bad)
    huge = u.with_(delta={k: v * 1e6 for k, v in u.delta.items()})
    with pytest.raises(PrivacyError, match="CKKS bound"):
        step.encode(huge, StepContext("0", 1, np.random.default_rng(0)))
    with pytest.raises(PrivacyError, match="compressed"):
        step.encode(u.with_(codec={"fp16": {}}), StepContext("0", 1, np.random.default_rng(0)))


def test_median_over_ciphertexts_is_refused(keys):
    with pytest.raises(ConfigError, match="only their sum"):
        check_pipeline(Pipeline((CKKSEncrypt(keys[1]),)), type("A", (), {"name": "median", "linear": False})())


def test_keys_command_and_config(tmp_path, digits_cfg):
    from pollen.cli import main
    from pollen.privacy import steps_from_config

    assert main(["keys", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / he.SECRET_FILE).stat().st_mode & 0o077 == 0
    assert main(["keys", "--out", str(tmp_path / "k")]) == 2  # never overwrites keys
    with pytest.raises(ConfigError, match="pollen keys"):
        steps_from_config(digits_cfg(privacy={"he": True}), "after_compress")
    steps = steps_from_config(digits_cfg(privacy={"he": True, "he_keys": str(tmp_path / "k")}), "after_compress")
    assert [s.name for s in steps] == ["ckks"] and steps[0].stage == "mask"
    with pytest.raises(ConfigError, match="choose one"):
        steps_from_config(digits_cfg(privacy={"he": True, "he_keys": str(tmp_path / "k"), "secagg": True}), "after_compress")


def test_simulation_with_he_matches_plain(tmp_path, digits_cfg):
    from pollen.simulation import simulate

    he.write_keys(tmp_path / "k")
    common = {"federation": {"rounds": 2}, "data": {"dataset": "digits", "parties": 3, "holdout": 0}, "model": {"model": "logreg"}}
    plain = simulate(digits_cfg(**common, run={"name": "plain"}))
    enc = simulate(digits_cfg(**common, run={"name": "he"}, privacy={"he": True, "he_keys": str(tmp_path / "k")}))
    for k, v in plain.state.items():
        assert np.max(np.abs(enc.state[k] - v)) < 1e-5, k
    assert enc.history[-1]["bytes_up"] > 4 * plain.history[-1]["bytes_up"]  # ciphertexts are bigger
    assert enc.history[-1]["he_ciphertexts"] >= 1 and enc.history[-1]["bytes_down"] > plain.history[-1]["bytes_down"]
