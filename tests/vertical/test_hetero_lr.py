"""Hetero logistic regression with Paillier: the encrypted protocol computes exactly the plaintext
algorithm, and its accuracy matches scikit-learn's logistic regression on the joined data.

Keys of 512 bits keep the tests fast (2048 bits is the default and what the benchmark measures;
the arithmetic is the same).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("phe", reason="the vertical extra (phe) is not installed")
pytest.importorskip("rbcl", reason="the vertical extra (rbcl) is not installed")

from pollen.vertical.hetero_lr import reference_fit, sigmoid_poly  # noqa: E402
from pollen.vertical.paillier import PrivateKey, fixed_point  # noqa: E402
from pollen.vertical.run import simulate_vertical  # noqa: E402

KEY_BITS = 512
SETTINGS = {"epochs": 10, "lr": 0.05, "batch_size": 32, "lr_decay": 0.9, "l2": 0.0}


def test_paillier_fixed_point_sums_and_products():
    key = PrivateKey(KEY_BITS)
    pub = key.public
    rng = np.random.default_rng(0)
    m = rng.normal(size=7) * 10
    x = rng.normal(size=(7, 3)) * 3
    enc = pub.encrypt(pub.encode(m, 20))
    dot = pub.dot(fixed_point(x, 8), enc)
    got = pub.decode(key.decrypt(dot), 28)
    np.testing.assert_allclose(got, np.rint(x * 256).T @ (np.rint(m * 2**20)) / 2**28, rtol=0, atol=1e-9)
    bound = np.abs(m).sum() * 2.0**-9 + np.abs(x).sum(axis=0) * 2.0**-21 * 1.01  # rounding of x at 2^-8, m at 2^-20
    assert (np.abs(got - x.T @ m) <= bound).all()
    masks = pub.random_masks(3)
    masked = key.decrypt(pub.add(dot, pub.encrypt(masks)))
    unmasked = pub.decode([(v - r) % pub.n for v, r in zip(masked, masks)], 28)
    np.testing.assert_allclose(unmasked, got)
    arr = pub.ciphers_to_array(enc)
    assert arr.shape == (7, pub.cipher_bytes) and pub.ciphers_from_array(arr) == enc


def _joined(result):
    """The aligned, standardised training and held-out rows of every feature holder, as the parties hold them."""
    parties = result.parties
    holders = sorted((p for p in parties.values() if p.role != "arbiter"), key=lambda p: int(p.party_id))
    xtr = np.hstack([p.x_train for p in holders]).astype(np.float64)
    xte = np.hstack([p.x_test for p in holders]).astype(np.float64)
    guest = holders[0]
    return xtr, guest.y_train, xte, guest.y_test


@pytest.mark.parametrize("parties", [2, 3])
def test_polynomial_sigmoid_protocol_equals_plaintext_algorithm(tmp_path, parties):
    """The powers' chain (host 1 → host 2 → guest) computes the plaintext poly5 algorithm."""
    r = simulate_vertical(model="lr", parties=parties, key_bits=KEY_BITS, epochs=2, lr=0.1, batch_size=64, l2=0.01,
                          lr_decay=0.9, approx="poly5", approx_range=8.0, name=f"poly{parties}", runs_dir=str(tmp_path), progress=False)
    xtr, ytr, _, _ = _joined(r)
    want = reference_fit(xtr, ytr, epochs=2, lr=0.1, batch_size=64, l2=0.01, lr_decay=0.9, approx="poly5",
                         approx_range=8.0)
    w = [r.parties[str(i)].lr.w for i in range(parties)]
    got = np.concatenate([w[0][:-1], *w[1:], w[0][-1:]])
    np.testing.assert_allclose(got, want, atol=5e-5)
    taylor = reference_fit(xtr, ytr, epochs=2, lr=0.1, batch_size=64, l2=0.01, lr_decay=0.9)
    assert np.abs(got - taylor).max() > 1e-2  # a different algorithm from Taylor's, not the same one relabelled


