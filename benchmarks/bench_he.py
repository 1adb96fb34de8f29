"""CKKS overhead against plain FedAvg (W1-like, same script), and attacks with and without protection.

    python benchmarks/bench_he.py --part all --reps 3 --rounds 2 --out benchmarks/results/he-and-attacks.json

Parts:
  he         W1 setting (Fashion-MNIST, 100 IID parties, 10 sampled per round, FedAvg CNN with
             1.66M parameters, inline simulation, evaluation every round): plain FedAvg and
             FedAvg --he run alternately ``--reps`` times for ``--rounds`` rounds each; ratio of
             median round times within each repetition, bytes up per round; plus the cost of
             each CKKS operation on a 1.66M-float vector.
  mia        membership inference (loss threshold, offline LiRA with --shadows models) on
             digits/MLP runs (5 parties, 10 rounds of 10 local epochs, all parties every round):
             plain, --he, party-level central DP and DP-SGD at ε = 8 (δ = 1e-5), with the DP
             bound TPR ≤ e^ε·FPR + δ checked.
  inversion  gradient inversion of one party's first update (batch of 1) on Fashion-MNIST with
             the FedAvg CNN and an MLP: no protection, local DP noise, a sum of 10 parties.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    load = open("/proc/loadavg").read().split()[:3]
    return {"cpu": cpu, "cores": __import__("os").cpu_count(), "ram_gib": round(int(mem) / 2**20, 1),
            "loadavg_at_start": load, "python": platform.python_version()}


def simulate(args: list[str]) -> list[dict]:
    """Run ``pollen simulate`` in a subprocess; return its history."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "pollen.cli", "simulate", "--runs-dir", d, "--name", "r", "--no-progress", *args]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return [json.loads(ln) for ln in (Path(d) / "r" / "history.jsonl").read_text().splitlines()]


def run_keep(args: list[str], runs_dir: Path, name: str) -> Path:
    cmd = [sys.executable, "-m", "pollen.cli", "simulate", "--runs-dir", str(runs_dir), "--name", name, "--no-progress", *args]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return runs_dir / name


