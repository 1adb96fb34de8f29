"""W8 of BENCHMARKS.md: W1 (Fashion-MNIST, 100 parties with 600 examples each, 10 sampled per
round, 30 rounds, FedAvg CNN, SGD lr 0.05, batch 32) with each uplink codec; IID and Dirichlet 0.5.

For every codec it records the exact uplink bytes per round (serialised messages, as the
coordinator counts them), the compression ratio against the same update in float32, the test
accuracy after rounds 10 / 20 / 30 and the seed's metric communication / data size.

Each variant runs in its own subprocess and appends one JSON line to ``--out`` as soon as it
finishes, so a long session can be stopped and resumed; ``--report`` turns the lines into the
markdown tables of benchmarks/results/w8-compression.md.

    python benchmarks/bench_w8_compression.py --partition iid
    python benchmarks/bench_w8_compression.py --partition dirichlet --codecs none,topk1-ef
    python benchmarks/bench_w8_compression.py --report
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS, PARTIES, PER_ROUND = 30, 100, 10

# name -> (label, [compression] config section)
CODECS: dict[str, tuple[str, dict]] = {
    "none": ("none (fp32)", {}),
    "fp16": ("fp16", {"codec": "fp16"}),
    "int8": ("int8 (per tensor)", {"codec": "int8"}),
    "terngrad": ("ternary (TernGrad), sparse levels", {"codec": "terngrad"}),
    # the same codec before its non-zero levels were sent sparsely (2 bits a value; same decoded update)
    "terngrad-dense": ("ternary (TernGrad), 2-bit packing", {"codec": "terngrad"}),
    "topk10": ("top-k 10 %", {"codec": "topk", "topk_fraction": 0.10}),
    "topk1-ef": ("top-k 1 % + error feedback", {"codec": "topk", "topk_fraction": 0.01, "error_feedback": True}),
    "topk3-ef-int8": ("top-k 3 % + EF, int8 values", {"codec": "topk", "topk_fraction": 0.03, "error_feedback": True,
                                                      "topk_values": "int8"}),
    "topk5-ef-int8": ("top-k 5 % + EF, int8 values", {"codec": "topk", "topk_fraction": 0.05, "error_feedback": True,
                                                      "topk_values": "int8"}),
    "sign-ef": ("1-bit scaled sign + EF (block 1024)", {"codec": "sign", "codec_block": 1024, "error_feedback": True}),
    "topk1-ef-int8": ("top-k 1 % + EF, int8 values", {"codec": "topk", "topk_fraction": 0.01, "error_feedback": True,
                                                      "topk_values": "int8"}),
    "qsgd4": ("QSGD 4 bits (bucket 512)", {"codec": "qsgd", "qsgd_bits": 4}),
}
DEFAULT_OUT = Path(__file__).parent / "results" / "w8-compression.jsonl"


def run_variant(name: str, partition: str, rounds: int = ROUNDS, eval_every: int = 1, threads: int | None = None) -> dict:
    """One W1/W2 run with one codec, through Pollen's inline simulation."""
    from pollen.config import make_config
    from pollen.simulation import simulate
    from pollen.telemetry.report import load_run, summarize

    out = tempfile.mkdtemp(prefix="pollen-w8-")
    cfg = make_config({
        "data": {"dataset": "fmnist", "parties": PARTIES, "partition": partition, "alpha": 0.5, "holdout": 0.0},
        "model": {"model": "fedavg_cnn"},
        "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
        "federation": {"rounds": rounds, "parties_per_round": PER_ROUND, "eval_every": eval_every},
        "simulation": {"threads": threads},
        "compression": CODECS[name][1],
        "run": {"name": "w8", "runs_dir": out, "seed": 0, "progress": False, "device": "cpu"},
    })
    t0 = time.perf_counter()
    result = simulate(cfg)
    wall = time.perf_counter() - t0
    h = result.history
    s = summarize(*load_run(result.run_dir))
    ups = [r["bytes_up"] / max(len(r["parties"]), 1) for r in h]
    return {
        "codec": name, "partition": partition, "rounds": rounds, "eval_every": eval_every, "threads": threads,
        "wall_s": wall,
        "acc": {r["round"]: r.get("accuracy") for r in h},
        "bytes_up_round": sum(r["bytes_up"] for r in h) / len(h),
        "bytes_up_party": sum(ups) / len(ups),
        "bytes_down_round": sum(r["bytes_down"] for r in h) / len(h),
        "compression_up": sum(r["compression_up"] for r in h) / len(h),
        "comm_ratio": s["comm_ratio"], "uplink_ratio": s["uplink_ratio"],
        "bytes_up_total": s["bytes_up"], "bytes_down_total": s["bytes_down"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(lines: list[dict]) -> str:
    """Markdown tables (one per partition) from the recorded runs; Δ is against ``none`` run for
    the same partition and number of rounds."""
    out = []
    for part in ("iid", "dirichlet"):
        rows = [l for l in lines if l["partition"] == part]
        if not rows:
            continue
        out += [f"### {'W1 (IID)' if part == 'iid' else 'W2 (Dirichlet α = 0.5)'}", "",
                "| codec | rounds | bytes up / round | per party | × fewer than fp32 | test accuracy | Δ (points) "
                "| comm / data | uplink / data | wall s |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for l in rows:
            r = l.get("rounds", ROUNDS)
            base = next((b for b in rows if b["codec"] == "none" and b.get("rounds", ROUNDS) == r), None)
            acc = l["acc"][str(r)]
            fewer = base["bytes_up_round"] / l["bytes_up_round"] if base else float("nan")
            delta = 100 * (acc - base["acc"][str(r)]) if base else float("nan")
            out.append(
                f"| {CODECS[l['codec']][0]} | {r} | {l['bytes_up_round'] / 1e6:.3f} MB | {l['bytes_up_party'] / 1e3:.1f} kB "
                f"| {fewer:.1f}× | {100 * acc:.2f} % | {delta:+.2f} "
                f"| {100 * l['comm_ratio']:.0f} % | {100 * l['uplink_ratio']:.1f} % | {l['wall_s']:.0f} |")
        out.append("")
    return "\n".join(out)


def message_sizes() -> str:
    """Bytes of one real W1 reply (party 0, round 1, from the initial model) under each codec."""
    import numpy as np

    from pollen.compose import assemble
    from pollen.config import make_config
    from pollen.serialization import reply_to_bytes
    from pollen.transforms.base import StepContext
    from pollen.types import Reply, state_nbytes

    base = make_config({"data": {"dataset": "fmnist", "parties": PARTIES, "holdout": 0.0}, "model": {"model": "fedavg_cnn"},
                        "run": {"device": "cpu"}})
    run = assemble(base)
    party = run.parties(run.trainer(), ["0"])["0"]
    state = run.initial_state()
    update = party.trainer.fit(state, party.train, run.strategy.configure(1, list(state)),
                               __import__("torch").Generator().manual_seed(0))
    raw = state_nbytes(update.delta)
    lines = ["| codec | bytes of one reply | × fewer than the float32 tensors |", "| --- | ---: | ---: |"]
    for name, (label, comp) in CODECS.items():
        if name == "terngrad-dense":
            continue  # a label for an older run; the codec now sends sparse levels when smaller
        cfg = make_config({**base.to_dict(), "compression": comp})
        ctx = StepContext("0", 1, np.random.default_rng(0), {}, state)
        enc = assemble(cfg).pipeline.encode(update, ctx)
        n = len(reply_to_bytes(Reply("0", "fit", 1, update=enc)))
        lines.append(f"| {label} | {n:,} | {raw / n:.1f}× |")
    return f"float32 update tensors: {raw:,} bytes\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated subset of {', '.join(CODECS)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines file the results are appended to")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="rounds (W8 is 30; fewer only to measure bytes)")
    ap.add_argument("--eval-every", type=int, default=1, help="evaluate on the test set every N rounds (and after the last)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="print the markdown tables of --out and exit")
    ap.add_argument("--sizes", action="store_true", help="print each codec's size of one real W1 reply and exit")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args.partition, args.rounds, args.eval_every, args.threads)))
        return
    if args.sizes:
        print(message_sizes())
        return
    if args.report:
        print(report([json.loads(l) for l in args.out.read_text().splitlines() if l.strip()]))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.codecs.split(","):
        if name not in CODECS:
            sys.exit(f"unknown codec variant {name!r}; choose from {', '.join(CODECS)}")
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--partition", args.partition,
                               "--rounds", str(args.rounds), "--eval-every", str(args.eval_every)]
                              + (["--threads", str(args.threads)] if args.threads else []),
                              capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        with args.out.open("a") as f:
            f.write(line[7:] + "\n")
        res = json.loads(line[7:])
        print(f"{args.partition} {name}: acc {res['acc'][str(args.rounds)]:.4f} up/round {res['bytes_up_round']:.0f} "
              f"wall {res['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
