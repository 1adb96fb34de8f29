from sweep import *
import warnings, json; warnings.filterwarnings("ignore")
P = {rs: parts(rs) for rs in range(5)}
skp = {rs: sk_correct(d) for rs, d in P.items()}
print("sklearn", skp, flush=True)
def cvx(dat, seeds, **kw):  # exact
    out = []
    for seed in range(seeds):
        r = 0
        for xtr, ytr, xte, yte in dat:
            w = fit(xtr, ytr, seed=seed, coef=None, **kw)
            r += int((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).sum())
        out.append(r)
    return out
for lr in (0.1, 0.15, 0.2, 0.25):
    for l2 in (0, 0.0022):
        p0 = cvx(P[0], 10, epochs=10, lr=lr, decay=0.9, l2=l2)
        val = {rs: cvx(P[rs], 3, epochs=10, lr=lr, decay=0.9, l2=l2) for rs in (1,2,3,4)}
        print("EXACT lr", lr, "l2", l2, "p0x10", p0, "min3", min(p0[:3]), "val", val, "worstgap", max(skp[rs]-min(v) for rs, v in val.items()), flush=True)
for deg in (4, 5):
    for A in (1.5, 2, 3, 4):
        for B in (24, 32, 40, 48):
            a = mpoly(deg, A, B)
            for lr in (0.15, 0.2, 0.25):
                for l2 in (0, 0.0022):
                    kw = dict(epochs=10, lr=lr, decay=0.9, l2=l2, a=a)
                    p0 = cvm(dat=P[0], seeds=10, **kw)
                    val = {rs: cvm(dat=P[rs], **kw) for rs in (1, 2, 3, 4)}
                    gaps = [skp[rs] - min(v) for rs, v in val.items()]
                    print("deg", deg, "A", A, "B", B, "lr", lr, "l2", l2, "p0x10", p0, "min3", min(p0[:3]), "min10", min(p0), "val", val,
                          "worstgap", max(gaps), "sumgap", sum(gaps), flush=True)