def he_micro(keys: Path, reps: int) -> dict:
    """Cost of each CKKS operation on a vector the size of the FedAvg CNN (1,663,370 floats)."""
    from pollen.privacy import he

    info = he.read_info(keys)
    pub = he.load_context(keys / he.PUBLIC_FILE, secret=False)
    sec = he.load_context(keys / he.SECRET_FILE, secret=True)
    n = 1_663_370
    vec = np.random.default_rng(0).normal(0, 1, n)
    out: dict[str, list[float]] = {k: [] for k in ("encrypt_and_serialise_s", "sum_of_10_s", "decrypt_s")}
    for _ in range(reps):
        t = time.perf_counter()
        packed = he.encrypt_vector(pub, vec, int(info["slots"]))
        out["encrypt_and_serialise_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        total = he.sum_encrypted(pub, [packed] * 10)
        out["sum_of_10_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain = he.decrypt_vector(sec, total, n)
        out["decrypt_s"].append(time.perf_counter() - t)
    res = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in out.items()}
    res.update(floats=n, ciphertexts=len(packed[he.OFFSETS_KEY]) - 1, bytes=int(packed[he.DATA_KEY].size),
               bytes_per_float=packed[he.DATA_KEY].size / n, float32_bytes=4 * n,
               max_abs_error_sum_of_10=float(np.max(np.abs(plain - 10 * vec))),
               public_context_bytes=(keys / he.PUBLIC_FILE).stat().st_size, params=info)
    return res


def part_he(keys: Path, reps: int, rounds: int) -> dict:
    w1 = ["--dataset", "fmnist", "--parties", "100", "--parties-per-round", "10", "--rounds", str(rounds),
          "--model", "fedavg_cnn", "--lr", "0.05", "--batch-size", "32", "--holdout", "0", "--seed", "0", "--device", "cpu"]
    reps_out = []
    for r in range(reps):
        plain = simulate(w1)
        enc = simulate([*w1, "--he", "--he-keys", str(keys)])
        p_t = statistics.median(h["seconds"] for h in plain)
        e_t = statistics.median(h["seconds"] for h in enc)
        reps_out.append({"plain_round_s": p_t, "he_round_s": e_t, "ratio": e_t / p_t,
                         "plain_bytes_up": plain[-1]["bytes_up"], "he_bytes_up": enc[-1]["bytes_up"],
                         "plain_acc": plain[-1].get("accuracy"), "he_acc": enc[-1].get("accuracy")})
        print(f"rep {r}: " + json.dumps(reps_out[-1]), flush=True)
    ratios = [x["ratio"] for x in reps_out]
    return {"rounds_per_run": rounds, "reps": reps_out, "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "bytes_up_ratio": reps_out[0]["he_bytes_up"] / reps_out[0]["plain_bytes_up"],
            "micro": he_micro(keys, 3)}


def save_partial(path: Path, key: str, value: dict) -> None:
    """Write what is measured so far (a long benchmark on a shared machine may be cut short)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, default=str))


def part_cpu(keys: Path, reps: int, out_path: Path) -> dict:
    """CPU seconds (``time.process_time``, one torch thread) of one W1 round, plain vs with CKKS.

    On a machine shared by dozens of processes the wall clock measures the queue, not the work;
    CPU time of the same steps in one process is the robust comparison. Plain round = 10 parties
    train (one epoch of 600 records each) + weighted mean + evaluation on the 10k test set; the
    CKKS round adds what ``--he`` adds: 10 encryptions, the coordinator's sum, one decryption.
    """
    import torch

    from pollen.compose import assemble
    from pollen.config import make_config
    from pollen.privacy.he_step import CKKSEncrypt
    from pollen.strategy.base import WeightedMean
    from pollen.transforms.base import StepContext
    from pollen.transport.inprocess import InProcessTransport
    from pollen.types import RoundConfig

    torch.set_num_threads(1)
    cfg = make_config({"data": {"dataset": "fmnist", "parties": 100, "holdout": 0}, "model": {"model": "fedavg_cnn"},
                       "privacy": {"he": True, "he_keys": str(keys)}, "run": {"device": "cpu"}})
    run = assemble(cfg)  # its pipeline is the CKKS step; its parties answer the decryption task
    trainer = run.trainer()
    state = run.initial_state()
    step = next(s for s in run.pipeline.steps if isinstance(s, CKKSEncrypt))
    ids = [str(i) for i in np.random.default_rng([0, 1]).choice(100, 10, replace=False)]
    parties = run.parties(trainer, ids)
    for p in ids:
        parties[p].data  # load the parties' data before the clock starts (parties load it lazily)
    transport = InProcessTransport(parties)
    evaluate = run.evaluator(trainer)
    config = RoundConfig(lr=0.05, batch_size=32)
    rows = []
    for r in range(reps):
        t = time.process_time()
        updates = [trainer.fit(state, parties[p].train, config, torch.Generator().manual_seed(r)) for p in ids]
        WeightedMean().aggregate(updates)
        evaluate(state)
        plain = time.process_time() - t
        t = time.process_time()
        enc = [step.encode(u, StepContext(p, 1, np.random.default_rng(0))) for u, p in zip(updates, ids)]
        t_enc = time.process_time() - t
        t = time.process_time()
        step.combine(enc, ids, 1, transport)  # sum on the coordinator + decryption by a party
        t_comb = time.process_time() - t
        rows.append({"plain_round_cpu_s": plain, "encrypt_10_cpu_s": t_enc, "sum_and_decrypt_cpu_s": t_comb,
                     "ratio": (plain + t_enc + t_comb) / plain,
                     "bytes_up_plain": sum(int(sum(v.nbytes for v in u.delta.values())) for u in updates),
                     "bytes_up_he": sum(int(sum(v.nbytes for v in u.delta.values())) for u in enc)})
        print("cpu rep", r, json.dumps(rows[-1]), flush=True)
        save_partial(out_path, "he_cpu", {"reps": rows})
    ratios = [x["ratio"] for x in rows]
    out = {"reps": rows, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    save_partial(out_path, "he_cpu", out)
    return out


def part_mia(keys: Path, work: Path, shadows: int, out_path: Path) -> dict:
    from pollen.attacks.privacy_audit import LoadedRun, attack_membership

    base = ["--dataset", "digits", "--parties", "5", "--fraction", "1", "--rounds", "10", "--epochs", "10",
            "--model", "mlp", "--holdout", "0", "--lr", "0.05", "--seed", "0", "--device", "cpu"]
    variants = {
        "plain": [],
        "client-dp central ε=8": ["--client-dp", "central", "--target-epsilon", "8", "--delta", "1e-5"],
        "he": ["--he", "--he-keys", str(keys)],
        "dp-sgd ε=8": ["--dp-sgd", "--target-epsilon", "8", "--delta", "1e-5"],
    }
    out = {}
    for name, extra in variants.items():
        t = time.perf_counter()
        try:
            run = run_keep([*base, *extra], work, name.split()[0])
        except subprocess.CalledProcessError as exc:
            out[name] = {"error": exc.stderr.decode()[-400:]}
            continue
        loaded = LoadedRun.load(run)
        res = attack_membership(loaded, candidates=1000, shadows=shadows, bootstrap=200)
        res["accuracy"] = loaded.history[-1].get("accuracy")
        res["train_seconds"] = time.perf_counter() - t
        out[name] = res
        print(name, {k: v["auc"]["value"] for k, v in res["attacks"].items()}, flush=True)
        save_partial(out_path, "mia", out)
    return out


def part_inversion(work: Path, steps: int, out_path: Path) -> dict:
    from pollen.attacks.privacy_audit import LoadedRun, attack_inversion

    out = {}
    for model in ("mlp", "fedavg_cnn"):
        run = run_keep(["--dataset", "fmnist", "--parties", "100", "--parties-per-round", "10", "--rounds", "1",
                        "--model", model, "--holdout", "0", "--eval-every", "1", "--device", "cpu"], work, f"inv-{model}")
        loaded = LoadedRun.load(run)
        for prot, kw in (("none", {}), ("dp σ=0.01", {"protection": "dp", "noise_multiplier": 0.01}),
                         ("dp σ=1", {"protection": "dp", "noise_multiplier": 1.0}),
                         ("sum of 10 (secagg/HE)", {"protection": "sum", "sum_of": 10})):
            scores = []
            for seed in range(3):
                r = attack_inversion(loaded, "0", 1, steps, seed=seed, **kw)
                scores.append(r["psnr_db"])
            out[f"{model} / {prot}"] = {"psnr_median": statistics.median(scores), "psnr_min": min(scores),
                                        "psnr_max": max(scores), "label_correct": r["label_correct"],
                                        "attacker_knows": r["attacker_knows"], "steps": steps}
            print(model, prot, [round(s, 1) for s in scores], flush=True)
            save_partial(out_path, "inversion", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("he", "cpu", "mia", "inversion", "all"), default="all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shadows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/he-and-attacks.json"))
    ap.add_argument("--micro-only", action="store_true", help="with --part he: only the cost of each CKKS operation")
    args = ap.parse_args()
    from pollen.privacy.he import write_keys

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": " ".join(sys.argv)}
    out_path = Path(args.out)
    if out_path.exists():
        result = {**json.loads(out_path.read_text()), **{k: result[k] for k in ("date", "machine", "command")}}
    with tempfile.TemporaryDirectory() as d:
        keys = Path(d) / "keys"
        write_keys(keys)
        work = Path(d) / "runs"
        if args.part == "cpu":
            result["he_cpu"] = part_cpu(keys, args.reps, out_path)
        elif args.micro_only:
            result["he_micro"] = he_micro(keys, 3)
        elif args.part in ("he", "all"):
            result["he"] = part_he(keys, args.reps, args.rounds)
        if args.part in ("mia", "all"):
            result["mia"] = part_mia(keys, work, args.shadows, out_path)
        if args.part in ("inversion", "all"):
            result["inversion"] = part_inversion(work, args.steps, out_path)
    if out_path.exists():
        result = {**json.loads(out_path.read_text()), **result}
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {out_path}")


if __name__ == "__main__":
    main()
