from sweep import *
ex=None
# trajectory margins for exact SGD at lr .1 10 ep
xtr, ytr, _, _ = data[0]
w = fit(xtr, ytr, epochs=10, lr=0.1, decay=0.9, l2=0, coef=None, seed=0)
u = np.hstack([xtr, np.ones((len(xtr),1))]) @ w
print("exact lr.1 10ep margins", np.percentile(np.abs(u), [50,90,99,100]).round(2))
for R in (8, 12, 16):
    w = fit(xtr, ytr, epochs=10, lr=0.1, decay=0.9, l2=0, coef=poly(5,R), seed=0)
    u = np.hstack([xtr, np.ones((len(xtr),1))]) @ w
    print("poly5", R, np.percentile(np.abs(u), [50,90,99,100]).round(2))
# tail averaging and batch sizes for poly5 R8/R12 & exact
for name, coef in [("exact", None), ("p5R8", poly(5,8)), ("p5R12", poly(5,12)), ("p5R16", poly(5,16))]:
    for bs in (16, 32, 64):
        for lr in (0.05, 0.1, 0.2):
            for e, d in ((10, 0.9), (10, 1.0), (20, 0.9)):
                print(name, "bs", bs, "lr", lr, "ep", e, "decay", d, "last", cv(epochs=e, lr=lr, decay=d, l2=0, coef=coef, bs=bs),
                      "avg-half", cv(epochs=e, lr=lr, decay=d, l2=0, coef=coef, bs=bs, avg=e//2), flush=True)
