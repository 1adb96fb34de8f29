"""FEMNIST by writer from files written in LEAF's JSON format and in TensorFlow Federated's .h5
format; the two presets (the TFF seed's settings, the recipe) run on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pollen
from pollen.config import load_toml
from pollen.data import load_dataset
from pollen.data.partition import natural
from pollen.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WRITERS = {"f0000_14": 5, "f0001_41": 3, "f0002_07": 4}


def _images(rng, n, label):
    """n 28×28 images in [0, 1] with background 1.0 (both formats' convention) and a dark stroke."""
    x = np.ones((n, 28, 28), dtype=np.float32)
    x[:, 4:24, 10 + label % 8] = 0.0  # the "ink": a vertical line whose place depends on the label
    return np.clip(x - rng.uniform(0, 0.05, x.shape).astype(np.float32), 0, 1)


def _write_leaf(root: Path, classes: int = 62) -> dict:
    rng = np.random.default_rng(0)
    made = {}
    for split, scale in (("train", 1), ("test", 1)):
        (root / split).mkdir(parents=True)
        for part, users in enumerate((list(WRITERS)[:2], list(WRITERS)[2:])):  # two files, as LEAF writes them
            blob = {"users": users, "num_samples": [], "user_data": {}}
            for u in users:
                n = WRITERS[u] * scale
                y = rng.integers(0, classes, n)
                x = np.concatenate([_images(rng, 1, int(c)) for c in y]).reshape(n, 784)
                blob["num_samples"].append(n)
                blob["user_data"][u] = {"x": x.round(4).tolist(), "y": y.tolist()}
                made[(split, u)] = (x, y)
            (root / split / f"all_data_{part}_niid_1_keep_0_{split}_9.json").write_text(json.dumps(blob))
    return made


def _write_tff(root: Path, digits: bool = False) -> dict:
    import h5py  # the 'femnist' extra (in 'dev')
    rng = np.random.default_rng(1)
    names = ("fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5") if digits else (
        "fed_emnist_train.h5", "fed_emnist_test.h5")
    made = {}
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        with h5py.File(root / name, "w") as f:
            for client, n in WRITERS.items():
                y = rng.integers(0, 10 if digits else 62, n).astype(np.int32)
                x = np.concatenate([_images(rng, 1, int(c)) for c in y])
                g = f.create_group(f"examples/{client}")
                g.create_dataset("pixels", data=x)
                g.create_dataset("label", data=y)
                made[(name, client)] = (x, y)
    return made


def _check(ds, made, split_of):
    n_train = sum(len(v[1]) for k, v in made.items() if split_of(k) == "train")
    assert ds.x_train.shape == (n_train, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-3  # standardised
    # inverted to white ink on black: the stroke is now the brightest column of every image
    brightest_col = ds.x_train[:, 0, 4:24, :].mean(axis=1).argmax(axis=1)
    assert np.array_equal(brightest_col, 10 + ds.y_train % 8)
    assert ds.groups_train is not None and len(np.unique(ds.groups_train)) == len(WRITERS)
    sizes = sorted(np.bincount(ds.groups_train).tolist())
    assert sizes == sorted(WRITERS.values())
    parts = natural(ds.groups_train, len(WRITERS), 0)  # one writer per party
    assert sorted(len(p) for p in parts) == sorted(WRITERS.values())


def test_leaf_json_by_writer(tmp_path):
    made = _write_leaf(tmp_path / "data")
    ds = load_dataset("femnist", tmp_path / "data")
    assert ds.num_classes == 62
    _check(ds, made, lambda k: k[0])
    order = [u for u in WRITERS]  # users in file order; examples keep their writer's labels
    expect = np.concatenate([made[("train", u)][1] for u in order])
    assert np.array_equal(ds.y_train, expect)


@pytest.mark.parametrize("digits", [False, True], ids=["62-classes", "digits-only"])
def test_tff_h5_by_writer(tmp_path, digits):
    made = _write_tff(tmp_path / "tff", digits)
    ds = load_dataset("femnist", tmp_path / "tff")
    assert ds.num_classes == (10 if digits else 62)
    _check(ds, made, lambda k: "train" if "train" in k[0] else "test")
    assert len(ds.y_test) == sum(WRITERS.values())


def test_malformed_files_are_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.json").write_text('{"users": ["u"], "user_data": {"u": {"x": [[0.5, 0.5]], "y": [1]}}}')
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"a\.json.*\(n, 784\)"):
        load_dataset("femnist", tmp_path)
    (tmp_path / "train" / "a.json").write_text("not json")
    with pytest.raises(DataError, match="not a LEAF FEMNIST file"):
        load_dataset("femnist", tmp_path)


@pytest.mark.parametrize("preset", ["femnist-tff-seed.toml", "femnist.toml"])
def test_presets_run_on_tff_files(tmp_path, preset):
    _write_tff(tmp_path / "tff")
    cfg = load_toml(EXAMPLES / preset)
    cfg["data"].update(parties=3, data_dir=str(tmp_path / "tff"))
    cfg["federation"].update(rounds=2, parties_per_round=2, eval_every=1)
    result = pollen.simulate(cfg, runs_dir=str(tmp_path / "runs"), name="p", progress=False, threads=1)
    assert [r["round"] for r in result.history] == [1, 2]
    assert all(len(r["parties"]) == 2 for r in result.history)
    assert 0.0 <= result.history[-1]["accuracy"] <= 1.0
