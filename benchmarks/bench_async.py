"""Asynchronous federation: virtual wall time to 85 % test accuracy on Fashion-MNIST with
heterogeneous party speeds, FedBuff against synchronous FedAvg under the same speeds.

Setting: W1 of BENCHMARKS.md (100 parties, IID shards of 600, FedAvg-paper CNN, SGD lr 0.05, batch
32, 1 local epoch). Every party gets a slowness factor exp(N(0, σ²)) (``--party-speed
lognormal:1.0``); a fit task takes ``slowness × local steps × step_seconds`` of virtual time
(deterministic, so the comparison does not depend on this machine's load); each task is dropped
with probability ``--dropout``. FedAvg samples 10 parties per round and waits for all of them
(a dropout is noticed when the task would have finished); FedBuff keeps C = 10 parties training
and steps every K arrivals with staleness weight 1/√(1+τ). The server's evaluation is not
charged to virtual time. The ratio FedAvg time / FedBuff time is the speed-up.

Both are evaluated after the same number of party tasks (``--eval-every`` FedAvg rounds; FedBuff
every ``eval_every × 10 / K`` steps), so neither is favoured by a finer grid. Every finished run is
appended to ``--results`` and skipped when the command is run again (a cut-off grid resumes).

    python benchmarks/bench_async.py --jobs 2        # 3 seeds × 2 strategies, two runs at a time
    python benchmarks/bench_async.py --seeds 0 --eval-every 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

TARGET = 0.85
# Settings that make two runs comparable: a stored run counts as done only if it used the same ones.
COMPARED = ("party_speed", "dropout", "step_seconds", "buffer", "max_rounds", "eval_every")


def run(strategy: str, seed: int, args: argparse.Namespace) -> dict:
    """One run until the target accuracy or ``max_rounds`` server steps; its time to target."""
    import torch

    from pollen.compose import assemble
    from pollen.config import make_config
    from pollen.simulation.clock import with_simulated_clock
    from pollen.transport.inprocess import InProcessTransport

    torch.set_num_threads(args.threads)
    max_rounds = args.max_rounds if strategy == "fedavg" else args.max_rounds * 10 // args.buffer
    eval_every = args.eval_every if strategy == "fedavg" else max(1, args.eval_every * 10 // args.buffer)
    cfg = make_config({
        "data": {"dataset": "fmnist", "parties": 100, "partition": "iid", "holdout": 0.0},
        "model": {"model": "fedavg_cnn"}, "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": max_rounds, "parties_per_round": 10},
        "strategy": {"name": strategy, "async_buffer": args.buffer, "async_concurrency": 10,
                     "party_speed": args.party_speed, "dropout": args.dropout, "step_seconds": args.step_seconds},
        "run": {"seed": seed, "progress": False, "device": "cpu"},
    })
    # the rounds are driven here (not by pollen.simulate) to stop at the target and read the virtual clock
    assembly = assemble(cfg)
    trainer = assembly.trainer()
    transport = with_simulated_clock(InProcessTransport(assembly.parties(trainer)), assembly.cfg)
    evaluate = assembly.evaluator(trainer)
    coord = assembly.coordinator(transport)  # no evaluation of its own, no checkpoints
    state = assembly.initial_state()
    opt_state = coord.strategy.server_optimizer.init(state)
    t0, trained, curve, reached = time.perf_counter(), 0, [], None
    for rnd in range(1, max_rounds + 1):
        outcome, opt_state = coord.run_round(rnd, state, opt_state)
        state = outcome.state
        trained += len(outcome.record["parties"]) + len(outcome.record["parties_failed"])
        if rnd % eval_every == 0:
            acc = evaluate(state).accuracy
            curve.append((rnd, transport.clock(), acc))
            print(f"  {strategy} seed {seed} step {rnd}: virtual {transport.clock():.1f} s, accuracy {acc:.4f}", flush=True)
            if acc >= TARGET:
                reached = {"step": rnd, "virtual_s": transport.clock(), "accuracy": acc, "tasks_done": trained}
                break
    return {"strategy": strategy, "seed": seed, "reached": reached, "steps_run": rnd, "virtual_s_end": transport.clock(),
            "final_accuracy": curve[-1][2] if curve else None, "wall_s": time.perf_counter() - t0, "curve": curve,
            "settings": {k: v for k, v in vars(args).items() if k not in ("results",)}}


def table(rows: list[dict]) -> str:
    """Per seed: each strategy's virtual seconds and party tasks to the target, and the speed-up."""
    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        if r["reached"] is None:
            return f"not reached in {r['steps_run']} steps (final {100 * r['final_accuracy']:.1f} %)"
        return f"{r['reached']['virtual_s']:.1f} s (step {r['reached']['step']}, {r['reached']['tasks_done']} tasks)"

    out = [f"| seed | FedAvg: virtual time to {TARGET:.0%} | FedBuff: virtual time to {TARGET:.0%} | speed-up FedAvg / FedBuff |",
           "| --- | --- | --- | --- |"]
    for seed in sorted({r["seed"] for r in rows}):
        avg = next((r for r in rows if r["seed"] == seed and r["strategy"] == "fedavg"), None)
        buf = next((r for r in rows if r["seed"] == seed and r["strategy"] == "fedbuff"), None)
        ratio = (f"{avg['reached']['virtual_s'] / buf['reached']['virtual_s']:.2f}×"
                 if avg and buf and avg["reached"] and buf["reached"] else "—")
        out.append(f"| {seed} | {cell(avg)} | {cell(buf)} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default="fedavg,fedbuff")
    p.add_argument("--party-speed", default="lognormal:1.0")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--step-seconds", type=float, default=0.02, help="virtual seconds per local step (the FedAvg/FedBuff ratio does not depend on it)")
    p.add_argument("--buffer", type=int, default=5, help="FedBuff K (C = 10)")
    p.add_argument("--max-rounds", type=int, default=60, help="FedAvg rounds at most (FedBuff: the same party-task budget)")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each in its own process)")
    p.add_argument("--results", default="benchmarks/results/async.jsonl")
    args = p.parse_args()
    results = Path(args.results)
    same = lambda r: all(r["settings"].get(k) == getattr(args, k) for k in COMPARED)  # noqa: E731
    rows = [r for r in map(json.loads, results.read_text().splitlines() if results.exists() else []) if same(r)]
    have = {(r["strategy"], r["seed"]) for r in rows}
    todo = [(st, int(seed)) for seed in args.seeds.split(",") for st in args.strategies.split(",")
            if (st, int(seed)) not in have]
    print(f"{len(todo)} runs to do ({len(rows)} with these settings already in {results})", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for fut in as_completed([pool.submit(run, st, seed, args) for st, seed in todo]):
            row = fut.result()
            rows.append(row)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("strategy", "seed", "reached", "steps_run", "wall_s")}), flush=True)
    print(table(rows))
    by = {s: [r["reached"]["virtual_s"] for r in rows if r["strategy"] == s and r["reached"]] for s in args.strategies.split(",")}
    for s, times in by.items():
        print(f"{s}: virtual seconds to {TARGET:.0%}: {times} (median {statistics.median(times) if times else '—'})")
    if by.get("fedavg") and by.get("fedbuff"):
        print(f"speed-up FedAvg/FedBuff (medians): {statistics.median(by['fedavg']) / statistics.median(by['fedbuff']):.2f}")


if __name__ == "__main__":
    main()
