"""Issue 12: the W4 federation (bench_w4_grpc.py's workload: `pollen server` + 10 `pollen client`
processes, mutual TLS on 127.0.0.1, W1 settings, 10 rounds) with and without a flood of
unauthenticated connections, measured in the same script, variants alternated.

- Flood: a process that opens connections to the coordinator's port as fast as it can for at most
  ``--flood-seconds`` (bounded in time), from ``--flood-threads`` threads: half start a TLS handshake
  without a client certificate (the coordinator refuses it: no stream is ever opened), half send an
  HTTP/2 preface in the clear to the TLS port. It counts its attempts. It runs at ``nice 19`` by
  default: on loopback the attacker's own CPU is this machine's, which a real attacker's is not;
  ``--flood-nice 0`` measures it at full priority too (both are reported).
- The coordinator runs with its front door (``--admit-rate``, default 20 new connections/s);
  ``--no-door-variants`` adds the same quiet and flood runs with ``--admit-rate 0`` (gRPC on the
  port, as before the door), each flood compared with the quiet run of its own kind. Flood and
  parties start once the coordinator listens.
- Round time: the median of the coordinator's per-round seconds (history.jsonl), flood / quiet.
- Coordinator memory: its peak RSS (``VmHWM`` of the server process, read every 0.2 s while it
  runs), flood / quiet.
- Log volume: bytes of the coordinator's log (gRPC's handshake lines go through
  ``pollen.transport.rpc.grpclog``: one explanation per 10 s with a count).

    python benchmarks/bench_flood.py --reps 3                 # the issue's benchmark (10 rounds)
    python benchmarks/bench_flood.py --reps 3 --no-door-variants   # … and the same without the front door
    python benchmarks/bench_flood.py --reps 1 --rounds 3      # a quick look
    python benchmarks/bench_flood.py --profile-seconds 20     # CPU of an idle coordinator and of the flood
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_w4_grpc import PARTIES, PY, SPLIT_FLAGS, W1, free_port, history, machine, spread  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def peak_rss(pid: int) -> int:
    """``VmHWM`` (peak resident set) of a running process in bytes, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/<pid>/stat``), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def wait_listening(server: subprocess.Popen, log_path: Path) -> None:
    """Until the coordinator's log says it listens (it fails: RuntimeError)."""
    while "listening" not in log_path.read_text():
        if server.poll() is not None:
            raise RuntimeError(f"server failed, see {log_path}")
        time.sleep(0.05)


