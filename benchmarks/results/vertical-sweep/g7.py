from sweep import *
import warnings, json; warnings.filterwarnings("ignore")
P = {rs: parts(rs) for rs in range(5)}
skp = {rs: sk_correct(d) for rs, d in P.items()}
print("sklearn", skp, flush=True)
for deg in (3, 4, 5, 6):
    for A in (1, 2, 3):
        for B in (16, 24, 32, 48):
            a = mpoly(deg, A, B)
            for e, lr, dc in [(10, 0.1, 0.9), (10, 0.2, 0.9), (10, 0.3, 0.9), (10, 0.2, 0.95), (15, 0.2, 0.9)]:
                r0 = cvm(dat=P[0], epochs=e, lr=lr, decay=dc, l2=0, a=a)
                if min(r0) < 555:
                    print(deg, A, B, e, lr, dc, "p0", r0, flush=True); continue
                val = {rs: cvm(dat=P[rs], epochs=e, lr=lr, decay=dc, l2=0, a=a) for rs in (1, 2, 3, 4)}
                gaps = [skp[rs] - min(v) for rs, v in val.items()]
                print(deg, A, B, e, lr, dc, "p0", r0, "val", val, "worstgap", max(gaps), "sumgap", sum(gaps), flush=True)
