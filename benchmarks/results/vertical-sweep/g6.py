from sweep import *
import warnings, json; warnings.filterwarnings("ignore")
P = {rs: parts(rs) for rs in range(5)}
skp = {rs: sk_correct(d) for rs, d in P.items()}
print("sklearn per partition", skp)
sched = [(10, 0.1, 0.9), (20, 0.1, 0.95), (10, 0.2, 0.9), (30, 0.1, 0.95)]
ex = {}
for e, lr, d in sched:
    ex[(e,lr,d)] = {rs: cvm(dat=P[rs], epochs=e, lr=lr, decay=d, l2=0, a=None) if False else None for rs in P}
rows = []
for deg in (3, 4, 5, 6, 7):
    for A in (2, 4, 6, 8):
        for B in (12, 16, 20, 24, 32):
            a = mpoly(deg, A, B)
            if a[-1] <= 0 and deg % 2: continue
            for e, lr, dc in sched:
                r = cvm(dat=P[0], epochs=e, lr=lr, decay=dc, l2=0, a=a)
                rows.append((min(r), deg, A, B, e, lr, dc, r))
                print(deg, A, B, e, lr, dc, r, flush=True)
rows.sort(reverse=True)
print("TOP")
for row in rows[:15]:
    _, deg, A, B, e, lr, dc, r = row
    a = mpoly(deg, A, B)
    val = {rs: cvm(dat=P[rs], epochs=e, lr=lr, decay=dc, l2=0, a=a) for rs in (1, 2, 3, 4)}
    gaps = [skp[rs] - min(v) for rs, v in val.items()]
    print(row, "val", val, "worst gap rows", gaps, flush=True)
