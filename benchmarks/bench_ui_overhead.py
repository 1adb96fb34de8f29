"""The dashboard and tracking sinks must not slow training (issue 14), measured in one script:

A. W1 (BENCHMARKS.md: Fashion-MNIST, 100 IID parties of 600, 10 sampled per round, 30 rounds,
   inline simulation) through ``pollen simulate``, without and with ``--ui-port P --track
   tensorboard``, alternating, ``--reps`` times each. While the "with" run goes, this script polls
   the dashboard's API the way the open page does (the run and its new rounds once a second), so
   the server has a viewer. Ratio = wall time with / without, per pair; reported: the median and
   the spread, for the whole command (imports, data, the 30 rounds, the run folder) and for the
   rounds alone (the history's seconds).
B. API latency while 100 parties report: the same data with all 100 parties trained every round
   (a PartyReplied event on the bus every few hundred milliseconds, the parties page 100 rows
   long), and a client here calling the dashboard's endpoints back to back (runs, run, new rounds,
   parties) from another process; p50 / p95 / p99 of the latencies.

    python benchmarks/bench_ui_overhead.py --reps 3          # under `cpuslot --all` on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import cpu_model, thread_scaling  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
W1 = ["--dataset", "fmnist", "--parties", "100", "--partition", "iid", "--holdout", "0", "--model", "fedavg_cnn",
      "--lr", "0.05", "--batch-size", "32", "--epochs", "1", "--parties-per-round", "10", "--seed", "0",
      "--no-progress", "--device", "cpu"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Poller:
    """Calls the dashboard's API from a thread of this process and records each call's latency."""

    def __init__(self, port: int, token_file: Path, run: str, paths: list[str], every: float) -> None:
        self.port, self.token_file, self.run, self.paths, self.every = port, token_file, run, paths, every
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _get(self, path: str, token: str) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        self.latencies.append(time.perf_counter() - t0)
        return json.loads(body)

    def _loop(self) -> None:
        while not self.token_file.exists() and not self._stop.is_set():
            self._stop.wait(0.2)
        if self._stop.is_set():
            return
        token = next(iter(tomllib.loads(self.token_file.read_text())["read"].values()))
        last = 0
        while not self._stop.is_set():
            try:
                for p in self.paths:
                    got = self._get(p.format(run=self.run, after=last), token)
                    if "rounds?after" in p and got:
                        last = got[-1]["round"]
            except OSError:
                self.errors += 1  # not up yet (before the run folder is open), or gone at the end
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def simulate(out: Path, name: str, extra: list[str], poll: dict | None = None) -> dict:
    """One ``pollen simulate`` process; its wall time, the rounds' seconds, final accuracy, and
    the poller's latencies when ``poll`` is given."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pollen.cli", "simulate", *W1, "--runs-dir", str(out), "--name", name, *extra]
    poller = None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if poll is not None:
        poller = Poller(poll["port"], poll["tokens"], name, poll["paths"], poll["every"])
    log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if poller is not None:
        poller.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    history = [json.loads(line) for line in (out / name / "history.jsonl").read_text().splitlines()]
    res = {"wall": wall, "rounds_s": sum(r["seconds"] for r in history), "rounds": len(history),
           "acc": {r["round"]: r.get("accuracy") for r in history if r["round"] in (10, 20, 30)}}
    if poller is not None:
        res.update(latencies=poller.latencies, poll_errors=poller.errors)
    return res


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30, help="W1 is 30 rounds (fewer only for a quick check)")
    ap.add_argument("--latency-rounds", type=int, default=2, help="rounds of the 100-party latency run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ui_overhead.json"))
    args = ap.parse_args()
    rounds = ["--rounds", str(args.rounds)]
    tmp = Path(tempfile.mkdtemp(prefix="pollen-ui-bench-"))
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {cpu_model()}, "
          f"load {os.getloadavg()[0]:.2f}; {thread_scaling()}", flush=True)

    pairs = []
    for rep in range(args.reps):
        port = free_port()
        tokens = tmp / f"tokens-{rep}.toml"
        watched = ["--ui-port", str(port), "--ui-token-file", str(tokens), "--track", "tensorboard"]
        poll = {"port": port, "tokens": tokens, "paths": ["/api/runs/{run}", "/api/runs/{run}/rounds?after={after}"],
                "every": 1.0}
        order = [("plain", []), ("watched", watched)] if rep % 2 == 0 else [("watched", watched), ("plain", [])]
        got = {}
        for kind, extra in order:
            got[kind] = simulate(tmp, f"{kind}-{rep}", rounds + extra, poll if kind == "watched" else None)
        p, w = got["plain"], got["watched"]
        pairs.append(got)
        print(f"rep {rep}: plain {p['wall']:.1f}s (rounds {p['rounds_s']:.1f}s) | with ui+tensorboard {w['wall']:.1f}s "
              f"(rounds {w['rounds_s']:.1f}s) | ratio {w['wall'] / p['wall']:.4f} (rounds {w['rounds_s'] / p['rounds_s']:.4f}) "
              f"| {len(w['latencies'])} page polls, p95 {1000 * pct(w['latencies'], 0.95):.1f} ms | acc {p['acc']} / {w['acc']}",
              flush=True)

    # B: 100 parties report every round; the client calls the API back to back.
    port = free_port()
    tokens = tmp / "tokens-latency.toml"
    poll = {"port": port, "tokens": tokens, "every": 0.0,
            "paths": ["/api/runs", "/api/runs/{run}", "/api/runs/{run}/rounds?after=0", "/api/runs/{run}/parties"]}
    lat = simulate(tmp, "latency", ["--rounds", str(args.latency_rounds), "--parties-per-round", "100", "--ui-port",
                                    str(port), "--ui-token-file", str(tokens), "--track", "tensorboard"], poll)
    ms = [1000 * x for x in lat["latencies"]]
    print(f"latency with 100 parties reporting: {len(ms)} calls over {lat['wall']:.0f}s, p50 {pct(ms, .5):.1f} ms, "
          f"p95 {pct(ms, .95):.1f} ms, p99 {pct(ms, .99):.1f} ms, max {max(ms):.1f} ms", flush=True)

    ratios = [g["watched"]["wall"] / g["plain"]["wall"] for g in pairs]
    rratios = [g["watched"]["rounds_s"] / g["plain"]["rounds_s"] for g in pairs]
    summary = {
        "date_utc": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}", "cores": os.cpu_count(), "cpu": cpu_model(),
        "rounds": args.rounds, "reps": args.reps,
        "wall_ratio_median": statistics.median(ratios), "wall_ratios": ratios,
        "rounds_ratio_median": statistics.median(rratios), "rounds_ratios": rratios,
        "plain_wall": [g["plain"]["wall"] for g in pairs], "watched_wall": [g["watched"]["wall"] for g in pairs],
        "accuracy": {"plain": [g["plain"]["acc"] for g in pairs], "watched": [g["watched"]["acc"] for g in pairs]},
        "page_poll_p95_ms": [1000 * pct(g["watched"]["latencies"], 0.95) for g in pairs],
        "latency_100_parties": {"calls": len(ms), "p50_ms": pct(ms, .5), "p95_ms": pct(ms, .95), "p99_ms": pct(ms, .99),
                                "max_ms": max(ms), "seconds": lat["wall"], "rounds": lat["rounds"],
                                "errors_before_open": lat["poll_errors"]},
    }
    print(f"W1 with --ui-port and --track tensorboard / without: median {summary['wall_ratio_median']:.4f} "
          f"({min(ratios):.4f}–{max(ratios):.4f}); rounds only {summary['rounds_ratio_median']:.4f} "
          f"({min(rratios):.4f}–{max(rratios):.4f})", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
