"""End-to-end test helpers: real ``pollen`` processes talking gRPC with mutual TLS on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


ROUNDS, PARTIES = 4, 3
RUN = {"data": {"dataset": "digits", "parties": PARTIES}, "federation": {"rounds": ROUNDS}, "train": {"epochs": 2},
       "simulation": {"threads": 1}, "run": {"seed": 0, "progress": False}}  # parties train with 1 thread too
RUN_FLAGS = ["--dataset", "digits", "--num-parties", str(PARTIES), "--rounds", str(ROUNDS), "--epochs", "2",
             "--seed", "0", "--no-progress", "--host", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def history(run_dir: Path) -> list[dict]:
    p = run_dir / "history.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip().endswith("}")]


class Procs:
    """Starts ``pollen`` subcommands as processes and kills what is left at the end."""

    def __init__(self, root: Path) -> None:
        self.root, self.started = root, []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(self.root / f"{name}.log", "ab")
        p = subprocess.Popen([sys.executable, "-m", "pollen.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                             env=env, cwd=self.root)  # SIGINT as usual: tests/conftest.py
        self.started.append(p)
        return p

    def run(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run([sys.executable, "-m", "pollen.cli", *args], capture_output=True, text=True,
                             timeout=timeout, cwd=self.root)
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    def party(self, pid: int, port: int) -> subprocess.Popen:
        return self.start(f"party{pid}", "client", "--party-id", str(pid), "--server", f"localhost:{port}",
                          "--data-path", str(self.root / "data" / f"party{pid}"), "--certs-dir", str(self.root / "certs"),
                          "--backoff-cap", "1", "--threads", "1")

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)


def setup_root(procs: Procs, prepared: Path) -> None:
    import shutil

    for name in ("certs", "data"):
        shutil.copytree(prepared / name, procs.root / name)


def assert_same_model(run_dir: Path, expected: dict) -> None:
    got = load_file(str(run_dir / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
