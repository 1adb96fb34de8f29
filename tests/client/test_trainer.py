import numpy as np
import torch

from pollen.client import Trainer, state_to_numpy
from pollen.models import build_model
from pollen.types import RoundConfig


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", (8,), 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return Trainer(model), state_to_numpy(model), x, y


def test_fit_returns_delta_and_leaves_global_untouched():
    tr, g, x, y = _setup()
    before = {k: v.copy() for k, v in g.items()}
    u = tr.fit(g, (x, y), RoundConfig(epochs=2, lr=0.1, batch_size=16), torch.Generator().manual_seed(0))
    assert u.num_examples == 64 and u.metrics["steps"] == 8
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])
    local = state_to_numpy(tr.model)
    for k in g:
        np.testing.assert_allclose(g[k] + u.delta[k], local[k], rtol=1e-6, atol=1e-6)
    assert any(np.abs(d).max() > 0 for d in u.delta.values())


def test_same_seed_same_update_and_training_helps():
    tr, g, x, y = _setup()
    cfg = RoundConfig(epochs=20, lr=0.2, batch_size=16)
    a = tr.fit(g, (x, y), cfg, torch.Generator().manual_seed(3))
    b = tr.fit(g, (x, y), cfg, torch.Generator().manual_seed(3))
    for k in a.delta:
        np.testing.assert_array_equal(a.delta[k], b.delta[k])
    before = tr.evaluate(g, (x, y))
    after = tr.evaluate({k: g[k] + a.delta[k] for k in g}, (x, y))
    assert after.loss < before.loss and after.accuracy > before.accuracy


def test_fedprox_term_pulls_toward_global():
    tr, g, x, y = _setup()
    cfg = RoundConfig(epochs=5, lr=0.2, batch_size=16)
    free = tr.fit(g, (x, y), cfg, torch.Generator().manual_seed(3))
    prox = tr.fit(g, (x, y), cfg.with_(proximal_mu=5.0), torch.Generator().manual_seed(3))
    norm = lambda u: np.sqrt(sum(float((d**2).sum()) for d in u.delta.values()))  # noqa: E731
    assert norm(prox) < norm(free)


def test_shared_names_limit_the_delta():
    tr, g, x, y = _setup()
    names = tuple(k for k in g if not k.startswith("head"))
    u = tr.fit(g, (x, y), RoundConfig(shared_names=names), torch.Generator().manual_seed(0))
    assert set(u.delta) == set(names)
