"""W1 of BENCHMARKS.md on the Ray backend against the inline backend, in the same script.

Each run is a child process doing ``pollen.simulate`` on W1 (100 IID parties of 600 Fashion-MNIST
images, 10 per round, 30 rounds, test-set evaluation every round); the two backends alternate and
the ratio is the median over repetitions of ray / inline. Two views of the time:

- job: the whole child (imports, data, for Ray starting a local Ray and its actors and stopping it,
  the rounds, the run folder): the headline ratio (the issue's target: ≤ 1.10);
- rounds: the sum of the seconds the history records per round.

Ray runs 2 actors of ``--party-cpus 1`` (one torch thread each, two parties at a time); inline
trains one party at a time with 2 threads. Peak RSS for Ray is the child plus every Ray process.

    python benchmarks/bench_ray_w1.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

T_START = time.perf_counter()


def child(backend: str, rounds: int) -> None:
    from bench_w7_scale import rss_tree_mb  # noqa: E402 - same folder

    from pollen.config import make_config
    from pollen.simulation import simulate

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], rss_tree_mb(os.getpid()))

    threading.Thread(target=sample, daemon=True).start()
    out = tempfile.mkdtemp(prefix="w1r", dir="/tmp")
    cfg = make_config({
        "data": {"dataset": "fmnist", "parties": 100, "partition": "iid", "holdout": 0.0},
        "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": rounds, "parties_per_round": 10},
        "simulation": {"backend": backend, **({"party_cpus": 1.0} if backend == "ray" else {})},
        "run": {"name": "w1", "runs_dir": out, "seed": 0, "progress": False, "device": "cpu"},
    })
    t0 = time.perf_counter()
    try:
        result = simulate(cfg)
    finally:
        stop.set()
        shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({
        "backend": backend, "simulate_s": time.perf_counter() - t0, "job_s": time.perf_counter() - T_START,
        "rounds_s": sum(r["seconds"] for r in result.history), "peak_rss_mb": peak[0],
        "acc": [result.history[i - 1]["accuracy"] for i in (10, 20, 30) if i <= len(result.history)]}), flush=True)


def run_child(backend: str, rounds: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "--child", backend, "--rounds", str(rounds)], capture_output=True,
                         text=True, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{backend} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.rounds)
        return
    rows = []
    for rep in range(args.reps):
        inline, ray = run_child("inline", args.rounds), run_child("ray", args.rounds)
        rows.append((inline, ray))
        print(f"rep {rep + 1}: inline job {inline['job_s']:.1f}s rounds {inline['rounds_s']:.1f}s "
              f"{inline['peak_rss_mb']:.0f}MB acc {inline['acc']} | ray job {ray['job_s']:.1f}s rounds "
              f"{ray['rounds_s']:.1f}s {ray['peak_rss_mb']:.0f}MB acc {ray['acc']} | job ratio "
              f"{ray['job_s'] / inline['job_s']:.3f} rounds ratio {ray['rounds_s'] / inline['rounds_s']:.3f}", flush=True)
    jr = [r["job_s"] / i["job_s"] for i, r in rows]
    rr = [r["rounds_s"] / i["rounds_s"] for i, r in rows]
    mem = [r["peak_rss_mb"] / i["peak_rss_mb"] for i, r in rows]
    print(json.dumps({"job_ratio_median": statistics.median(jr), "job_ratios": jr,
                      "rounds_ratio_median": statistics.median(rr), "rounds_ratios": rr,
                      "memory_ratio_median": statistics.median(mem),
                      "inline_job_s": [i["job_s"] for i, _ in rows], "ray_job_s": [r["job_s"] for _, r in rows],
                      "inline_rss_mb": [i["peak_rss_mb"] for i, _ in rows],
                      "ray_rss_mb": [r["peak_rss_mb"] for _, r in rows]}, indent=2))


if __name__ == "__main__":
    main()
