"""Gradient inversion: near-exact reconstruction of one record from a plain update; noise defeats it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollen.attacks import inversion
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.data import load_dataset
from pollen.models import build_model
from pollen.types import RoundConfig


@pytest.fixture(scope="module")
def setup():
    ds = load_dataset("digits", None)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    start = state_to_numpy(model)
    x, y = torch.from_numpy(ds.x_train[:1]), torch.from_numpy(ds.y_train[:1])
    update = Trainer(model).fit(start, (x, y), RoundConfig(lr=0.05, batch_size=1), torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    return model, start, names, update.delta, x, y, float(ds.x_train.max() - ds.x_train.min())


def _attack(setup, delta):
    model, start, names, _, x, y, data_range = setup
    target = inversion.observed_gradient(delta, 0.05, names)
    params = {n: torch.from_numpy(start[n]) for n in names}
    rec = inversion.invert_gradient(model, params, target, (1, 8, 8), 1, None, 300, torch.Generator().manual_seed(0))
    return inversion.psnr(rec.images, x, data_range), rec


def test_plain_update_leaks_the_record(setup):
    *_, delta, x, y, _ = setup
    score, rec = _attack(setup, delta)
    assert rec.labels_inferred and int(rec.labels[0]) == int(y[0])  # iDLG label
    assert score > 30, score


def test_dp_noise_defeats_the_attack(setup):
    _, _, names, delta, *_ = setup
    c = float(np.sqrt(sum((delta[n] ** 2).sum() for n in names)))
    rng = np.random.default_rng(0)
    noisy = {n: (delta[n] + rng.normal(0, 0.1 * c, delta[n].shape)).astype(np.float32) for n in names}
    score, _ = _attack(setup, noisy)
    assert score < 12, score


def test_psnr_and_label_inference():
    x = torch.zeros(1, 1, 4, 4)
    assert inversion.psnr(x + 0.1, x, 1.0) == pytest.approx(20.0)
    assert inversion.infer_label(torch.tensor([0.1, -0.9, 0.3, 0.5])) == 1
