"""W4 of BENCHMARKS.md (`net-10`): a coordinator and 10 party processes over gRPC with mutual TLS
on 127.0.0.1, against the inline simulation of the same run, measured in the same script.

- Round time: W1 settings (Fashion-MNIST, fedavg_cnn, SGD lr 0.05, batch 32, 1 epoch, IID shards
  of 600 from the 100-party split) with 10 parties (0-9), all sampled every round, 10 rounds: the
  same work per round as W1 (10 x 600 examples), which is how Flower's W4 anchor (45.6 s per
  round = 9.7x its simulation) was measured. The per-round seconds of the coordinator
  (history.jsonl) over gRPC and inline; variants alternate, each in its own processes; the CPU
  seconds of all processes of a variant are recorded too (the machine is shared).
- Bytes per round: bytes measured on the wire by the transport, against the model's size times
  the parties (the payload).
- Throughput: one 100 MB model sent to a party process and a 100 MB update sent back over TLS
  (serialise, chunk, transfer, check, deserialise), in MB/s, against a plain memory copy.

    python benchmarks/bench_w4_grpc.py --reps 3            # full W4
    python benchmarks/bench_w4_grpc.py --reps 1 --rounds 3 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTIES, SPLIT = 10, 100  # 10 parties take part; the training set is cut into W1's 100 shards of 600
PY = [sys.executable, "-m", "pollen.cli"]
SPLIT_FLAGS = ["--dataset", "fmnist", "--parties", str(SPLIT), "--partition", "iid", "--seed", "0"]  # pollen partition
# pollen server (it reads no split: the parties bring their shards). Every connected party is sampled every round
# (--fraction 1) and training stays on the CPU, as in the inline child.
W1 = ["--dataset", "fmnist", "--parties", str(SPLIT), "--fraction", "1", "--lr", "0.05", "--batch-size", "32",
      "--epochs", "1", "--seed", "0", "--holdout", "0", "--model", "fedavg_cnn", "--device", "cpu", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this script's finished child processes."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_inline(root: Path, rounds: int, tag: str) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--inline-child", str(root / "runs" / tag), str(rounds)], check=True)
    return history(root / "runs" / tag), time.perf_counter() - t0


def inline_child(run_dir: str, rounds: int) -> None:
    """The inline simulation of the same run: parties 0-9 of the 100-party split, one process."""
    import torch

    from pollen.compose import assemble, cores, data_bytes, finish_run, open_run
    from pollen.config import make_config
    from pollen.transport.inprocess import InProcessTransport

    torch.set_num_threads(cores())
    cfg = make_config({"data": {"dataset": "fmnist", "parties": SPLIT, "partition": "iid", "holdout": 0.0},
                       "model": {"model": "fedavg_cnn"}, "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
                       "federation": {"rounds": rounds, "fraction": 1.0},  # all ten parties every round
                       "run": {"seed": 0, "progress": False, "device": "cpu"}})
    assembly = assemble(cfg)
    trainer = assembly.trainer()
    parties = assembly.parties(trainer, [str(i) for i in range(PARTIES)])  # a subset of the 100-party split
    folder = open_run(assembly, run_dir=run_dir)  # history.jsonl (+ config.toml); no checkpoints, as before
    coordinator = assembly.coordinator(InProcessTransport(parties), folder.events, None, assembly.evaluator(trainer))
    state = coordinator.run(assembly.initial_state())
    finish_run(folder, assembly, state, method="fedavg", data_size=data_bytes(assembly, parties), parties=parties)


def run_grpc(root: Path, rounds: int, tag: str) -> tuple[list[dict], float]:
    port = free_port()
    t0 = time.perf_counter()
    log = open(root / f"{tag}.log", "w")
    server = subprocess.Popen([*PY, "server", *W1, "--rounds", str(rounds), "--min-parties", str(PARTIES), "--host", "127.0.0.1", "--heartbeat-interval", "10",
                               "--port", str(port), "--certs-dir", str(root / "certs"), "--runs-dir", str(root / "runs"),
                               "--name", tag], stdout=log, stderr=subprocess.STDOUT)
    parties = [subprocess.Popen([*PY, "client", "--party-id", str(i), "--server", f"localhost:{port}", "--data",
                                 str(root / "data" / f"party{i}"), "--certs-dir", str(root / "certs"), "--threads", "1"],
                                stdout=log, stderr=subprocess.STDOUT) for i in range(PARTIES)]
    if server.wait() != 0:
        raise RuntimeError(f"server failed, see {root / (tag + '.log')}")
    for p in parties:
        p.wait(timeout=60)
    return history(root / "runs" / tag), time.perf_counter() - t0


def throughput(root: Path, mb: int, reps: int) -> dict:
    """Round trip of a ``mb`` MB model to a party process and back, over TLS."""
    import numpy as np

    from pollen.transport.rpc.hub import GrpcTransport
    from pollen.transport.rpc.service import FederationService, start_server
    from pollen.transport.rpc.tls import RevocationList
    from pollen.types import RoundConfig, Task

    hub = GrpcTransport(heartbeat_interval=60.0)
    service = FederationService(hub, {}, 4 * mb * 10**6, False, RevocationList(None))
    server, port = start_server(service, "127.0.0.1", 0, root / "certs")
    child = subprocess.Popen([sys.executable, __file__, "--echo-party", f"localhost:{port}", str(root / "certs")])
    hub.wait_for_parties(1, timeout=120)
    n = mb * 10**6 // 4
    rates, copies = [], []
    for r in range(1, reps + 1):
        state = {"w": np.random.default_rng(r).standard_normal(n, dtype=np.float32)}  # a fresh model each time (no cache)
        t0 = time.perf_counter()
        hub.submit(Task("0", "fit", r, state, RoundConfig(round=r)))
        reply = hub.poll(timeout=600)
        seconds = time.perf_counter() - t0
        if not reply.ok:
            raise RuntimeError(reply.failure)
        rates.append(2 * state["w"].nbytes / 1e6 / seconds)
        t0 = time.perf_counter()
        for _ in range(2):
            np.copy(state["w"])
        copies.append(2 * state["w"].nbytes / 1e6 / (time.perf_counter() - t0))
        wire = (reply.bytes_down + reply.bytes_up) / (2 * state["w"].nbytes)
    hub.close()
    hub.wait_stopped(10)
    server.stop(1).wait()
    child.wait(timeout=30)
    return {"grpc_mb_s": rates, "memcpy_mb_s": copies, "wire_over_payload": wire}


def echo_party(address: str, certs: str) -> None:
    """A party that answers each fit task with a delta of the same shape (for the throughput test)."""
    import numpy as np

    from pollen.transport.rpc import pollen_pb2 as pb
    from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble, to_chunks
    from pollen.transport.rpc.messages import reply_message, task_from_message
    from pollen.transport.rpc.party import PartyOptions, make_channel
    from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
    from pollen.types import Reply, Update

    with make_channel(PartyOptions("0", address, "", certs_dir=certs)) as ch:
        stub = pb_grpc.FederationStub(ch)
        session = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="0")).session
        while True:
            msg = assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=10)), 2**40)
            if msg is None:
                continue
            if msg.header.get("type") == "stop":
                return
            task = task_from_message(msg.header, msg.payload)
            delta = {k: np.full_like(v, 1e-3) for k, v in task.state.items()}
            header, payload = reply_message(Reply("0", "fit", task.round, update=Update(delta, 1)))
            stub.SendReply(to_chunks(header, payload, session=session))


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) // 1024**2 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores, {mem} GiB RAM, {cpu}"


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--skip-rounds", action="store_true", help="only the throughput part")
    ap.add_argument("--echo-party", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--inline-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inline_child:
        inline_child(args.inline_child[0], int(args.inline_child[1]))
        return
    if args.echo_party:
        echo_party(*args.echo_party)
        return
    from pollen.transport.rpc.tls import make_certs

    root = Path(tempfile.mkdtemp(prefix="w4-"))
    make_certs(root / "certs", [str(i) for i in range(PARTIES)])
    out: dict = {"machine": machine(), "load_before": os.getloadavg(), "reps": args.reps, "rounds": args.rounds}
    if not args.skip_rounds:
        subprocess.run([*PY, "partition", "--out", str(root / "data"), *SPLIT_FLAGS], check=True,
                       stdout=subprocess.DEVNULL)
        inline, grpc_ = [], []
        for rep in range(args.reps):  # alternate the variants so that load drifts hit both
            for name, fn, bucket in (("inline", run_inline, inline), ("grpc", run_grpc, grpc_)):
                cpu0 = children_cpu()
                hist, wall = fn(root, args.rounds, f"{name}{rep}")
                cpu = children_cpu() - cpu0  # all processes of the variant (server + parties for gRPC)
                bucket.append({"wall": wall, "cpu": cpu, "round_seconds": [h["seconds"] for h in hist], "history": hist})
                print(f"rep {rep} {name}: wall {wall:.1f} s, cpu {cpu:.1f} s, median round "
                      f"{statistics.median(bucket[-1]['round_seconds']):.2f} s, acc {hist[-1].get('accuracy')}, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        from safetensors.numpy import load_file

        model = load_file(str(root / "runs" / "grpc0" / "model.safetensors"))
        same = load_file(str(root / "runs" / "inline0" / "model.safetensors"))
        payload = sum(v.nbytes for v in model.values())
        out["max_abs_diff_grpc_vs_inline"] = max(float(abs(model[k] - same[k]).max()) for k in model)
        g = grpc_[0]["history"]
        out.update(
            inline_round_medians=[statistics.median(r["round_seconds"]) for r in inline],
            grpc_round_medians=[statistics.median(r["round_seconds"]) for r in grpc_],
            ratios=[statistics.median(g_["round_seconds"]) / statistics.median(i["round_seconds"]) for g_, i in zip(grpc_, inline)],
            inline_walls=[r["wall"] for r in inline], grpc_walls=[r["wall"] for r in grpc_],
            inline_cpu=[r["cpu"] for r in inline], grpc_cpu=[r["cpu"] for r in grpc_],
            inline_round_seconds=[r["round_seconds"] for r in inline], grpc_round_seconds=[r["round_seconds"] for r in grpc_],
            model_bytes=payload, bytes_down_over_payload=[h["bytes_down"] / (payload * PARTIES) for h in g],
            bytes_up_over_payload=[h["bytes_up"] / (payload * PARTIES) for h in g],
            accuracy_inline=[r["history"][-1].get("accuracy") for r in inline],
            accuracy_grpc=[r["history"][-1].get("accuracy") for r in grpc_])
        print(f"round-time ratio gRPC / inline: {spread(out['ratios'])}")
        print(f"bytes down per round / payload: {max(out['bytes_down_over_payload']):.5f}; "
              f"up: {max(out['bytes_up_over_payload']):.5f}")
    tp = throughput(root, args.mb, max(args.reps, 3))
    out["throughput"] = tp
    out["load_after"] = os.getloadavg()
    print(f"{args.mb} MB round trip over TLS: {spread(tp['grpc_mb_s'])} MB/s; memory copy {spread(tp['memcpy_mb_s'])} MB/s; "
          f"wire/payload {tp['wire_over_payload']:.5f}")
    (root / "w4.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"raw results: {root / 'w4.json'}")


if __name__ == "__main__":
    main()
