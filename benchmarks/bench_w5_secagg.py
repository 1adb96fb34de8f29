"""W5 of BENCHMARKS.md (`secagg`): the cost of secure aggregation (SecAgg+) against plain FedAvg,
measured in the same process on the same machine, in inline simulation.

Workload: W4's round (Fashion-MNIST, fedavg_cnn, SGD lr 0.05, batch 32, 1 local epoch, IID, all
parties sampled, seed 0) with 10 parties of 6,000 examples, and with 100 parties of 600. Modes,
interleaved in every repetition so that they share the machine's load: plain FedAvg, SecAgg+,
and SecAgg+ with 30 % of the parties dropping out after masking — with the checks of a party that
does not trust the coordinator (signed keys, the consistency round). Every measurement is round 1
from the same initial model, so every mode trains exactly the same updates and the secure
aggregate can be compared with the plain weighted mean of the same updates.

Reported: round time (median of the repetitions, spread) and its ratio to plain in the same
repetition; uplink bytes per round (exact serialised messages) and the ratio; the max abs error of
the secure aggregate against the plain weighted mean over the included parties (and the
quantisation bound); where SecAgg's time goes (party and coordinator crypto, by operation).

    python benchmarks/bench_w5_secagg.py --reps 3                 # 10 and 100 parties (W4's 6,000 / 600 each)
    python benchmarks/bench_w5_secagg.py --reps 3 --parties 10 --examples-per-party 600   # W1's shard size
    python benchmarks/bench_w5_secagg.py --reps 1 --parties 10    # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pollen.client.data import Shard
from pollen.compose import assemble, cores
from pollen.config import RunConfig, make_config
from pollen.models import builtin
from pollen.privacy.secagg import field, masks, shamir
from pollen.privacy.secagg import party as secagg_party
from pollen.privacy.secagg import protocol as secagg_protocol
from pollen.privacy.secagg.identity import Trust
from pollen.transport.inprocess import InProcessTransport

MODES = ("plain", "secagg", "secagg_drop30")
TIMERS: dict[str, float] = defaultdict(float)


def base_config(parties: int, mode: str, neighbours: int | None, threshold: float | None, dataset: str = "fmnist",
                model: str = "fedavg_cnn") -> dict:
    privacy = {}
    if mode != "plain":
        privacy = {"secagg": True, "secagg_neighbours": neighbours,
                   "secagg_dropout": 0.3 if mode == "secagg_drop30" else 0.0}
        if threshold is not None:  # None: the default (2/3)
            privacy["secagg_threshold"] = threshold
    return {"data": {"dataset": dataset, "parties": parties, "partition": "iid", "holdout": 0},
            "model": {"model": model}, "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
            "federation": {"rounds": 1, "fraction": 1.0},  # all parties sampled
            "privacy": privacy, "run": {"seed": 0, "progress": False, "device": "cpu"}}


def cut_app(split: RunConfig, limit: int | None):
    """The built-in app with party i holding the first ``limit`` indices of party i's part of ``split``'s
    partition (a reduced round, and the warm-up's 4 small parties of the full split)."""

    def load_data(ctx):
        ds = builtin.dataset(split)
        idx = builtin.parts(split)[ctx.party_index][:limit]
        return Shard(torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), torch.from_numpy(np.sort(idx)))

    return SimpleNamespace(model=builtin.model, load_data=load_data, server_data=builtin.server_data,
                           metrics=builtin.metrics, primary_metric=builtin.primary_metric)


class Recorder(InProcessTransport):
    """Keeps the fit deltas of the plain round (the reference for the secure sum's error)."""

    def __init__(self, parties, keep: bool) -> None:
        super().__init__(parties)
        self.keep, self.deltas, self.examples = keep, {}, {}

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if self.keep and reply is not None and reply.kind == "fit" and reply.ok:
            self.deltas[reply.party_id] = reply.update.delta
            self.examples[reply.party_id] = reply.update.num_examples
        return reply


def timed(module, name: str, label: str):
    """Wrap ``module.name`` so that its cumulative time lands in TIMERS[label]."""
    real = getattr(module, name)

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            TIMERS[label] += time.perf_counter() - t0

    setattr(module, name, wrapper)


