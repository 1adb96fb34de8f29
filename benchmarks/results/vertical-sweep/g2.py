from sweep import *
for C in [1, 0.5, 0.2, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01]:
    r = 0; ms = []
    for xtr, ytr, xte, yte in data:
        m = LogisticRegression(C=C, max_iter=5000).fit(xtr, ytr)
        r += int((m.predict(xte) == yte).sum()); ms.append(m.decision_function(xtr))
    ms = np.abs(np.concatenate(ms))
    print(C, "l2~", round(1/(455*C), 4), r, np.percentile(ms, [50, 90, 99, 100]).round(2))
for deg in (3,5,7,9,11):
    for R in (4,6,8,10,12,16):
        c = poly(deg, R); print(deg, R, {k: f"{v:.3g}" for k, v in c.items()})
