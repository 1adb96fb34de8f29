"""W1 / W2 of BENCHMARKS.md: Pollen's inline simulation against a plain PyTorch loop doing the
same training (same parties, same order, same seeds), measured in the same script.

Each variant runs in its own subprocess (so peak RSS is its own); variants alternate in a
counterbalanced order (plain first, then Pollen first, ...: use an even number of repetitions), and
every ratio is the median over repetitions of pollen / plain. Three views of the time, because the
two variants do different amounts of work outside the rounds:

- job: the whole child process from its first line to its result (imports, loading and
  partitioning the data, building the model, the 30 rounds, and for Pollen writing the run
  directory: checkpoints, history, report, plot). The same work on both sides: the headline ratio.
- rounds: the 30 rounds alone (training and test-set evaluation): the plain loop's time against
  the sum of the seconds Pollen's history records per round.
- simulate(): Pollen's `simulate()` call (data loading, rounds, run directory) against the plain
  loop's rounds only; asymmetric (the plain side excludes its data loading), kept because it
  was the ratio reported before the other two were added.

Two schedules (``--interleave``):

- ``rounds`` (default): both children start together and take turns, one round at a time
  (``lockstep.py``: a child waiting for its turn is blocked in ``read``, using no CPU). Each child's
  times count only its own turns. The machine's speed drifts by several per cent within minutes on
  this shared host; alternating every ~5 s puts the same drift on both sides, which alternating
  whole 2-minute jobs does not.
- ``jobs``: one child after the other (counterbalanced), the schedule of the earlier measurements.

    python benchmarks/bench_w1_overhead.py --workload w1 --reps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

T_START = time.perf_counter()  # a child's job time counts from here (before torch is imported)
ROUNDS, PARTIES, PER_ROUND = 30, 100, 10
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lockstep  # noqa: E402  (two children taking turns: see its docstring)
from host import cpu_model, thread_scaling  # noqa: E402

if lockstep.ACTIVE:
    T_START = lockstep.first_turn()  # nothing, not even the imports, runs before the first turn


def plain_loop(partition: str) -> dict:
    """The reference: a plain PyTorch FedAvg loop with no framework."""
    import numpy as np
    import torch

    from pollen.client.party import round_seed
    from pollen.data import load_dataset, partition as split
    from pollen.models import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    t_setup = time.perf_counter()
    ds = load_dataset("fmnist")
    parts = split(ds, partition, PARTIES, 0, alpha=0.5)
    x_all, y_all = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    torch.manual_seed(0)
    model = build_model("fedavg_cnn", ds.input_shape, ds.num_classes)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn = torch.nn.CrossEntropyLoss()
    accs, t0, waited0 = {}, time.perf_counter(), lockstep.waited()
    for r in range(1, ROUNDS + 1):
        chosen = np.random.default_rng([0, r]).choice(PARTIES, PER_ROUND, replace=False)
        acc_sum = {k: torch.zeros_like(v) for k, v in glob.items()}
        total = 0
        for p in chosen:
            idx = torch.from_numpy(np.sort(parts[p]))
            x, y = x_all[idx], y_all[idx]
            model.load_state_dict(glob)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            gen = torch.Generator().manual_seed(round_seed(0, str(p), r))
            order = torch.randperm(len(x), generator=gen)
            for s in range(0, len(x), 32):
                b = order[s : s + 32]
                opt.zero_grad()
                loss_fn(model(x[b]), y[b]).backward()
                opt.step()
            for k, v in model.state_dict().items():
                acc_sum[k] += v * len(x)
            total += len(x)
        glob = {k: v / total for k, v in acc_sum.items()}
        model.load_state_dict(glob)
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(xt), 128):
                correct += int((model(xt[s : s + 128]).argmax(1) == yt[s : s + 128]).sum())
        accs[r] = correct / len(xt)
        lockstep.turn()
    wall = time.perf_counter() - t0 - (lockstep.waited() - waited0)
    return {"wall": wall, "rounds_s": wall, "setup_s": t0 - t_setup, "acc": accs}


def pollen_run(partition: str) -> dict:
    """The same training through Pollen's inline simulation."""
    from pollen.config import make_config
    from pollen.simulation import simulate

    out = tempfile.mkdtemp(prefix="pollen-bench-")
    cfg = make_config({
        "data": {"dataset": "fmnist", "parties": PARTIES, "partition": partition, "alpha": 0.5, "holdout": 0.0},
        "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": ROUNDS, "parties_per_round": PER_ROUND},
        "run": {"name": "bench", "runs_dir": out, "seed": 0, "progress": False, "device": "cpu"},  # the plain loop's device
    })
    t0, waited0 = time.perf_counter(), lockstep.waited()
    result = simulate(cfg, callbacks=[lockstep.after_each_round])
    wall = time.perf_counter() - t0 - (lockstep.waited() - waited0)
    secs = sorted(r["seconds"] for r in result.history)
    return {"wall": wall, "rounds_s": sum(secs), "acc": {r["round"]: r["accuracy"] for r in result.history},
            "median_round_s": secs[len(secs) // 2]}


def child(kind: str, partition: str, t_start: float) -> None:
    res = plain_loop(partition) if kind == "plain" else pollen_run(partition)
    res["job_s"] = time.perf_counter() - t_start - lockstep.waited()
    use = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = use.ru_maxrss / 1024
    res["cpu_s"] = use.ru_utime + use.ru_stime  # CPU seconds: less sensitive than wall time to other load
    print("RESULT " + json.dumps(res))


def child_args(kind: str, partition: str) -> list[str]:
    return [sys.executable, __file__, "--child", kind, "--partition", partition, "--rounds", str(ROUNDS)]


def run_child(kind: str, partition: str) -> dict:
    out = subprocess.run(child_args(kind, partition), capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[7:])


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", choices=["w1", "w2"], default="w1")
    ap.add_argument("--reps", type=int, default=4, help="repetitions (even: each order equally often)")
    ap.add_argument("--child")
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--rounds", type=int, default=30, help="W1/W2 are 30 rounds; fewer only for a quick check")
    ap.add_argument("--interleave", choices=["rounds", "jobs"], default="rounds",
                    help="rounds: both variants at once, taking turns a round at a time (cancels the machine's "
                         "drift); jobs: one whole job after the other")
    ap.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ROUNDS = args.rounds
    if args.child:
        child(args.child, args.partition, T_START)
        return
    partition = "iid" if args.workload == "w1" else "dirichlet"
    print(f"# {args.workload} ({partition}) on {os.cpu_count()} cores, {cpu_model()}; threads: {thread_scaling()}; "
          f"interleave: {args.interleave}")
    rows = []
    for rep in range(args.reps):
        # Counterbalanced order (plain first in odd repetitions, Pollen first in even ones): on this
        # shared machine the speed drifts within minutes, and a fixed order hands the drift to one side.
        if args.interleave == "rounds":
            both = lockstep.run({k: child_args(k, partition) for k in ("plain", "pollen")},
                                first="plain" if rep % 2 == 0 else "pollen")
            plain, ours = both["plain"], both["pollen"]
        elif rep % 2 == 0:
            plain = run_child("plain", partition)
            ours = run_child("pollen", partition)
        else:
            ours = run_child("pollen", partition)
            plain = run_child("plain", partition)
        ratio = ours["job_s"] / plain["job_s"]
        rows.append((plain, ours, ratio))
        print(f"rep {rep + 1} ({'plain' if rep % 2 == 0 else 'pollen'} first): plain job {plain['job_s']:.1f}s rounds {plain['rounds_s']:.1f}s {plain['cpu_s']:.0f}cpu-s "
              f"{plain['peak_rss_mb']:.0f}MB | pollen job {ours['job_s']:.1f}s rounds {ours['rounds_s']:.1f}s "
              f"simulate() {ours['wall']:.1f}s {ours['cpu_s']:.0f}cpu-s {ours['peak_rss_mb']:.0f}MB | job ratio {ratio:.3f} "
              f"rounds ratio {ours['rounds_s'] / plain['rounds_s']:.3f} simulate()/loop {ours['wall'] / plain['wall']:.3f} "
              f"cpu ratio {ours['cpu_s'] / plain['cpu_s']:.3f}", flush=True)
    ratios = [r[2] for r in rows]
    mem = [r[1]["peak_rss_mb"] / r[0]["peak_rss_mb"] for r in rows]
    p, o = rows[-1][0], rows[-1][1]
    summary = {
        "workload": args.workload, "interleave": args.interleave, "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {cpu_model()}",
        "job_ratio_median": statistics.median(ratios), "job_ratios": ratios,
        "rounds_ratio_median": statistics.median(r[1]["rounds_s"] / r[0]["rounds_s"] for r in rows),
        "simulate_vs_loop_ratio_median": statistics.median(r[1]["wall"] / r[0]["wall"] for r in rows),
        "plain_job_s": [r[0]["job_s"] for r in rows], "pollen_job_s": [r[1]["job_s"] for r in rows],
        "plain_rounds_s": [r[0]["rounds_s"] for r in rows], "pollen_rounds_s": [r[1]["rounds_s"] for r in rows],
        "plain_setup_s": [r[0]["setup_s"] for r in rows],
        "memory_ratio_median": statistics.median(mem),
        "cpu_ratio_median": statistics.median(r[1]["cpu_s"] / r[0]["cpu_s"] for r in rows),
        "plain_cpu_s": [r[0]["cpu_s"] for r in rows], "pollen_cpu_s": [r[1]["cpu_s"] for r in rows],
        "plain_wall": [r[0]["wall"] for r in rows], "pollen_wall": [r[1]["wall"] for r in rows],
        "plain_rss_mb": [r[0]["peak_rss_mb"] for r in rows], "pollen_rss_mb": [r[1]["peak_rss_mb"] for r in rows],
        "pollen_median_round_s": [r[1]["median_round_s"] for r in rows],
        "rounds": ROUNDS,
        "acc_pollen_10_20_30": [o["acc"].get(str(k), o["acc"].get(k)) for k in (10, 20, 30)],
        "acc_plain_10_20_30": [p["acc"].get(str(k), p["acc"].get(k)) for k in (10, 20, 30)],
        "acc_max_abs_diff": max(abs(o["acc"].get(str(k), o["acc"].get(k)) - p["acc"].get(str(k), p["acc"].get(k)))
                                for k in range(1, ROUNDS + 1)),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
