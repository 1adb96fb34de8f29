"""Pollen's DataLoader path against a plain PyTorch DataLoader loop doing the same training (issue
target: ≤ 1.05×), measured in the same script.

Workload: W1 of BENCHMARKS.md (Fashion-MNIST, 100 IID parties of 600, 10 sampled per round,
FedAvg-paper CNN, SGD lr 0.05, batch 32, 1 local epoch, seed 0, the 10k test set evaluated after
every round in batches of 128), but every party's data reaches Pollen as a
``torch.utils.data.Dataset``: an app whose ``load_data(ctx)`` returns
``Subset(TensorDataset(x_train, y_train), party rows)`` and whose ``server_data`` returns
``TensorDataset(x_test, y_test)``, so Pollen builds a ``DataLoader`` per local epoch
(``pollen.client.data.DatasetSource.loader``, shuffled by the round's seeded ``torch.Generator``).
The baseline is a plain loop over the same parties in the same order, over the same Datasets, with
``DataLoader(dataset, batch_size=32, shuffle=True, generator=Generator().manual_seed(round_seed(0,
str(p), r)))`` (the same shuffles, so the same training) and ``DataLoader(test, batch_size=128)``.
Both sides run with the same number of torch threads (``--threads``, default: every core) on the CPU.

As in bench_w1_overhead.py, each variant runs in its own subprocess (so peak RSS is its own); by
default both run at once, taking turns a round at a time (``--interleave rounds``, ``lockstep.py``:
the host's speed drift lands on both), which goes first alternating between repetitions;
``--interleave jobs`` runs one whole job after the other. Every ratio is the median over
repetitions of pollen / plain:

- job: the whole child process from its first line to its result (imports, loading the data,
  building the model, the rounds, and for Pollen writing the run directory). The headline ratio.
- rounds: the rounds alone (training and test-set evaluation): the plain loop's time against the
  sum of the seconds Pollen's history records per round.

    python benchmarks/bench_dataloader.py --reps 3
    python benchmarks/bench_dataloader.py --reps 1 --rounds 1    # a quick check
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lockstep  # noqa: E402  (two children taking turns: see its docstring)
from host import cpu_model, thread_scaling  # noqa: E402

if lockstep.ACTIVE:
    T_START = lockstep.first_turn()  # nothing, not even the imports, runs before the first turn
ROUNDS, PARTIES, PER_ROUND, SEED = 30, 100, 10, 0
TARGET = 1.05  # the bound on the job ratio


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------ the data, as Datasets (both sides)
_DATA: dict = {}


def data() -> dict:
    """Fashion-MNIST as TensorDatasets and W1's IID split (sorted rows per party), loaded once per process."""
    if not _DATA:
        import numpy as np
        import torch
        from torch.utils.data import TensorDataset

        from pollen.data import load_dataset, partition

        ds = load_dataset("fmnist")
        _DATA.update(
            ds=ds,
            rows=[np.sort(p).tolist() for p in partition(ds, "iid", PARTIES, SEED)],
            train=TensorDataset(torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)),
            test=TensorDataset(torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)),
        )
    return _DATA


def party_dataset(p: int):
    """Party ``p``'s examples: a Dataset over its rows of the training set."""
    from torch.utils.data import Subset

    d = data()
    return Subset(d["train"], d["rows"][p])


def new_model():
    from pollen.models import build_model

    ds = data()["ds"]
    return build_model("fedavg_cnn", ds.input_shape, ds.num_classes)


def app():
    """The app Pollen runs: model, each party's Dataset, the test set for the server's evaluation."""
    from types import SimpleNamespace

    return SimpleNamespace(model=new_model, load_data=lambda ctx: party_dataset(ctx.party_index),
                           server_data=lambda ctx: data()["test"])