def test_sigmoid_poly_fits_the_sigmoid_and_pulls_back_outside_its_range():
    z = np.linspace(-8, 8, 101)
    c = sigmoid_poly(5, 8.0)
    assert sorted(c) == [1, 3, 5] and c[5] > 0  # positive leading term: σ̃(u) − y pulls large |u| back
    assert np.abs(0.5 + sum(ck * z**k for k, ck in c.items()) - 1 / (1 + np.exp(-z))).max() < 0.07


def test_paillier_scale_by_signed_integers():
    key = PrivateKey(KEY_BITS)
    pub = key.public
    m = [5, 7, 11]
    got = key.decrypt(pub.scale([3, -2, 0], pub.encrypt(m)))
    assert pub.decode(got, 0).tolist() == [15.0, -14.0, 0.0]


def test_encrypted_protocol_equals_plaintext_algorithm(tmp_path):
    r = simulate_vertical(model="lr", parties=2, key_bits=KEY_BITS, epochs=3, lr=0.1, batch_size=32, l2=0.01,
                          lr_decay=0.8, name="eq", runs_dir=str(tmp_path), progress=False)
    xtr, ytr, _, _ = _joined(r)
    want = reference_fit(xtr, ytr, epochs=3, lr=0.1, batch_size=32, l2=0.01, lr_decay=0.8)
    guest, host = r.parties["0"].lr.w, r.parties["1"].lr.w
    got = np.concatenate([guest[:-1], host, guest[-1:]])  # joined columns, then the intercept
    np.testing.assert_allclose(got, want, atol=5e-5)  # fixed point: features at 2^-20
    assert np.abs(want).max() > 0.05  # it trained


@pytest.mark.parametrize("parties", [2, 3])
def test_accuracy_against_sklearn_on_the_joined_data(tmp_path, parties):
    """The vertical model is the plaintext Taylor-loss model (same predictions on the held-out rows);
    against scikit-learn's LogisticRegression on the same joined rows the Taylor approximation
    costs about a point on breast cancer (5-fold: 96.7 % vs 97.9 %, benchmarks/RESULTS.md), so
    the issue's 0.5-point target is not met: here the gap is bounded at 3 of the 142 held-out rows."""
    from sklearn.linear_model import LogisticRegression

    r = simulate_vertical(model="lr", parties=parties, key_bits=KEY_BITS, name=f"acc{parties}", runs_dir=str(tmp_path),
                          progress=False, **SETTINGS)
    assert r.summary["aligned"] == 569 and r.summary["psi"]  # every row found by PSI, across shuffled row orders
    xtr, ytr, xte, yte = _joined(r)
    w = reference_fit(xtr, ytr, **SETTINGS)
    plain_acc = float((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).mean())
    vertical_acc = r.history[-1]["accuracy"]
    assert vertical_acc == pytest.approx(plain_acc, abs=1e-12)
    sk = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    sk_acc = float((sk.predict(xte) == yte).mean())
    assert abs(vertical_acc - sk_acc) <= 3 / len(yte) + 1e-9, (vertical_acc, sk_acc)
    assert vertical_acc > 0.93
    assert len(r.history) == SETTINGS["epochs"] and all(h["bytes_up"] > 0 and h["seconds"] > 0 for h in r.history)
    report = (r.run_dir / "report.md").read_text()
    assert "vertical-lr" in report
    assert sorted(p.name for p in r.run_dir.glob("model-*.safetensors")) == [f"model-{i}.safetensors" for i in range(parties)]


def test_psi_aligns_parties_missing_rows(tmp_path):
    r = simulate_vertical(model="lr", parties=3, key_bits=KEY_BITS, epochs=1, drop=0.1, name="drop",
                          runs_dir=str(tmp_path), progress=False)
    ids = {pid: {p.table.ids[i] for i in p.rows} for pid, p in r.parties.items() if p.role != "arbiter"}
    full = [set(p.table.ids) for p in r.parties.values() if p.role != "arbiter"]
    assert ids["0"] == ids["1"] == ids["2"] == set.intersection(*full)
    order = [[p.table.ids[i] for i in p.rows] for p in r.parties.values() if p.role != "arbiter"]
    assert order[0] == order[1] == order[2]
    assert r.summary["aligned"] == len(set.intersection(*full)) < 569