def instrument() -> None:
    """Per-operation timers on the SecAgg code paths (party and coordinator, same process)."""
    timed(masks, "add_streams", "PRG expansion (AES-CTR) + add")
    timed(masks, "agree", "X25519 key agreement")
    timed(masks, "new_private_key", "X25519 key generation")
    timed(shamir, "split", "Shamir split")
    timed(shamir, "reconstruct", "Shamir reconstruct")
    timed(masks, "seal", "AES-GCM share encryption")
    timed(masks, "open_sealed", "AES-GCM share decryption")
    timed(field, "quantize", "quantise")
    timed(field, "dequantize", "dequantise")
    timed(Trust, "sign", "Ed25519 sign (keys, survivor set)")
    timed(Trust, "verify", "Ed25519 verify (neighbours' keys and survivor sets)")
    for fn in ("share_keys", "masked_input", "consistency", "unmask"):
        timed(secagg_party, fn, f"party stage {fn} (total)")
    # the parties' task handlers are read from the module when a run is assembled (after this): the timed ones
    timed(secagg_protocol, "_remove_masks", "coordinator: remove masks (total)")


def one_round(app, trainer, parties: int, mode: str, state0, args) -> dict:
    sparse = parties > 10  # 10 parties: the complete graph and the default threshold
    neighbours = (args.drop_neighbours if mode == "secagg_drop30" else args.neighbours) if sparse else None
    cfg = make_config(base_config(parties, mode, neighbours, args.threshold if sparse else None, args.dataset, args.model))
    assembly = assemble(cfg, app)
    pipeline = assembly.pipeline
    transport = Recorder(assembly.parties(trainer), keep=mode == "plain")
    for party in transport.parties.values():
        party.data  # load every party's data before the clock starts (parties load it lazily)
    coord = assembly.coordinator(transport)  # 1 round, no evaluation
    before = dict(TIMERS)
    cpu0 = time.process_time()
    outcome, _ = coord.run_round(1, state0, {})
    cpu = time.process_time() - cpu0  # this process's CPU seconds: robust to other jobs on the machine
    rec = outcome.record
    out = {"mode": mode, "parties": parties, "seconds": rec["seconds"], "cpu_seconds": cpu, "bytes_up": rec["bytes_up"],
           "bytes_down": rec["bytes_down"], "state": outcome.state}
    if mode == "plain":
        out.update(deltas=transport.deltas, examples=transport.examples)
    else:
        step = pipeline.steps[-1]
        out.update(included=step.last.included, error_bound=step.last.spec.error_bound, k=step.last.k, t=step.last.t,
                   clipped=step.last.clipped, dropped=sum(len(v) for v in step.last.dropped.values()),
                   mean_delta=step.last.update.delta,
                   timers={k: TIMERS[k] - before.get(k, 0.0) for k in TIMERS})
    return out


def max_error(plain: dict, secure: dict) -> float:
    """Max abs difference between the secure mean and the plain weighted mean of the same parties."""
    ids = secure["included"]
    w = np.array([plain["examples"][p] for p in ids], dtype=np.float64)
    worst = 0.0
    for name, got in secure["mean_delta"].items():
        ref = np.tensordot(w / w.sum(), np.stack([plain["deltas"][p][name].astype(np.float64) for p in ids]), axes=1)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref))))
    return worst


def run(parties: int, args) -> list[dict]:
    cfg = make_config(base_config(parties, "plain", None, args.threshold, args.dataset, args.model))
    app = None  # the built-in app: each party's whole IID shard
    if args.examples_per_party:  # a reduced round (stated in the results): the first examples of each IID shard
        app = cut_app(cfg, args.examples_per_party)
    base = assemble(cfg, app)
    trainer = base.trainer()  # one model for every round and mode
    state0 = base.initial_state()
    small = cut_app(cfg, min(64, args.examples_per_party or 64))  # 4 parties of the split, their first 64 examples
    one_round(small, trainer, 4, "plain", state0, args)  # warm-up: first-call costs of torch and imports
    rows = []
    for rep in range(args.reps):
        plain = None
        for mode in MODES:
            r = one_round(app, trainer, parties, mode, state0, args)
            if mode == "plain":
                plain = r
            else:
                r["max_abs_error"] = max_error(plain, r)
                r["time_ratio"] = r["seconds"] / plain["seconds"]
                r["cpu_ratio"] = r["cpu_seconds"] / plain["cpu_seconds"]
                r["uplink_ratio"] = r["bytes_up"] / plain["bytes_up"]
            r["rep"] = rep
            print(json.dumps({k: v for k, v in r.items() if k not in ("state", "deltas", "examples", "mean_delta")}), flush=True)
            rows.append({k: v for k, v in r.items() if k not in ("state", "deltas", "mean_delta")})
        plain.clear()
    return rows


