from sweep import *
# near-converged: many epochs, small decaying lr, full-ish
for R in (6, 8, 10, 12, 16, 20, 24, 32):
    c = poly(5, R)
    for l2 in (0, 0.0022, 0.01):
        lr = 0.05 / (c[1] / 0.25)
        print("poly5 R", R, "l2", l2, "lr", round(lr,3), "60ep", cv(epochs=60, lr=lr, decay=0.97, l2=l2, coef=c), flush=True)
