"""W7 of BENCHMARKS.md (``scale``): 1,000 / 10,000 / 100,000 parties of 6 Fashion-MNIST examples, 100
sampled per round, 20 rounds, inline and Ray backends; seconds per round and peak RSS, and how both
grow with the number of parties.

Up to 10,000 parties the split is IID (60,000 / N examples each: 6 at 10,000, 60 at 1,000); beyond, each party draws 6
indices with replacement (``--scheme draw``: ``default_rng(0).integers(0, 60000, (N, 6))``), images
referenced by index, never copied. Every round evaluates the global model on the 10k test set (the
common settings), and the last round runs federated evaluation (at most ``--fed-eval-parties`` =
1,000 parties, a seeded sample).

A round's seconds are split three ways, from the run's own events (one child process per run, so
peak RSS is its own; for Ray, the driver's plus every Ray process's, summed at its peak):

- training: inline, the sum of the sampled parties' task seconds (each party's local training, its
  data materialised and its state read and written included); Ray, whose actors train several
  parties at once, the wall-clock span from the round's tasks going out to the last reply coming in
  (Ray's own dispatch inside that span is then counted as training, not framework),
- evaluation: the coordinator's evaluation of the global model on the test set,
- federated evaluation (the last round): the wall-clock span of its tasks (at most
  ``--fed-eval-parties`` parties, each built, its data materialised, the model evaluated),
- framework: the rest (sampling, tasks, collecting, aggregation, the server step, checkpoint,
  history): the issue's target is ≤ 1 s per round at 100,000 parties, inline, with ≤ 1 GiB peak RSS.

    python benchmarks/bench_w7_scale.py --reps 3 --parties 1000 10000 100000 --backends inline ray
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import cpu_model  # noqa: E402


def rss_tree_mb(root_pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB (Ray's raylet, GCS and workers)."""
    import psutil

    try:
        proc = psutil.Process(root_pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def child(parties: int, backend: str, rounds: int, threads: int) -> None:
    import torch

    from pollen.compose import Assembly
    from pollen.config import make_config
    from pollen.simulation import simulate
    from pollen.telemetry.events import PartyReplied, RoundCompleted

    torch.set_num_threads(threads)
    eval_s: list[float] = []
    real = Assembly.evaluator

    def timed_evaluator(self, trainer):  # the coordinator's test-set evaluation, timed
        fn = real(self, trainer)

        def evaluate(state):
            t = time.perf_counter()
            out = fn(state)
            eval_s.append(time.perf_counter() - t)
            return out

        return evaluate

    Assembly.evaluator = timed_evaluator
    import pollen.server.coordinator as coordinator_module

    collect_s: dict[tuple[str, int], float] = {}  # (task kind, round) -> seconds from tasks out to replies in
    real_collect = coordinator_module.collect

    def timed_collect(transport, tasks, timeout, on_reply=None):
        t = time.perf_counter()
        try:
            return real_collect(transport, tasks, timeout, on_reply)
        finally:
            if tasks:
                key = (tasks[0].kind, tasks[0].round)
                collect_s[key] = collect_s.get(key, 0.0) + time.perf_counter() - t

    coordinator_module.collect = timed_collect
    train_s: dict[int, float] = {}
    records: list[dict] = []

    def on_event(e):
        if isinstance(e, PartyReplied) and e.kind == "fit":
            train_s[e.round] = train_s.get(e.round, 0.0) + e.seconds
        elif isinstance(e, RoundCompleted):
            records.append(e.record)

    peak = [0.0]
    stop = threading.Event()

    def sample():  # Ray's processes are not this one's children for getrusage: poll the tree
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_tree_mb(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    out = tempfile.mkdtemp(prefix="w7", dir="/tmp")
    cfg = make_config({
        "data": {"dataset": "fmnist", "parties": parties, "partition": "iid" if parties <= 10_000 else "draw",
                 "party_size": 6},
        "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": rounds, "parties_per_round": 100},
        "simulation": {"backend": backend, "threads": threads},
        "run": {"name": "w7", "runs_dir": out, "seed": 0, "progress": False, "device": "cpu"},
    })
    t0 = time.perf_counter()
    try:
        result = simulate(cfg, callbacks=[on_event])
    finally:
        stop.set()
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - t0
    rows = []
    for i, r in enumerate(records):
        ev = eval_s[i] if i < len(eval_s) else 0.0
        tr = train_s.get(r["round"], 0.0)
        span = collect_s.get(("fit", r["round"]), 0.0)
        fed = collect_s.get(("evaluate", r["round"]), 0.0)  # federated evaluation (the last round)
        # inline trains one party at a time: training is the parties' own seconds; Ray trains several
        # at once, so its training is the wall-clock span the round waited for them
        busy = tr if backend == "inline" else span
        rows.append({"round": r["round"], "seconds": r["seconds"], "train_s": busy, "party_s": tr, "span_s": span,
                     "eval_s": ev, "fed_eval_s": fed, "framework_s": r["seconds"] - busy - ev - fed})
    use = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({
        "parties": parties, "backend": backend, "wall": wall, "rounds": rows,
        "peak_rss_mb": max(use.ru_maxrss / 1024, peak[0]), "self_peak_rss_mb": use.ru_maxrss / 1024,
        "accuracy": result.history[-1].get("accuracy"), "fed_accuracy": result.history[-1].get("fed_accuracy")}))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarise(res: dict) -> dict:
    rows = res["rounds"]
    body = rows[:-1] if len(rows) > 1 else rows  # the last round also runs federated evaluation
    return {"round_s": median([r["seconds"] for r in body]), "framework_s": median([r["framework_s"] for r in body]),
            "train_s": median([r["train_s"] for r in body]), "eval_s": median([r["eval_s"] for r in body]),
            "last_round_s": rows[-1]["seconds"], "last_framework_s": rows[-1]["framework_s"],
            "fed_eval_s": rows[-1].get("fed_eval_s", 0.0),
            "peak_rss_mb": res["peak_rss_mb"], "wall": res["wall"], "accuracy": res["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--backends", nargs="+", default=["inline", "ray"], choices=["inline", "ray", "process"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("PARTIES", "BACKEND"))
    ap.add_argument("--out", default=None, help="also write the raw results (JSON lines) here")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads (inline: of the one process; ray: of each actor, with --party-cpus 1)")
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.rounds, args.threads)
        return
    print(f"# W7, {args.rounds} rounds, {args.threads} torch thread(s), on {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{cpu_model()}; {datetime.now(timezone.utc).isoformat(timespec='minutes')}", flush=True)
    table: dict[tuple[int, str], list[dict]] = {}
    for rep in range(args.reps):
        for n in args.parties:
            for backend in args.backends:
                out = subprocess.run([sys.executable, __file__, "--child", str(n), backend, "--rounds", str(args.rounds),
                                      "--threads", str(args.threads)],
                                     capture_output=True, text=True)
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if line is None:
                    print(f"{n} {backend}: FAILED\n{out.stderr[-3000:]}", flush=True)
                    continue
                res = json.loads(line[7:])
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"rep": rep, **res}) + "\n")
                s = summarise(res)
                table.setdefault((n, backend), []).append(s)
                print(f"rep {rep + 1} {n:>6} {backend:<6} round {s['round_s']:.3f}s = framework {s['framework_s']:.3f}s "
                      f"+ training {s['train_s']:.3f}s + evaluation {s['eval_s']:.3f}s | last round {s['last_round_s']:.2f}s "
                      f"(fed eval {s['fed_eval_s']:.2f}s, framework {s['last_framework_s']:.2f}s) "
                      f"| peak RSS {s['peak_rss_mb']:.0f} MB | wall {s['wall']:.0f}s | acc {s['accuracy']}", flush=True)
    print("\n| parties | backend | s/round (median) | framework s/round | training s/round | evaluation s/round "
          "| last round s | its fed eval s | its framework s | peak RSS MB | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, backend), rows in sorted(table.items()):
        def stat(key: str, fmt: str = ".3f") -> str:
            xs = [r[key] for r in rows]
            return f"{median(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"

        print(f"| {n:,} | {backend} | {stat('round_s')} | {stat('framework_s')} | {stat('train_s')} | {stat('eval_s')} "
              f"| {stat('last_round_s', '.2f')} | {stat('fed_eval_s', '.2f')} | {stat('last_framework_s', '.2f')} "
              f"| {stat('peak_rss_mb', '.0f')} | {len(rows)} |")


if __name__ == "__main__":
    main()