def run(root: Path, rounds: int, tag: str, flood: dict | None, admit_rate: float) -> dict:
    """One W4 run (as bench_w4_grpc.run_grpc), optionally under a flood; its measurements."""
    port = free_port()
    log_path = root / f"{tag}.server.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log, open(root / f"{tag}.parties.log", "w") as plog:
        server = subprocess.Popen([*PY, "server", *W1, "--rounds", str(rounds), "--min-parties", str(PARTIES),
                                   "--host", "127.0.0.1", "--heartbeat-interval", "10", "--port", str(port),
                                   "--certs-dir", str(root / "certs"), "--runs-dir", str(root / "runs"), "--name", tag,
                                   "--admit-rate", str(admit_rate)],
                                  stdout=log, stderr=subprocess.STDOUT)
        # flood and parties start once the port is open (in every variant): connections refused by a
        # port nobody listens on yet cost the coordinator nothing and would only measure the flooder
        wait_listening(server, log_path)
        flooder = None
        if flood is not None:
            flooder = subprocess.Popen([sys.executable, __file__, "--flood-child", f"127.0.0.1:{port}",
                                        str(root / "certs" / "ca.pem"), str(flood["seconds"]), str(flood["threads"]),
                                        str(root / f"{tag}.flood.json")],
                                       preexec_fn=lambda: os.nice(flood["nice"]))
        parties = [subprocess.Popen([*PY, "client", "--party-id", str(i), "--server", f"localhost:{port}", "--data",
                                     str(root / "data" / f"party{i}"), "--certs-dir", str(root / "certs"),
                                     "--threads", "1"], stdout=plog, stderr=subprocess.STDOUT)
                   for i in range(PARTIES)]
        peak, cpu = 0, 0.0
        while server.poll() is None:
            peak, cpu = max(peak, peak_rss(server.pid)), max(cpu, cpu_seconds(server.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if flooder is not None:
            flooder.send_signal(signal.SIGTERM)
            flooder.wait(timeout=60)
        for p in parties:
            p.wait(timeout=60)
    if server.returncode != 0:
        raise RuntimeError(f"server failed, see {log_path}")
    hist = history(root / "runs" / tag)
    text = log_path.read_text(errors="replace")
    out = {"wall": wall, "round_seconds": [h["seconds"] for h in hist], "peak_rss": peak, "server_cpu_seconds": cpu,
           "log_bytes": len(text.encode()), "log_lines": text.count("\n"),
           "handshake_lines": sum("refused" in ln or "handshake" in ln.lower() for ln in text.splitlines()),
           "accuracy": hist[-1].get("accuracy"),
           "door": next((ln.split("pollen.transport.grpc: ", 1)[-1] for ln in text.splitlines() if "front door" in ln), "")}
    if flood is not None:
        out["flood"] = json.loads((root / f"{tag}.flood.json").read_text())
    return out


# ---------------------------------------------------------------- the flood
def flood_child(address: str, ca: str, seconds: float, threads: int, out: str) -> None:
    """Open connections to ``address`` as fast as possible for ``seconds`` (or until SIGTERM)."""
    host, port = address.rsplit(":", 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = {"tls_without_certificate": 0, "plaintext_preface": 0, "connect_failed": 0}
    lock = threading.Lock()
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])

    def worker(i: int) -> None:
        kind = "tls_without_certificate" if i % 2 == 0 else "plaintext_preface"
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=5) as sock:
                    if kind == "plaintext_preface":
                        sock.sendall(PREFACE)
                        sock.recv(64)
                    else:
                        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                            tls.sendall(PREFACE)  # TLS 1.3: the refusal of the missing certificate comes here
                            tls.recv(64)
                with lock:
                    counts[kind] += 1
            except ConnectionRefusedError:  # nobody listens (the run ended): not a connection the coordinator handled
                with lock:
                    counts["connect_failed"] += 1
            except (OSError, ssl.SSLError):
                with lock:
                    counts[kind] += 1  # refused mid-way: still one connection the coordinator handled
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join(timeout=10)
    elapsed = time.perf_counter() - t0
    total = counts["tls_without_certificate"] + counts["plaintext_preface"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(json.dumps({**counts, "seconds": elapsed, "connections": total,
                                     "cpu_seconds": usage.ru_utime + usage.ru_stime,
                                     "per_second": total / max(elapsed, 1e-9)}))


def profile(root: Path, seconds: float, threads: int, nice: int, admit_rate: float) -> dict:
    """Where a flood's CPU goes: a coordinator waiting for its parties (no training) under a flood of
    ``seconds``; CPU seconds per wall second of the coordinator and of the flooding process."""
    port = free_port()
    log_path = root / f"profile-nice{nice}.server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([*PY, "server", *W1, "--rounds", "1", "--min-parties", str(PARTIES), "--host",
                                   "127.0.0.1", "--port", str(port), "--certs-dir", str(root / "certs"),
                                   "--runs-dir", str(root / "runs"), "--name", f"profile-nice{nice}",
                                   "--admit-rate", str(admit_rate)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(server, log_path)
            before, t0 = cpu_seconds(server.pid), time.perf_counter()
            subprocess.run([sys.executable, __file__, "--flood-child", f"127.0.0.1:{port}", str(root / "certs" / "ca.pem"),
                            str(seconds), str(threads), str(root / "profile.flood.json")],
                           preexec_fn=lambda: os.nice(nice), check=True)
            wall, server_cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - before
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    fl = json.loads((root / "profile.flood.json").read_text())
    out = {"nice": nice, "seconds": wall, "connections_per_second": fl["per_second"],
           "coordinator_cores": server_cpu / wall, "flooder_cores": fl["cpu_seconds"] / wall,
           "coordinator_ms_per_connection": 1000 * server_cpu / max(fl["connections"], 1)}
    print(f"profile nice {nice}: {fl['per_second']:.0f} connections/s; coordinator {out['coordinator_cores']:.2f} "
          f"cores ({out['coordinator_ms_per_connection']:.3f} ms per connection), flooder {out['flooder_cores']:.2f} "
          f"cores", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--flood-seconds", type=float, default=600.0, help="the flood stops after this (or with the run)")
    ap.add_argument("--flood-threads", type=int, default=8)
    ap.add_argument("--flood-nice", type=int, nargs="+", default=[19, 0],
                    help="niceness of the flooding process; one flood variant per value")
    ap.add_argument("--admit-rate", type=float, default=20.0,
                    help="the coordinator's --admit-rate (new connections per second its front door admits; "
                         "0: no front door, gRPC owns the port as before issue 12's second part)")
    ap.add_argument("--no-door-variants", action="store_true",
                    help="also run the quiet and flood variants with --admit-rate 0 (gRPC on the port, no front door)")
    ap.add_argument("--out", help="write the raw results here (JSON)")
    ap.add_argument("--profile-seconds", type=float, default=0.0,
                    help="only profile: CPU of an idle coordinator and of the flood over this many seconds")
    ap.add_argument("--flood-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood_child:
        a = args.flood_child
        flood_child(a[0], a[1], float(a[2]), int(a[3]), a[4])
        return
    from pollen.transport.rpc.tls import make_certs

    root = Path(tempfile.mkdtemp(prefix="flood-"))
    make_certs(root / "certs", [str(i) for i in range(PARTIES)])
    subprocess.run([*PY, "partition", "--out", str(root / "data"), *SPLIT_FLAGS], check=True, stdout=subprocess.DEVNULL)
    if args.profile_seconds:
        prof = [profile(root, args.profile_seconds, args.flood_threads, n, args.admit_rate) for n in args.flood_nice]
        out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": prof}
        path = Path(args.out) if args.out else root / "flood-profile.json"
        path.write_text(json.dumps(out, indent=1))
        print(f"raw results: {path}")
        return
    flood = {"seconds": args.flood_seconds, "threads": args.flood_threads}
    variants = [("quiet", None, args.admit_rate)] + [(f"flood-nice{n}", {**flood, "nice": n}, args.admit_rate)
                                                      for n in args.flood_nice]
    if args.no_door_variants:  # the same federation with gRPC on the port (--admit-rate 0), as before the door
        variants += [("quiet-no-door", None, 0.0)] + [(f"flood-nice{n}-no-door", {**flood, "nice": n}, 0.0)
                                                       for n in args.flood_nice]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load_before": os.getloadavg(), "reps": args.reps, "rounds": args.rounds,
           "flood_threads": args.flood_threads, "flood_seconds": args.flood_seconds, "admit_rate": args.admit_rate}
    for rep in range(args.reps):  # alternate the variants so that load drifts hit all
        for name, fl_args, rate in variants:
            r = run(root, args.rounds, f"{name}{rep}", fl_args, rate)
            results[name].append(r)
            fl = r.get("flood", {})
            print(f"rep {rep} {name}: median round {statistics.median(r['round_seconds']):.2f} s, peak RSS "
                  f"{r['peak_rss'] / 2**20:.0f} MiB, log {r['log_bytes']} B, wall {r['wall']:.1f} s"
                  + (f", flood {fl.get('connections')} connections ({fl.get('per_second', 0):.0f}/s, flooder "
                     f"{fl.get('cpu_seconds', 0) / max(fl.get('seconds', 1), 1e-9):.2f} cores)" if fl else "")
                  + (f", {r['door']}" if r.get("door") else "") + f", load {os.getloadavg()[0]:.1f}", flush=True)
    for name, fl_args, rate in variants:
        base = "quiet" if rate else "quiet-no-door"
        if name == base:
            continue
        rs, quiet = results[name], results[base]
        time_ratio = [statistics.median(f["round_seconds"]) / statistics.median(q["round_seconds"]) for f, q in zip(rs, quiet)]
        mem_ratio = [f["peak_rss"] / q["peak_rss"] for f, q in zip(rs, quiet)]
        out[name] = {"against": base, "round_time_ratio": time_ratio, "peak_rss_ratio": mem_ratio,
                     "connections_per_second": [f.get("flood", {}).get("per_second", 0.0) for f in rs],
                     "log_bytes": [f["log_bytes"] for f in rs]}
        print(f"{name} / {base}: round time {spread(time_ratio)}; coordinator peak RSS {spread(mem_ratio)}"
              + (f"; connections/s {spread(out[name]['connections_per_second'])}" if fl_args else ""))
    out["runs"] = results
    out["load_after"] = os.getloadavg()
    path = Path(args.out) if args.out else root / "flood.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
