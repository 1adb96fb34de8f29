import sys, json, itertools
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

x, y = load_breast_cancer(return_X_y=True)
def parts(rs):
    """The 5 stratified folds of partition ``rs``, scaled on their training part: (xtr, ytr, xte, yte)."""
    out = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=rs).split(x, y):
        sc = StandardScaler().fit(x[tr])
        out.append((sc.transform(x[tr]), y[tr].astype(float), sc.transform(x[te]), y[te]))
    return out


def sk_correct(d):
    """Test examples scikit-learn's LogisticRegression() gets right over the folds ``d``."""
    return sum(int((LogisticRegression(max_iter=5000).fit(a, b).predict(c) == e).sum()) for a, b, c, e in d)


folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, y))
data = parts(0)

def sk():
    r = 0; margins = []
    for xtr, ytr, xte, yte in data:
        m = LogisticRegression(max_iter=5000).fit(xtr, ytr)
        r += int((m.predict(xte) == yte).sum())
        margins.append(np.abs(m.decision_function(xtr)))
    return r, np.concatenate(margins)

def fit(xtr, ytr, *, epochs, lr, decay, l2, coef, seed, bs=32, avg=None, clip=None):
    xx = np.hstack([xtr, np.ones((len(xtr), 1))])
    w = np.zeros(xx.shape[1]); wsum = np.zeros_like(w); nsum = 0
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(xx))
        for s in range(0, len(xx), bs):
            b = order[s:s+bs]
            u = xx[b] @ w
            p = 1/(1+np.exp(-u)) if coef is None else 0.5 + sum(c * u**k for k, c in coef.items())
            reg = l2 * w; reg[-1] = 0
            w = w - lr * (xx[b].T @ (p - ytr[b]) / len(b) + reg)
            if avg is not None and epoch > avg:
                wsum += w; nsum += 1
        lr *= decay
    return wsum / nsum if nsum else w

def cv(**kw):
    out = []
    for seed in range(3):
        r = 0
        for xtr, ytr, xte, yte in data:
            w = fit(xtr, ytr, seed=seed, **kw)
            r += int((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).sum())
        out.append(r)
    return out

def poly(deg, R, weight=None):
    z = np.linspace(-R, R, 4001)
    ks = list(range(1, deg+1, 2))
    A = np.stack([z**k for k in ks], 1); t = 1/(1+np.exp(-z)) - 0.5
    if weight is not None:
        wt = np.sqrt(weight(z)); A = A * wt[:, None]; t = t * wt
    c = np.linalg.lstsq(A, t, rcond=None)[0]
    return dict(zip(ks, c))

def mpoly(deg, A, B, weight=None, n=4001):
    """g(m) ≈ -σ(-m) = σ(m) - 1 on [-A, B], all powers."""
    m = np.linspace(-A, B, n)
    M = np.stack([m**k for k in range(deg + 1)], 1); t = 1/(1+np.exp(-m)) - 1
    if weight is not None:
        wt = np.sqrt(weight(m)); M = M * wt[:, None]; t = t * wt
    return np.linalg.lstsq(M, t, rcond=None)[0]

def fitm(xtr, ytr, *, epochs, lr, decay, l2, a, seed, bs=32, avg=None):
    xx = np.hstack([xtr, np.ones((len(xtr), 1))])
    s_all = 2*ytr - 1
    w = np.zeros(xx.shape[1]); wsum = np.zeros_like(w); nsum = 0
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(xx))
        for st in range(0, len(xx), bs):
            b = order[st:st+bs]
            s = s_all[b]; m = s * (xx[b] @ w)
            d = s * sum(c * m**k for k, c in enumerate(a))
            reg = l2 * w; reg[-1] = 0
            w = w - lr * (xx[b].T @ d / len(b) + reg)
            if avg is not None and epoch > avg:
                wsum += w; nsum += 1
        lr *= decay
    return wsum / nsum if nsum else w

def cvm(seeds=3, dat=None, **kw):
    out = []
    for seed in range(seeds):
        r = 0
        for xtr, ytr, xte, yte in (dat or data):
            w = fitm(xtr, ytr, seed=seed, **kw)
            r += int((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).sum())
        out.append(r)
    return out
