"""Hetero (vertical) logistic regression with Paillier encryption, FATE-style.

Hardy et al., "Private federated learning on vertically partitioned data via entity resolution
and additively homomorphic encryption", arXiv:1711.10677, 2017 (the Taylor-approximated loss and
the coordinator holding the key); Yang et al., "Federated Machine Learning: Concept and
Applications", ACM TIST 2019 (the guest/host/arbiter protocol FATE implements).

Parties: the guest G holds labels y ∈ {0, 1} (s = 2y − 1) and columns X_G (plus the intercept);
each host H_j holds columns X_j; the arbiter A holds the Paillier key. With u = Σ_p X_p w_p, the
logistic loss log(1 + e^(−s·u)) is replaced by its second-order Taylor expansion at 0,
log 2 − s·u/2 + u²/8, whose gradient in u is d = (u − 2s)/4. One mini-batch B::

    H_j → G : [[u_j]] = Enc(X_j[B] w_j)                  fresh encryptions (A's public key)
    G   → all: [[e]] = Π_j [[u_j]] · Enc(X_G[B] w_G − 2 s_B)   re-randomised by G's own fresh Enc
    p   → A : [[X_p[B]ᵀ e + r_p]]                          r_p uniform in Z_n, kept by p
    A   → p : X_p[B]ᵀ e + r_p  (decrypted)                  uniform in Z_n to A and to the relay
    p       : g_p = (that − r_p)/(4|B|) + λ w_p;  w_p ← w_p − η g_p

What each party sees: hosts and G see only ciphertexts of each other's values; A sees only
uniformly masked sums; no party sees another's features, weights, gradients or (except G) the
labels. The relay (the coordinator, which should run at the guest or a neutral site, never at
the arbiter's) sees ciphertexts and masked values. Evaluation on the held-out rows is FATE's
prediction: each host sends its partial scores X_j w_j of those rows to the guest in the clear.
Semi-honest parties, and the arbiter must not collude with anyone (docs/vertical.md).

Fixed point: u and e at 2^-32, features at 2^-20, so Xᵀe carries 2^-52; with a 2048-bit modulus
no value comes near n/2.

``approx = "poly5"`` replaces the Taylor line by the odd degree-5 polynomial fitted by least
squares to the sigmoid on [−R, R] (Kim et al., "Logistic regression model training based on the
approximate homomorphic encryption", BMC Med. Genomics 2018; Aono et al., "Privacy-preserving
logistic regression with distributed data sources via homomorphic encryption", IEICE 2016, for
the Paillier-friendly expansion): d = σ̃(u) − y with σ̃(u) = ½ + Σ_k c_k u^k. Degree 5 because its
leading coefficient is positive, so beyond [−R, R] the residual still pulls u back (the degree-3
and degree-7 fits end in a negative term and training diverges: 5-fold accuracy 37 %). Paillier multiplies a
ciphertext only by a plaintext, so the powers of u = u_G + Σ_j u_j are built along a chain: host
1 encrypts its own powers; each next party p, holding [[a^i]] for the running sum a, adds its
own score b with the binomial expansion [[(a + b)^k]] = Σ_i C(k, i) b^(k−i)·[[a^i]] (+ Enc(b^k)),
scalar × ciphertext only; the guest is last and forms [[d]] = Σ_k c_k·[[u^k]] + Enc(½ − y)::

    H_1 → H_2 → … → G : [[a^k]], k = 1 … D                 every step adds fresh encryptions
    G   → all: [[d]] = Σ_k c_k [[u^k]] + Enc(½ − y)

What each party sees is unchanged (ciphertexts under the arbiter's key, masked sums at the
arbiter); the cost is D encryptions per row and party instead of one. Power k travels at
2^-(k·32), d at 2^-(D·32 + 64).

``approx = "margin5"`` (the default) keeps the chain and changes only the guest's last step: the
residual is written in the margin m = s·u (s = 2y − 1) as d = s·g(m), where g(m) = Σ_k a_k m^k,
k = 0 … 5 (every power, not only odd ones), is fitted by least squares to the logistic loss's
derivative σ(m) − 1 on an asymmetric interval [−L, R] (``approx_low``, ``approx_range``; default
[−2, 32]). The guest knows s, so [[d]] = Σ_k (a_k s^(k+1))·[[u^k]] + Enc(a_0 s) is still plaintext ×
ciphertext, with per-row coefficients that only the guest (the label holder) forms. Why: the
scores of a trained logistic regression are lopsided (on breast cancer, right rows reach margins
of 17 at the 99th percentile and up to 30; wrong ones mostly stay above −2, a few reach −4), and the odd fit on [−8, 8] spends its accuracy on the
negative half and grows like m⁵ beyond 8, pulling confidently right rows back (a least-squares-
like bias). The margin fit follows σ − 1 where the margins are; its leading coefficient is
positive, so scores beyond R are still pulled back rather than pushed out. With it the same SGD
reaches the exact sigmoid's accuracy on breast cancer (benchmarks/RESULTS.md). poly5 is the
special case a = (−½, c_1, 0, c_3, 0, c_5).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pollen.errors import ProtocolError
from pollen.types import Task
from pollen.vertical.paillier import PrivateKey, PublicKey, fixed_point

if TYPE_CHECKING:
    from pollen.vertical.driver import Exchange
    from pollen.vertical.party import VerticalParty

U_BITS = 32  # fixed-point bits of u and of the residual e
X_BITS = 20  # fixed-point bits of the features
C_BITS = 64  # fixed-point bits of the polynomial's coefficients (they are rounded to this before use)
APPROX_DEGREE = {"taylor": 1, "poly5": 5, "margin5": 5}  # odd poly3 and poly7 fits end in a negative term: training diverges
APPROX_RANGE = {"taylor": 8.0, "poly5": 8.0, "margin5": 32.0}  # default approx_range of each stand-in


def sigmoid_poly(degree: int, bound: float) -> dict[int, float]:
    """Odd coefficients c_k (k = 1, 3, …, degree) of σ(z) − ½ ≈ Σ c_k z^k, least squares on a
    uniform grid of [−bound, bound] (``approx = "taylor"`` is the expansion at 0 instead: c_1 = ¼)."""
    z = np.linspace(-bound, bound, 4001)
    ks = list(range(1, degree + 1, 2))
    coef = np.linalg.lstsq(np.stack([z**k for k in ks], 1), 1.0 / (1.0 + np.exp(-z)) - 0.5, rcond=None)[0]
    return {k: float(c) for k, c in zip(ks, coef)}


def margin_poly(approx: str, approx_range: float | None = None, approx_low: float = 2.0) -> np.ndarray:
    """Coefficients a_0 … a_D of g(m) = Σ a_k m^k, the residual's stand-in for σ(m) − 1 in the
    margin m = s·u (the residual in u is d = s·g(s·u)), each rounded to a multiple of 2^-C_BITS
    (what the protocol uses, so the plaintext reference computes the same numbers).

    ``poly5``: the odd fit of σ − ½ on [−R, R] (a = (−½, c_1, 0, c_3, 0, c_5)); ``margin5``: every
    power, least squares on a uniform grid of [−approx_low, R]; R is ``approx_range`` (default
    ``APPROX_RANGE[approx]``).

    Raises:
        ValueError: ``taylor`` (no fitted polynomial) or an unknown name.
    """
    if approx not in APPROX_DEGREE or approx == "taylor":
        raise ValueError(f"approx={approx!r} has no fitted polynomial; expected one of poly5, margin5")
    hi = float(APPROX_RANGE[approx] if approx_range is None else approx_range)
    degree = APPROX_DEGREE[approx]
    if approx == "poly5":
        a = np.zeros(degree + 1)
        a[0] = -0.5
        for k, c in sigmoid_poly(degree, hi).items():
            a[k] = c
    else:
        m = np.linspace(-float(approx_low), hi, 4001)
        a = np.linalg.lstsq(np.stack([m**k for k in range(degree + 1)], 1), 1.0 / (1.0 + np.exp(-m)) - 1.0, rcond=None)[0]
    return np.rint(a * 2.0**C_BITS) / 2.0**C_BITS


# ------------------------------------------------------------ party side
@dataclass
class LrState:
    """A feature holder's weights and this batch's mask (or the arbiter's key)."""

    public: PublicKey | None = None
    key: PrivateKey | None = None
    w: np.ndarray | None = None  # guest: its columns' weights then the intercept
    x_train_int: np.ndarray | None = None  # fixed-point features (object ints)
    masks: list[int] = field(default_factory=list)
    lr: float = 0.1
    l2: float = 0.0
    guest: bool = False
    degree: int = 1  # 1: Taylor's residual (u − 2s)/4; 5: the chained powers of a fitted polynomial
    coef: np.ndarray | None = None  # guest with degree > 1: a_0 … a_D of g(m), the residual d = s·g(s·u)

    @property
    def grad_bits(self) -> int:
        """Fixed-point bits of the decrypted Xᵀd."""
        return (U_BITS + X_BITS) if self.degree == 1 else (self.degree * U_BITS + C_BITS + X_BITS)

    @property
    def grad_divisor(self) -> float:
        """What turns the decoded Xᵀ(residual) into the mean gradient's numerator (Taylor's e is 4d)."""
        return 4.0 if self.degree == 1 else 1.0

    def design(self, x: np.ndarray) -> np.ndarray:
        """The party's columns (and the intercept's column of ones at the guest)."""
        return np.hstack([x, np.ones((len(x), 1), np.float32)]) if self.guest else x

    def model_state(self) -> dict[str, np.ndarray]:
        if self.w is None:
            return {}
        if self.guest:
            return {"weight": self.w[:-1].astype(np.float32), "bias": self.w[-1:].astype(np.float32)}
        return {"weight": self.w.astype(np.float32)}


def handlers(party: VerticalParty) -> dict[str, Callable[[Task], dict[str, np.ndarray]]]:
    """The party's hetero-LR steps."""

    def state() -> LrState:
        if party.lr is None:
            raise ProtocolError("hetero LR step before v.lr.init")
        return party.lr

    def keygen(task: Task) -> dict[str, np.ndarray]:  # arbiter
        if party.role != "arbiter":
            raise ProtocolError("only the arbiter holds the Paillier key")
        key = PrivateKey(int(task.config.extra["key_bits"]))
        party.lr = LrState(public=key.public, key=key)
        return {"public_key": key.public.to_array()}

    def init(task: Task) -> dict[str, np.ndarray]:  # guest and hosts
        if party.x_train is None:
            raise ProtocolError("v.lr.init before v.setup")
        extra = task.config.extra
        st = LrState(public=PublicKey.from_array(task.state["public_key"], min_bits=int(extra["min_key_bits"])),
                     lr=float(extra["lr"]), l2=float(extra["l2"]), guest=party.role == "guest",
                     degree=APPROX_DEGREE[str(extra.get("approx", "taylor"))])
        if st.degree > 1 and st.guest:
            st.coef = margin_poly(str(extra["approx"]), float(extra["approx_range"]), float(extra.get("approx_low", 2.0)))
        x = st.design(party.x_train)
        st.w = np.zeros(x.shape[1], np.float64)
        st.x_train_int = fixed_point(x, X_BITS)
        party.lr = st
        return {"features": np.array([x.shape[1]], np.int64)}

    def forward(task: Task) -> dict[str, np.ndarray]:  # host: [[u_j]] of the batch, fresh encryptions
        st = state()
        b = _batch(task, len(party.x_train))
        u = st.design(party.x_train[b]).astype(np.float64) @ st.w
        return {"enc_u": st.public.ciphers_to_array(st.public.encrypt(st.public.encode(u, U_BITS)))}

    def residual(task: Task) -> dict[str, np.ndarray]:  # guest: [[e]] = Σ_j [[u_j]] + Enc(u_G − 2s)
        st = state()
        b = _batch(task, len(party.x_train))
        if st.degree > 1:
            return {"enc_e": st.public.ciphers_to_array(_poly_residual(st, party, b, task.state))}
        s = 2.0 * party.y_train[b].astype(np.float64) - 1.0
        own = st.design(party.x_train[b]).astype(np.float64) @ st.w - 2.0 * s
        total = st.public.encrypt(st.public.encode(own, U_BITS))  # the fresh randomness hides the hosts' [[u_j]]
        for name in sorted(k for k in task.state if k.startswith("enc_u.")):
            total = st.public.add(total, st.public.ciphers_from_array(task.state[name], len(b), f"host {name[6:]}'s [[u]]"))
        return {"enc_e": st.public.ciphers_to_array(total)}

    def powers(task: Task) -> dict[str, np.ndarray]:  # host in the chain: [[(a + u_j)^k]], k = 1 … D
        st = state()
        b = _batch(task, len(party.x_train))
        u = st.design(party.x_train[b]).astype(np.float64) @ st.w
        out = _chain_powers(st, u, task.state, len(b))
        return {f"pow.{k}": st.public.ciphers_to_array(c) for k, c in out.items()}

    def gradient(task: Task) -> dict[str, np.ndarray]:  # guest and hosts: [[X_pᵀ e + r_p]]
        st = state()
        b = _batch(task, len(party.x_train))
        enc_e = st.public.ciphers_from_array(task.state["enc_e"], len(b), "[[e]]")
        g = st.public.dot(st.x_train_int[b], enc_e)
        st.masks = st.public.random_masks(len(g))
        masked = st.public.add(g, st.public.encrypt(st.masks))  # a fresh Enc(r): also re-randomises
        return {"enc_g": st.public.ciphers_to_array(masked)}

    def decrypt(task: Task) -> dict[str, np.ndarray]:  # arbiter: masked sums only
        st = state()
        if st.key is None:
            raise ProtocolError("only the arbiter decrypts")
        out = {}
        for name, arr in task.state.items():
            cipher = st.public.ciphers_from_array(arr, what=f"{name}")
            out[name] = st.public.plains_to_array(st.key.decrypt(cipher))
        return out

    def update(task: Task) -> dict[str, np.ndarray]:  # guest and hosts: unmask, step
        st = state()
        n = st.public.n
        masked = st.public.plains_from_array(task.state["masked_g"], len(st.masks), "masked gradient")
        size = int(task.config.extra["batch"])
        g = st.public.decode([(v - r) % n for v, r in zip(masked, st.masks)], st.grad_bits) / (st.grad_divisor * size)
        st.masks = []
        reg = st.l2 * st.w
        if st.guest:
            reg[-1] = 0.0  # the intercept is not penalised
        st.w = st.w - float(task.config.extra["lr"]) * (g + reg)
        return {}

    def score(task: Task) -> dict[str, np.ndarray]:  # host: partial scores of the held-out rows, in the clear
        st = state()
        return {"u": (st.design(party.x_test).astype(np.float64) @ st.w).astype(np.float64)}

    def evaluate(task: Task) -> dict[str, np.ndarray]:  # guest: metrics of the held-out rows
        st = state()
        u = st.design(party.x_test).astype(np.float64) @ st.w
        for name in (k for k in task.state if k.startswith("u.")):
            part = task.state[name]
            if part.shape != u.shape:
                raise ProtocolError(f"{name}: {part.shape[0]} scores for {u.shape[0]} held-out rows")
            u = u + part
        return binary_metrics(u, party.y_test)

    return {"v.lr.keygen": keygen, "v.lr.init": init, "v.lr.forward": forward, "v.lr.powers": powers, "v.lr.residual": residual,
            "v.lr.gradient": gradient, "v.lr.decrypt": decrypt, "v.lr.update": update, "v.lr.score": score,
            "v.lr.evaluate": evaluate}


def _chain_powers(st: LrState, u: np.ndarray, got: Any, rows: int) -> dict[int, list[Any]]:
    """[[(a + u)^k]] for k = 1 … D from the previous party's [[a^k]] (none: a = 0) and this party's u.

    (a + u)^k = Σ_i C(k, i) u^(k−i) a^i: the i = 0 term is a fresh encryption of u^k (which also
    re-randomises the sum), the others are plaintext × ciphertext products at 2^-(k·U_BITS).
    """
    pub = st.public
    prev = {k: pub.ciphers_from_array(got[f"pow.{k}"], rows, f"[[a^{k}]]") for k in range(1, st.degree + 1)
            if f"pow.{k}" in got}
    if prev and len(prev) != st.degree:
        raise ProtocolError(f"powers chain: expected [[a^k]] for k = 1 … {st.degree}, got {sorted(prev)}")
    out = {}
    for k in range(1, st.degree + 1):
        acc = pub.encrypt(pub.encode(u**k, k * U_BITS))
        for i in range(1, k) if prev else ():
            scal = fixed_point(math.comb(k, i) * u ** (k - i), (k - i) * U_BITS)
            acc = pub.add(acc, pub.scale(scal, prev[i]))
        if prev:
            acc = pub.add(acc, prev[k])
        out[k] = acc
    return out


def _poly_residual(st: LrState, party: VerticalParty, b: np.ndarray, got: Any) -> list[Any]:
    """The guest's [[d]] = Σ_k (a_k s^(k+1))·[[u^k]] + Enc(a_0 s), at 2^-(D·U_BITS + C_BITS):
    d = s·g(s·u), per-row coefficients from the labels the guest holds (exact: a_k are multiples
    of 2^-C_BITS)."""
    u = st.design(party.x_train[b]).astype(np.float64) @ st.w
    powers = _chain_powers(st, u, got, len(b))
    pub, top = st.public, st.degree * U_BITS + C_BITS
    s = 2.0 * party.y_train[b].astype(np.float64) - 1.0
    total = pub.encrypt(pub.encode(st.coef[0] * s, top))  # fresh: also re-randomises the sum
    for k in range(1, st.degree + 1):
        if st.coef[k] != 0.0:
            lift = fixed_point(st.coef[k] * s ** (k + 1), top - k * U_BITS)
            total = pub.add(total, pub.scale(lift, powers[k]))
    return total


def reference_fit(x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int, lr_decay: float = 1.0,
                  l2: float = 0.0, approx: str = "taylor", approx_range: float | None = None, approx_low: float = 2.0,
                  seed: int = 0) -> np.ndarray:
    """The algorithm the protocol computes, in plaintext float64 on the joined columns (guest's,
    then the hosts', in party order): weights with the intercept last. ``approx="exact"`` uses the
    sigmoid itself (what the approximations stand in for); the mini-batches are the driver's."""
    xx = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    y = np.asarray(y, np.float64)
    s_all = 2.0 * y - 1.0
    w = np.zeros(xx.shape[1])
    coef = margin_poly(approx, approx_range, approx_low) if approx not in ("taylor", "exact") else None
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(xx))
        for start in range(0, len(xx), batch_size):
            b = order[start : start + batch_size]
            u = xx[b] @ w
            if approx == "exact":
                d = 1.0 / (1.0 + np.exp(-np.clip(u, -500, 500))) - y[b]
            elif approx == "taylor":
                d = 0.25 * u + 0.5 - y[b]
            else:
                s = s_all[b]
                d = s * np.polynomial.polynomial.polyval(s * u, coef)
            reg = l2 * w
            reg[-1] = 0.0
            w = w - lr * (xx[b].T @ d / len(b) + reg)
        lr *= lr_decay
    return w


