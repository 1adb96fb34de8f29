"""The TFF EMNIST seed's question in one command: its exact settings against the recipe its author
recommends, each also at the other's budget, on EMNIST split by writer.

    python examples/femnist/compare.py --data-dir DIR                 # LEAF's JSON or TFF's .h5 files
    python examples/femnist/compare.py --dataset fmnist               # a stand-in: IID parties of Fashion-MNIST
    python examples/femnist/compare.py --rows seed,recipe --threads 2

Rows (``examples/femnist-tff-seed.toml`` and ``examples/femnist.toml``, 3,383 parties):

- ``seed``: the seed's exact settings: small CNN, client SGD 0.02, server SGD 1.0 (FedAvg), 5
  clients a round, batch 20, 10 rounds (the seed reached 14 % on EMNIST);
- ``recipe``: the default preset: a deeper CNN with dropout, SGD 0.02 on the clients and FedAdam
  0.01 on the server (Reddi et al. 2021), 20 clients a round, 500 rounds;
- ``seed-long``: the seed's settings at the recipe's budget (500 rounds of 20 clients);
- ``recipe-short``: the recipe at the seed's budget (10 rounds of 5 clients).

Together they separate what the budget buys from what the recipe's choices buy. With ``--dataset``
another built-in image set stands in for EMNIST (it has no writers: the parties are IID shards,
``--partition`` to change); the table says so. Each row is appended to ``--out``'s JSON lines as it
ends, and the table (``--out`` with ``.md``) shows the newest row of each with the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pollen
from pollen.config import load_toml
from pollen.errors import PollenError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEED, RECIPE = HERE.parent / "femnist-tff-seed.toml", HERE.parent / "femnist.toml"
ROWS: dict[str, tuple[Path, dict]] = {  # short name: (preset, what changes)
    "seed": (SEED, {}),
    "recipe": (RECIPE, {}),
    "seed-long": (SEED, {"rounds": 500, "parties_per_round": 20, "eval_every": 10}),
    "recipe-short": (RECIPE, {"rounds": 10, "parties_per_round": 5, "eval_every": 1}),
}
LABELS = {"seed": "the seed's settings (small CNN, SGD 0.02 / server SGD 1.0, 5 clients, 10 rounds)",
          "recipe": "the recipe (CNN + dropout, SGD 0.02 / FedAdam 0.01, 20 clients, 500 rounds)",
          "seed-long": "the seed's settings at the recipe's budget (20 clients, 500 rounds)",
          "recipe-short": "the recipe at the seed's budget (5 clients, 10 rounds)"}


def row_config(name: str, data: dict, quick: bool) -> dict:
    """The run configuration of one row: its preset, the row's budget, then the data's settings."""
    preset, changes = ROWS[name]
    cfg = load_toml(preset)
    cfg["federation"].update(changes)
    cfg["data"].update(data)
    if quick:
        cfg["federation"].update(rounds=2, parties_per_round=2, eval_every=1)
    return cfg


def run_row(name: str, cfg: dict, runs: Path, threads: int, device: str) -> dict:
    """One row: final and best accuracy, rounds, clients per round, bytes, seconds."""
    start = time.perf_counter()
    result = pollen.simulate(cfg, runs_dir=str(runs), name=name, overwrite=True, progress=False, threads=threads,
                             device=device)
    evaluated = [r for r in result.history if r.get("accuracy") is not None]
    best = max(evaluated, key=lambda r: r["accuracy"]) if evaluated else None
    return {"row": name, "accuracy": evaluated[-1]["accuracy"] if evaluated else None,
            "best": best["accuracy"] if best else None, "best_round": best["round"] if best else None,
            "rounds": len(result.history), "clients_per_round": cfg["federation"]["parties_per_round"],
            "bytes": sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in result.history),
            "seconds": time.perf_counter() - start}


def table(rows: list[dict], data: dict) -> str:
    lines = ["| row | accuracy (final) | best (round) | rounds × clients | communication | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        best = "—" if r["best"] is None else f"{100 * r['best']:.1f} % ({r['best_round']})"
        lines.append(f"| {LABELS[r['row']]} | {acc} | {best} | {r['rounds']} × {r['clients_per_round']} | "
                     f"{r['bytes'] / 1e6:,.0f} MB | {r['seconds']:.0f} |")
    parties = data.get("parties", load_toml(SEED)["data"]["parties"])  # the presets' writers unless given
    what = ("EMNIST by writer" if data.get("dataset", "femnist") == "femnist" else
            f"a stand-in, not EMNIST: {data['dataset']} cut into {parties:,} {data.get('partition', 'iid')} parties")
    return "\n".join(lines) + f"\n\nData: {what}; settings {data}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="FEMNIST files: LEAF's data/ folder or TFF's .h5 files")
    parser.add_argument("--dataset", default="femnist",
                        help="another built-in image dataset stands in for EMNIST (default: %(default)s)")
    parser.add_argument("--partition", default=None,
                        help="how a stand-in dataset is cut (default: iid; EMNIST: natural, by writer)")
    parser.add_argument("--parties", type=int, default=None, help="parties (default: the presets' 3,383 writers)")
    parser.add_argument("--rows", default="all", help=f"comma-separated rows (default all): {', '.join(ROWS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:1, mps")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 clients per row (for the tests)")
    parser.add_argument("--out", default=None, help="JSON-lines file the rows are appended to "
                        "(default: benchmarks/results/femnist-table-<dataset>.jsonl)")
    args = parser.parse_args(argv)
    chosen = list(ROWS) if args.rows == "all" else [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in chosen if r not in ROWS]
    if unknown:
        print(f"error: unknown row(s) {unknown}; choose from: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    data: dict = {"dataset": args.dataset}
    if args.dataset != "femnist" or args.partition:
        data["partition"] = args.partition or "iid"
    for key in ("data_dir", "parties"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    settings = {**data, "quick": args.quick}
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"femnist-table-{args.dataset}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            print(f"  {LABELS[name]}", flush=True)
            try:
                row = run_row(name, row_config(name, data, args.quick), Path(tmp), args.threads, args.device)
            except PollenError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            with out.open("a") as f:  # recorded as each row ends
                f.write(json.dumps({**row, "settings": settings, "date": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    newest: dict[str, dict] = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        if r.get("settings") == settings:
            newest[r["row"]] = r
    text = table([newest[n] for n in ROWS if n in newest], data)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"written: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
