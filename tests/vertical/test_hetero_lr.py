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

from pollen.vertical.hetero_lr import C_BITS, margin_poly, reference_fit, sigmoid_poly  # noqa: E402
from pollen.vertical.paillier import PrivateKey, fixed_point  # noqa: E402
from pollen.vertical.run import simulate_vertical  # noqa: E402

KEY_BITS = 512
DEFAULTS = {"epochs": 10, "lr": 0.2, "batch_size": 32, "lr_decay": 0.9, "l2": 0.0, "approx": "margin5", "approx_range": 32.0,
            "approx_low": 2.0}  # what `pollen vertical simulate --model lr` trains with no flags


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


@pytest.mark.parametrize("parties,approx", [(2, "poly5"), (3, "poly5"), (2, "margin5"), (3, "margin5")])
def test_polynomial_sigmoid_protocol_equals_plaintext_algorithm(tmp_path, parties, approx):
    """The powers' chain (host 1 → host 2 → guest) and the guest's label-signed coefficients
    compute the plaintext algorithm, L2 term included."""
    r = simulate_vertical(model="lr", parties=parties, key_bits=KEY_BITS, epochs=2, lr=0.1, batch_size=64, l2=0.01,
                          lr_decay=0.9, approx=approx, name=f"poly{parties}", runs_dir=str(tmp_path), progress=False)
    xtr, ytr, _, _ = _joined(r)
    want = reference_fit(xtr, ytr, epochs=2, lr=0.1, batch_size=64, l2=0.01, lr_decay=0.9, approx=approx,
                         approx_range={"poly5": 8.0, "margin5": 32.0}[approx])
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
    a = margin_poly("poly5")  # the same polynomial in the margin form d = s·g(s·u): g(m) = c(m) − ½
    np.testing.assert_allclose(a, [-0.5, c[1], 0.0, c[3], 0.0, c[5]], rtol=0, atol=2.0**-C_BITS)


def test_margin_poly_follows_the_logistic_derivative_where_the_margins_are():
    a = margin_poly("margin5")
    assert len(a) == 6 and a[5] > 0  # beyond the range, scores are pulled back, not pushed out
    assert np.all(a * 2.0**C_BITS == np.rint(a * 2.0**C_BITS))  # exact in the protocol's fixed point
    m = np.linspace(-2, 32, 341)
    g = np.polynomial.polynomial.polyval(m, a)
    assert np.abs(g - (1 / (1 + np.exp(-m)) - 1)).max() < 0.1
    assert np.abs(g - (1 / (1 + np.exp(-m)) - 1))[m >= 0].max() < 0.05  # correct rows: close to logistic regression's pull
    assert np.polynomial.polynomial.polyval(-8.0, a) < -1  # a badly wrong row still pushes its score the right way
    odd = np.polynomial.polynomial.polyval(m, margin_poly("poly5"))
    assert np.abs(odd - (1 / (1 + np.exp(-m)) - 1)).max() > 0.5  # the odd fit on [-8, 8] cannot follow it to 32
    with pytest.raises(ValueError, match="taylor"):
        margin_poly("taylor")


def test_paillier_scale_by_signed_integers():
    key = PrivateKey(KEY_BITS)
    pub = key.public
    m = [5, 7, 11]
    got = key.decrypt(pub.scale([3, -2, 0], pub.encrypt(m)))
    assert pub.decode(got, 0).tolist() == [15.0, -14.0, 0.0]


def test_encrypted_protocol_equals_plaintext_algorithm(tmp_path):
    """FATE's Taylor residual (approx = taylor), with the L2 term."""
    r = simulate_vertical(model="lr", parties=2, key_bits=KEY_BITS, epochs=3, lr=0.1, batch_size=32, l2=0.01,
                          lr_decay=0.8, approx="taylor", name="eq", runs_dir=str(tmp_path), progress=False)
    xtr, ytr, _, _ = _joined(r)
    want = reference_fit(xtr, ytr, epochs=3, lr=0.1, batch_size=32, l2=0.01, lr_decay=0.8)
    guest, host = r.parties["0"].lr.w, r.parties["1"].lr.w
    got = np.concatenate([guest[:-1], host, guest[-1:]])  # joined columns, then the intercept
    np.testing.assert_allclose(got, want, atol=5e-5)  # fixed point: features at 2^-20
    assert np.abs(want).max() > 0.05  # it trained


@pytest.mark.parametrize("parties", [2, 3])
def test_accuracy_against_sklearn_on_the_joined_data(tmp_path, parties):
    """With the defaults (margin5) the vertical model is the plaintext algorithm (equal weights, same
    predictions on the held-out rows) and scores what scikit-learn's LogisticRegression scores on
    the same joined rows. The issue's 0.5-point target is checked where 0.5 points is resolvable:
    5-fold cross-validation over all 569 rows, `benchmarks/bench_vertical.py --only cv`
    (benchmarks/RESULTS.md); one held-out split of 142 rows has 0.7-point steps."""
    from sklearn.linear_model import LogisticRegression

    r = simulate_vertical(model="lr", parties=parties, key_bits=KEY_BITS, name=f"acc{parties}", runs_dir=str(tmp_path),
                          progress=False)
    v = r.parties["0"].lr
    assert v.degree == 5 and v.lr == DEFAULTS["lr"]  # the defaults are margin5 at lr 0.2
    assert r.summary["aligned"] == 569 and r.summary["psi"]  # every row found by PSI, across shuffled row orders
    xtr, ytr, xte, yte = _joined(r)
    w = reference_fit(xtr, ytr, **DEFAULTS)
    got = [r.parties[str(i)].lr.w for i in range(parties)]
    np.testing.assert_allclose(np.concatenate([got[0][:-1], *got[1:], got[0][-1:]]), w, atol=5e-5)
    plain_acc = float((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).mean())
    vertical_acc = r.history[-1]["accuracy"]
    assert vertical_acc == pytest.approx(plain_acc, abs=1e-12)
    sk = LogisticRegression(max_iter=5000).fit(xtr, ytr)
    sk_acc = float((sk.predict(xte) == yte).mean())
    assert vertical_acc >= sk_acc - 1e-9, (vertical_acc, sk_acc)
    assert len(r.history) == DEFAULTS["epochs"] and all(h["bytes_up"] > 0 and h["seconds"] > 0 for h in r.history)
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