def summarise(rows: list[dict]) -> str:
    lines = ["| parties | mode | round wall s (median, min–max) | wall ratio (median, min–max) | round CPU s (median) | CPU ratio (median, min–max) | uplink MB | uplink ratio | max abs error | bound 1/scale | k | t | dropped |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in sorted({r["parties"] for r in rows}):
        for mode in MODES:
            sel = [r for r in rows if r["parties"] == n and r["mode"] == mode]
            if not sel:
                continue
            s = [r["seconds"] for r in sel]
            cell = f"{statistics.median(s):.1f} ({min(s):.1f}–{max(s):.1f})"
            up = statistics.median(r["bytes_up"] for r in sel) / 1e6
            cpu = statistics.median(r["cpu_seconds"] for r in sel)
            if mode == "plain":
                lines.append(f"| {n} | {mode} | {cell} | 1 | {cpu:.1f} | 1 | {up:.2f} | 1 | — | — | — | — | — |")
                continue
            tr, cr = [r["time_ratio"] for r in sel], [r["cpu_ratio"] for r in sel]
            lines.append(f"| {n} | {mode} | {cell} | {statistics.median(tr):.3f} ({min(tr):.3f}–{max(tr):.3f}) | {cpu:.1f} | "
                         f"{statistics.median(cr):.3f} ({min(cr):.3f}–{max(cr):.3f}) | {up:.2f} | "
                         f"{statistics.median(r['uplink_ratio'] for r in sel):.4f} | {max(r['max_abs_error'] for r in sel):.2e} | "
                         f"{sel[0]['error_bound']:.2e} | {sel[0]['k']} | {sel[0]['t']} | {sel[0]['dropped']} |")
    return "\n".join(lines)


def breakdown(rows: list[dict]) -> str:
    lines = ["| parties | mode | operation | seconds per round (median) |", "| --- | --- | --- | --- |"]
    for n in sorted({r["parties"] for r in rows}):
        for mode in MODES[1:]:
            sel = [r for r in rows if r["parties"] == n and r["mode"] == mode]
            if not sel:
                continue
            for op in sorted(sel[0]["timers"], key=lambda o: -sel[0]["timers"][o]):
                lines.append(f"| {n} | {mode} | {op} | {statistics.median(r['timers'].get(op, 0.0) for r in sel):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parties", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--neighbours", type=int, default=40, help="SecAgg+ degree k beyond 10 parties (10: complete graph)")
    ap.add_argument("--drop-neighbours", type=int, default=60,
                    help="degree k beyond 10 parties with 30%% dropping (t above half a neighbourhood needs a denser "
                         "graph to survive it: failure bound 7.9e-7 per round at k = 60, 1.4e-2 at k = 40)")
    ap.add_argument("--threshold", type=float, default=0.51,
                    help="SecAgg+ threshold fraction t/(k+1) beyond 10 parties (must exceed 0.5; 10 parties: the default 2/3)")
    ap.add_argument("--examples-per-party", type=int, default=None,
                    help="train each party on only this many examples (W1's shard is 600; default: the whole split)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores, as BENCHMARKS.md says)")
    ap.add_argument("--dataset", default="fmnist", help="smoke tests only (W5 is fmnist)")
    ap.add_argument("--model", default="fedavg_cnn", help="smoke tests only (W5 is fedavg_cnn)")
    ap.add_argument("--out", default="benchmarks/results/w5-secagg.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or cores())
    instrument()
    rows = []
    for n in args.parties:
        rows += run(n, args)
    Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    print(summarise(rows))
    print()
    print(breakdown(rows))


if __name__ == "__main__":
    main()
