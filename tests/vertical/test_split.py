"""Split learning: the gradients every bottom and the top receive are the centralised model's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("rbcl", reason="the vertical extra (rbcl) is not installed")

from pollen.vertical.run import simulate_vertical  # noqa: E402


class Joined(nn.Module):
    """The centralised network: every bottom on its own columns, concatenated, then the top."""

    def __init__(self, bottoms, top, cols):
        super().__init__()
        self.bottoms, self.top, self.cols = nn.ModuleList(bottoms), top, cols

    def forward(self, x):
        return self.top(torch.cat([b(x[:, c]) for b, c in zip(self.bottoms, self.cols)], dim=1))


def _columns(holders):
    cols, start = [], 0
    for p in holders:
        cols.append(list(range(start, start + p.x_train.shape[1])))
        start += p.x_train.shape[1]
    return cols


def test_gradients_equal_the_centralised_models(tmp_path):
    # One epoch of one batch (batch size = every training row), no noise, plain SGD.
    r = simulate_vertical(model="split", parties=3, epochs=1, batch_size=10_000, lr=0.05, test_fraction=0.2,
                          name="grad", runs_dir=str(tmp_path), progress=False)
    holders = [r.parties[str(i)] for i in range(3)]
    # The centralised model from the parties' weights *before* their SGD step (before = after + lr · grad).
    def before(module):
        clone = copy.deepcopy(module)
        with torch.no_grad():
            for q, q0 in zip(clone.parameters(), module.parameters()):
                q.add_(0.05 * q0.grad)
                q.grad = None
        return clone

    bottoms = [before(p.split.bottom) for p in holders]
    top0 = holders[0].split.top
    top = before(top0)
    model = Joined(bottoms, top, _columns(holders))
    x = torch.from_numpy(np.hstack([p.x_train for p in holders]))
    y = torch.from_numpy(holders[0].y_train).float()
    order = np.random.default_rng([0, 1]).permutation(len(x))  # the driver's batch order for epoch 1
    loss = nn.functional.binary_cross_entropy_with_logits(model(x[order]).squeeze(1), y[order])
    loss.backward()
    for p, central in zip(holders, model.bottoms):
        for got, want in zip(p.split.bottom.parameters(), central.parameters()):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)
    for got, want in zip(top0.parameters(), model.top.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)
    assert r.history[0]["train_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)


def test_split_learning_learns_and_noise_reaches_the_activations(tmp_path):
    r = simulate_vertical(model="split", parties=2, epochs=8, batch_size=32, lr=0.3, name="learn",
                          runs_dir=str(tmp_path), progress=False)
    assert r.history[-1]["accuracy"] > 0.93
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    noisy = simulate_vertical(model="split", parties=2, epochs=1, noise=0.5, name="noise", runs_dir=str(tmp_path),
                              progress=False)
    host = noisy.parties["1"]
    from pollen.types import RoundConfig, Task

    batch = np.arange(64, dtype=np.int64)
    sent = host.handle(Task("1", "v.split.forward", 999, {"batch": batch}, RoundConfig())).update.delta["h"]
    clean = host.split.pending.detach().numpy()
    assert 0.4 < float(np.std(sent - clean)) < 0.6  # the noise the host adds before its activations leave it