def _batch(task: Task, n: int) -> np.ndarray:
    b = np.asarray(task.state["batch"], dtype=np.int64)
    if b.ndim != 1 or not b.size or b.min() < 0 or b.max() >= n:
        raise ProtocolError(f"batch: expected positions in [0, {n}), got {b.size} values")
    return b


def binary_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, log loss (of the exact sigmoid) and AUC of logits against 0/1 labels."""
    if len(y) == 0:
        return {}
    y = y.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))
    loss = float(np.mean(np.logaddexp(0.0, logits) - y * logits))
    out = {"accuracy": np.array([np.mean((logits > 0) == (y > 0.5))]), "loss": np.array([loss])}
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos and neg:
        ranks = _ranks(p)
        out["auc"] = np.array([(ranks[y > 0.5].sum() - pos * (pos + 1) / 2) / (pos * neg)])
    return out


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), np.float64)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


# ------------------------------------------------------------ driver side
def train(ex: Exchange, cfg: Any, n_train: int, emit: Callable[[int, dict[str, Any]], None]) -> None:
    """The epochs of hetero LR: keys, then per mini-batch forward → residual → gradient → decrypt → update."""
    v = cfg.vertical
    guest, hosts, arbiter = cfg.guest, cfg.hosts, cfg.arbiter
    holders = [guest, *hosts]
    key = ex.call({arbiter: ("v.lr.keygen", {}, {"key_bits": v.key_bits})})[arbiter]["public_key"]
    ex.call({p: ("v.lr.init", {"public_key": key}, {"lr": v.lr, "l2": v.l2, "min_key_bits": min(512, v.key_bits),
                                                    "approx": v.approx, "approx_range": v.approx_range,
                                                    "approx_low": v.approx_low})
             for p in holders})
    lr = v.lr
    for epoch in range(1, v.epochs + 1):
        t0, up0, down0 = time.perf_counter(), ex.bytes_up, ex.bytes_down
        order = np.random.default_rng([cfg.run.seed, epoch]).permutation(n_train)
        for start in range(0, n_train, v.batch_size):
            batch = order[start : start + v.batch_size].astype(np.int64)
            if v.approx == "taylor":
                enc_u = ex.call({h: ("v.lr.forward", {"batch": batch}, {}) for h in hosts}) if hosts else {}
                sent = {f"enc_u.{h}": r["enc_u"] for h, r in enc_u.items()}
            else:  # the powers' chain: host 1 → host 2 → … → guest
                sent = {}
                for h in hosts:
                    sent = ex.call({h: ("v.lr.powers", {"batch": batch, **sent}, {})})[h]
            enc_e = ex.call({guest: ("v.lr.residual", {"batch": batch, **sent}, {})})[guest]["enc_e"]
            grads = ex.call({p: ("v.lr.gradient", {"batch": batch, "enc_e": enc_e}, {}) for p in holders})
            plain = ex.call({arbiter: ("v.lr.decrypt", {p: r["enc_g"] for p, r in grads.items()}, {})})[arbiter]
            ex.call({p: ("v.lr.update", {"masked_g": plain[p]}, {"lr": lr, "batch": len(batch)}) for p in holders})
        lr *= v.lr_decay
        record = evaluate(ex, cfg)
        record.update(seconds=time.perf_counter() - t0, bytes_up=ex.bytes_up - up0, bytes_down=ex.bytes_down - down0,
                      lr=lr / v.lr_decay)
        emit(epoch, record)


def evaluate(ex: Exchange, cfg: Any) -> dict[str, Any]:
    """Metrics on the held-out rows (hosts' partial scores go to the guest in the clear, as in FATE)."""
    if cfg.vertical.test_fraction == 0:
        return {}
    scores = ex.call({h: ("v.lr.score", {}, {}) for h in cfg.hosts}) if cfg.hosts else {}
    got = ex.call({cfg.guest: ("v.lr.evaluate", {f"u.{h}": r["u"] for h, r in scores.items()}, {})})[cfg.guest]
    return {k: float(a[0]) for k, a in got.items() if a.size and math.isfinite(float(a[0]))}
