from sweep import *
import time
t=time.time()
approx = {"exact": None, "taylor": {1: 0.25}, **{f"poly5R{R}": poly(5, R) for R in (8, 12, 16, 24)}}
for sched in [(10, 0.05, 0.9), (10, 0.1, 0.9), (20, 0.1, 0.9)]:
    for l2 in (0, 0.0022, 0.01, 0.03):
        for name, coef in approx.items():
            for avg in (None, 0):
                e, lr, d = sched
                print(name, sched, "l2", l2, "avg", avg, cv(epochs=e, lr=lr, decay=d, l2=l2, coef=coef, avg=avg), flush=True)
print(time.time()-t)
