"""Vertical FL: hetero LR on breast cancer (2 and 3 parties) and PSI throughput at 10^5 ids.

Hetero LR (Paillier, 2048-bit keys unless --key-bits): accuracy on the held-out rows against
scikit-learn's LogisticRegression trained on the same joined rows (the centralised baseline),
seconds per epoch and bytes per epoch; the same mini-batch algorithm in plaintext on the joined
data, timed in the same run, is the baseline of the cost ratio. PSI: two parties of 10^5 ids each
(half shared), in one process, ids per second = (|guest| + |host|) / wall seconds; the insecure
baseline (exchanging salted SHA-256 hashes) is timed in the same run.

    python benchmarks/bench_vertical.py                  # everything, 3 repetitions
    python benchmarks/bench_vertical.py --only psi --reps 3
    python benchmarks/bench_vertical.py --only lr --epochs 10 --key-bits 2048     # margin5 (the default stand-in)
    python benchmarks/bench_vertical.py --only cv                                 # 5-fold accuracy, plaintext
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) // 2**20 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores, {mem} GiB RAM, {cpu}, Python {platform.python_version()}"


def bench_lr(parties: int, a: argparse.Namespace) -> dict:
    from sklearn.linear_model import LogisticRegression

    from pollen.vertical import simulate_vertical
    from pollen.vertical.hetero_lr import reference_fit

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = simulate_vertical(model="lr", parties=parties, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, lr_decay=a.lr_decay,
                              l2=a.l2, approx=a.approx, approx_range=a.approx_range, approx_low=a.approx_low,
                              key_bits=a.key_bits, name=f"vlr{parties}",
                              runs_dir=tmp, progress=False)
        wall = time.perf_counter() - t0
        holders = sorted((p for p in r.parties.values() if p.role != "arbiter"), key=lambda p: int(p.party_id))
        xtr = np.hstack([p.x_train for p in holders]).astype(np.float64)
        xte = np.hstack([p.x_test for p in holders]).astype(np.float64)
        ytr, yte = holders[0].y_train, holders[0].y_test
        sk = LogisticRegression(max_iter=5000).fit(xtr, ytr)
        t1 = time.perf_counter()
        w = reference_fit(xtr, ytr, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, lr_decay=a.lr_decay, l2=a.l2,
                          approx=a.approx, approx_range=a.approx_range, approx_low=a.approx_low)
        plain_epoch = (time.perf_counter() - t1) / a.epochs
        plain_acc = float((((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0) == yte).mean())
        got = [p.lr.w for p in holders]
        max_diff = float(np.abs(np.concatenate([got[0][:-1], *got[1:], got[0][-1:]]) - w).max())
        hist = r.history
        per_epoch = [h["seconds"] for h in hist]
        parts = {pid: p for pid, p in r.parties.items()}
        roles = {pid: p.role for pid, p in parts.items()}
    return {"kind": "lr", "parties": parties, "approx": a.approx, "approx_range": a.approx_range, "approx_low": a.approx_low,
            "key_bits": a.key_bits, "epochs": a.epochs, "lr": a.lr, "lr_decay": a.lr_decay, "l2": a.l2,
            "batch_size": a.batch_size, "accuracy": hist[-1]["accuracy"], "auc": hist[-1].get("auc"),
            "sklearn_accuracy": float((sk.predict(xte) == yte).mean()), "plaintext_same_algorithm_accuracy": plain_acc,
            "seconds_per_epoch_median": statistics.median(per_epoch), "seconds_per_epoch": per_epoch,
            "plaintext_seconds_per_epoch": plain_epoch,
            "max_weight_difference_to_plaintext": max_diff,
            "bytes_per_epoch": statistics.median(h["bytes_up"] + h["bytes_down"] for h in hist),
            "psi_seconds": r.summary["psi_seconds"], "psi_bytes": r.summary["psi_bytes"], "wall_s": wall,
            "train_rows": r.summary["train_rows"], "test_rows": r.summary["test_rows"], "roles": roles}


def bench_psi(n: int, threads: int) -> dict:
    from pollen.vertical import psi

    rng = np.random.default_rng(0)
    universe = rng.permutation(3 * n)
    guest = [f"id{i}" for i in universe[:n]]
    host = [f"id{i}" for i in universe[n // 2 : n // 2 + n]]
    t0 = time.perf_counter()
    g_rows, h_rows = psi.intersect(guest, {"1": host}, threads=threads)
    wall = time.perf_counter() - t0
    assert len(g_rows) == n // 2 and [guest[i] for i in g_rows] == [host[i] for i in h_rows["1"]]
    t1 = time.perf_counter()
    salt = os.urandom(32)
    tags = {hashlib.sha256(salt + g.encode()).digest(): i for i, g in enumerate(guest)}
    common = [tags[t] for t in (hashlib.sha256(salt + h.encode()).digest() for h in host) if t in tags]
    naive = time.perf_counter() - t1
    assert len(common) == n // 2
    return {"kind": "psi", "ids_per_party": n, "threads": threads, "wall_s": wall, "ids_per_s": 2 * n / wall,
            "intersection": len(g_rows), "bytes": 32 * (2 * n + n), "naive_hash_wall_s": naive,
            "ratio_to_naive": wall / naive}


def bench_cv(a: argparse.Namespace) -> dict:
    """5-fold cross-validated accuracy (all 569 rows predicted once; SGD: 3 batch orders) of scikit-learn's logistic
    regression (the centralised baseline) against the algorithm the vertical protocol computes
    exactly (``reference_fit``, tests/vertical), for each sigmoid stand-in and for the exact
    sigmoid with the same optimiser: where the gap comes from (the loss, or the optimiser).
    The table's partition is StratifiedKFold(random_state=0); partitions 1-4 (each stand-in at its
    defaults) check that the result is not one partition's luck."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    from pollen.vertical.config import vertical_config
    from pollen.vertical.hetero_lr import reference_fit

    x, y = load_breast_cancer(return_X_y=True)

    def cv(fit_predict, partition: int = 0) -> float:
        right = 0
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=partition).split(x, y):
            sc = StandardScaler().fit(x[tr])
            right += int((fit_predict(sc.transform(x[tr]), y[tr], sc.transform(x[te])) == y[te]).sum())
        return right / len(y)

    def sgd(approx: str, epochs: int, lr: float, decay: float, seed: int, l2: float = 0.0):
        rng = None if approx in ("exact", "taylor") else vertical_config(approx=approx).vertical.approx_range
        def fp(xtr, ytr, xte):
            w = reference_fit(xtr, ytr, epochs=epochs, lr=lr, batch_size=a.batch_size, lr_decay=decay, l2=l2, approx=approx,
                              approx_range=rng, approx_low=a.approx_low, seed=seed)
            return ((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0).astype(int)
        return fp

    def least_squares(xtr, ytr, xte):  # where Taylor's gradient descent converges: the least-squares classifier
        w = np.linalg.lstsq(np.hstack([xtr, np.ones((len(xtr), 1))]), 2.0 * ytr - 1.0, rcond=None)[0]
        return ((np.hstack([xte, np.ones((len(xte), 1))]) @ w) > 0).astype(int)

    def sklearn(a_, b_, c_):
        return LogisticRegression(max_iter=5000).fit(a_, b_).predict(c_)

    approxes = ("exact", "taylor", "poly5", "margin5")
    schedules = [(10, 0.05, 0.9), (10, 0.1, 0.9), (10, 0.2, 0.9), (30, 0.1, 0.95), (50, 0.05, 0.97)]
    table = {f"{approx} epochs={e} lr={lr} decay={d}": [cv(sgd(approx, e, lr, d, seed)) for seed in range(3)]
             for approx in approxes for e, lr, d in schedules}
    table.update({f"{approx} epochs={a.cv_epochs} lr={lr} decay={a.lr_decay} l2={l2}": [cv(sgd(approx, a.cv_epochs, lr, a.lr_decay, seed, l2))
                                                                                    for seed in range(3)]
                  for approx in approxes for lr in (0.05, 0.2) for l2 in (0.0022, 0.01)})
    defaults = {approx: (a.cv_epochs, vertical_config(approx=approx if approx != "exact" else "margin5").vertical.lr, a.lr_decay)
                for approx in approxes}
    partitions = {}
    for part in range(1, 5):
        row = {"sklearn": cv(sklearn, part)}
        for approx, (e, lr, d) in defaults.items():
            row[f"{approx} epochs={e} lr={lr} decay={d}"] = [cv(sgd(approx, e, lr, d, seed), part) for seed in range(3)]
        partitions[part] = row
    return {"kind": "cv", "batch_size": a.batch_size, "approx_low": a.approx_low,
            "sklearn_lr_accuracy": cv(sklearn), "taylor_converged_least_squares": cv(least_squares), "sgd": table,
            "other_partitions": partitions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("lr", "psi", "cv"), default=None)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--parties", default="2,3")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="default: the vertical config's (0.2 for margin5, else 0.05)")
    p.add_argument("--lr-decay", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--l2", type=float, default=0.0)
    p.add_argument("--cv-epochs", type=int, default=10, help="--only cv: epochs of the rows at each stand-in's defaults")
    p.add_argument("--approx", choices=("margin5", "taylor", "poly5"), default="margin5")
    p.add_argument("--approx-range", type=float, default=None, help="default: 32 for margin5, 8 for poly5")
    p.add_argument("--approx-low", type=float, default=2.0)
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--psi-ids", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default="benchmarks/results/vertical.jsonl")
    a = p.parse_args()
    from pollen.vertical.config import vertical_config

    v = vertical_config(approx=a.approx, lr=a.lr, approx_range=a.approx_range, approx_low=a.approx_low).vertical
    a.lr, a.approx_range = v.lr, v.approx_range
    out = Path(a.results)
    stamp = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
             "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if a.only in (None, "cv"):
        row = {**bench_cv(a), **stamp}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    for rep in range(a.reps if a.only != "cv" else 0):
        rows = []
        if a.only in (None, "psi"):
            rows.append(bench_psi(a.psi_ids, a.threads))
        if a.only in (None, "lr"):
            rows += [bench_lr(int(k), a) for k in a.parties.split(",")]
        for row in rows:
            row.update(stamp, rep=rep)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k not in ("seconds_per_epoch", "roles")}), flush=True)


if __name__ == "__main__":
    main()
