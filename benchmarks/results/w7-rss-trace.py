"""W7 at 100k parties (inline, 1 thread): RSS after every round, to tell a plateau from growth."""
import sys, tempfile, time
import torch
from pollen.config import make_config
from pollen.simulation import simulate
from pollen.telemetry.events import RoundCompleted

torch.set_num_threads(1)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
def rss():
    for l in open("/proc/self/status"):
        if l.startswith(("VmRSS", "VmHWM")):
            yield int(l.split()[1]) // 1024
out = []
def on(e):
    if isinstance(e, RoundCompleted):
        r, h = rss(); out.append((e.round, r, h)); print(e.round, "rss", r, "hwm", h, flush=True)
cfg = make_config({"data": {"dataset": "fmnist", "parties": 100000, "partition": "draw", "party_size": 6},
    "model": {"model": "fedavg_cnn"}, "train": {"lr": 0.05, "batch_size": 32, "epochs": 1},
    "federation": {"rounds": rounds, "parties_per_round": 100, "eval_every": 1},
    "simulation": {"backend": "inline", "threads": 1},
    "run": {"name": "w7", "runs_dir": tempfile.mkdtemp(), "seed": 0, "progress": False, "device": "cpu"}})
simulate(cfg, callbacks=[on])