# ------------------------------------------------------------ the two variants
def plain_loop(threads: int) -> dict:
    """The reference: a plain PyTorch FedAvg loop over DataLoaders, no framework."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from pollen.client.party import round_seed

    torch.set_num_threads(threads)
    t_setup = time.perf_counter()
    d = data()
    torch.manual_seed(SEED)
    model = new_model()
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn = torch.nn.CrossEntropyLoss()
    test = DataLoader(d["test"], batch_size=128)
    accs, t0, waited0 = {}, time.perf_counter(), lockstep.waited()
    for r in range(1, ROUNDS + 1):
        chosen = np.random.default_rng([SEED, r]).choice(PARTIES, PER_ROUND, replace=False)
        acc_sum = {k: torch.zeros_like(v) for k, v in glob.items()}
        total = 0
        for p in chosen:
            dataset = party_dataset(int(p))
            model.load_state_dict(glob)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            gen = torch.Generator().manual_seed(round_seed(SEED, str(p), r))
            for x, y in DataLoader(dataset, batch_size=32, shuffle=True, generator=gen):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            for k, v in model.state_dict().items():
                acc_sum[k] += v * len(dataset)
            total += len(dataset)
        glob = {k: v / total for k, v in acc_sum.items()}
        model.load_state_dict(glob)
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(1) == y).sum())
        accs[r] = correct / len(d["test"])
        lockstep.turn()
    wall = time.perf_counter() - t0 - (lockstep.waited() - waited0)
    return {"wall": wall, "rounds_s": wall, "setup_s": t0 - t_setup, "acc": accs}


def pollen_run(threads: int) -> dict:
    """The same training through Pollen's inline simulation, the parties' data given as Datasets."""
    import pollen

    out = tempfile.mkdtemp(prefix="pollen-bench-dl-")
    cfg = {
        "data": {"parties": PARTIES, "holdout": 0.0},  # the app's own split; no held-out cut
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1, "loader_workers": 0},
        "federation": {"rounds": ROUNDS, "parties_per_round": PER_ROUND, "eval_every": 1},
        "simulation": {"threads": threads},
        "run": {"name": "bench", "runs_dir": out, "seed": SEED, "progress": False, "device": "cpu"},
    }
    t0, waited0 = time.perf_counter(), lockstep.waited()
    result = pollen.simulate(cfg, app=app(), callbacks=[lockstep.after_each_round])
    wall = time.perf_counter() - t0 - (lockstep.waited() - waited0)
    secs = sorted(r["seconds"] for r in result.history)
    return {"wall": wall, "rounds_s": sum(secs), "acc": {r["round"]: r["accuracy"] for r in result.history},
            "median_round_s": secs[len(secs) // 2]}


def child(kind: str, threads: int, t_start: float) -> None:
    res = plain_loop(threads) if kind == "plain" else pollen_run(threads)
    res["job_s"] = time.perf_counter() - t_start - lockstep.waited()
    use = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = use.ru_maxrss / 1024
    res["cpu_s"] = use.ru_utime + use.ru_stime  # CPU seconds: less sensitive than wall time to other load
    res["threads"] = threads
    print("RESULT " + json.dumps(res))


def child_args(kind: str, threads: int) -> list[str]:
    return [sys.executable, __file__, "--child", kind, "--threads", str(threads), "--rounds", str(ROUNDS)]


def run_child(kind: str, threads: int) -> dict:
    out = subprocess.run(child_args(kind, threads), capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{kind} child failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(line[7:])


def acc_at(res: dict, k: int) -> float | None:
    return res["acc"].get(str(k), res["acc"].get(k))


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30, help="the workload is 30 rounds; fewer only for a quick check")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: every core)")
    ap.add_argument("--interleave", choices=["rounds", "jobs"], default="rounds",
                    help="rounds: both variants at once, taking turns a round at a time (cancels the machine's "
                         "drift); jobs: one whole job after the other")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--lockstep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ROUNDS = args.rounds
    threads = args.threads or cores()
    if args.child:
        child(args.child, threads, T_START)
        return
    print(f"# dataloader (W1 with Dataset parties) on {os.cpu_count()} cores, {cpu_model()}; torch threads {threads}; "
          f"threads: {thread_scaling()}; interleave: {args.interleave}")
    rows = []
    for rep in range(args.reps):
        first = "plain" if rep % 2 == 0 else "pollen"  # which variant goes first alternates
        if args.interleave == "rounds":
            both = lockstep.run({k: child_args(k, threads) for k in ("plain", "pollen")}, first=first)
            plain, ours = both["plain"], both["pollen"]
        elif first == "plain":
            plain = run_child("plain", threads)
            ours = run_child("pollen", threads)
        else:
            ours = run_child("pollen", threads)
            plain = run_child("plain", threads)
        ratio = ours["job_s"] / plain["job_s"]
        rows.append((plain, ours, ratio))
        print(f"rep {rep + 1} ({first} first): plain job {plain['job_s']:.1f}s rounds {plain['rounds_s']:.1f}s {plain['cpu_s']:.0f}cpu-s "
              f"{plain['peak_rss_mb']:.0f}MB | pollen job {ours['job_s']:.1f}s rounds {ours['rounds_s']:.1f}s "
              f"simulate() {ours['wall']:.1f}s {ours['cpu_s']:.0f}cpu-s {ours['peak_rss_mb']:.0f}MB | job ratio {ratio:.3f} "
              f"rounds ratio {ours['rounds_s'] / plain['rounds_s']:.3f} "
              f"cpu ratio {ours['cpu_s'] / plain['cpu_s']:.3f}", flush=True)
    ratios = [r[2] for r in rows]
    mem = [r[1]["peak_rss_mb"] / r[0]["peak_rss_mb"] for r in rows]
    p, o = rows[-1][0], rows[-1][1]
    summary = {
        "workload": "dataloader", "interleave": args.interleave, "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, {cpu_model()}",
        "threads": threads, "target_job_ratio": TARGET,
        "job_ratio_median": statistics.median(ratios), "job_ratios": ratios,
        "within_target": statistics.median(ratios) <= TARGET,
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
        "acc_pollen_10_20_30": [acc_at(o, k) for k in (10, 20, 30)],
        "acc_plain_10_20_30": [acc_at(p, k) for k in (10, 20, 30)],
        "acc_max_abs_diff": max(abs(acc_at(o, k) - acc_at(p, k)) for k in range(1, ROUNDS + 1)),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
