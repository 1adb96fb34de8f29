"""Micro-benchmark of one party's SecAgg+ hot paths on W5's vector (1,663,370 parameters, the
fedavg_cnn update): quantisation, the expansion and addition of k + 1 masks, and Ed25519
verification. Median of ``--reps`` runs in milliseconds; rerun with another PYTHONPATH to compare
two versions of the code on the same machine.

    python benchmarks/bench_secagg_ops.py --streams 10 41 --reps 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from pollen.privacy.secagg import field, masks
from pollen.privacy.secagg.identity import Trust

SIZE = 1_663_370  # fedavg_cnn's parameters (W5's update)


def median_ms(fn, reps: int) -> tuple[float, float, float]:
    """(median, min, max) of ``reps`` timed calls, in milliseconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="timed calls per operation (median reported)")
    ap.add_argument("--streams", type=int, nargs="+", default=[10, 41], help="masks per party (k + 1)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.01, SIZE)  # float64, as Layout.flatten gives it
    spec = field.choose(32, 0.05, 6000)  # 10 parties of 600 examples, W5's clip order of magnitude
    res: dict[str, list[float]] = {}
    res["quantise"] = list(median_ms(lambda: field.quantize(delta, spec, 600, rng), args.reps))
    for s in args.streams:
        keyed = [(bytes([i]) * 32, 1 if i % 2 else -1) for i in range(s)]
        acc = np.zeros(SIZE, np.uint32)
        res[f"expand+add {s} masks"] = list(median_ms(lambda: masks.add_streams(acc, keyed), args.reps))
    trust, peer = Trust.pinned(), Trust.pinned()
    sigs = [peer.sign(b"m%d" % i) for i in range(40)]

    def verify_40() -> None:
        for i, sig in enumerate(sigs):
            trust.verify("p", peer.credential, sig, b"m%d" % i)

    res["Ed25519 verify x40"] = list(median_ms(verify_40, args.reps))
    for name, (med, lo, hi) in res.items():
        print(f"{name:>24}: {med:8.2f} ms  ({lo:.2f}–{hi:.2f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
