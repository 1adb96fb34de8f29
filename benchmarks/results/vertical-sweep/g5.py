from sweep import *
import warnings; warnings.filterwarnings("ignore")
# sanity: odd poly5 R8 as margin poly reproduces
c = poly(5, 8); a = [-0.5, c[1], 0, c[3], 0, c[5]]
print("check p5R8", cvm(epochs=10, lr=0.05, decay=0.9, l2=0, a=a))
for deg in (3, 4, 5):
    for A in (4, 6, 8):
        for B in (8, 12, 16, 24):
            a = mpoly(deg, A, B)
            res = [cvm(epochs=e, lr=lr, decay=d, l2=0, a=a) for e, lr, d in ((10, 0.05, 0.9), (10, 0.1, 0.9), (20, 0.1, 0.95))]
            print("deg", deg, "A", A, "B", B, "lead", f"{a[-1]:.2g}", res, flush=True)
