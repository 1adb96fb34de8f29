from sweep import *
import warnings; warnings.filterwarnings("ignore")
# the one odd-poly5 configuration of g4 with >= 555 for all 3 orders on partition 0, checked on partitions 1-4
c = poly(5, 16); a = [-0.5, c[1], 0, c[3], 0, c[5]]
for rs in range(5):
    d = parts(rs)
    sk = sk_correct(d)
    print("partition", rs, "sklearn", sk, "odd poly5 R16 bs16 lr0.2 decay1.0 10ep", cvm(dat=d, epochs=10, lr=0.2, decay=1.0, l2=0, a=a, bs=16), flush=True)
