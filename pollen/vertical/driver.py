"""The vertical protocol's driver: the sequence of steps, over any ``Transport``.

The driver runs where the coordinator runs (in simulation, the same process as the parties; in
deployment, ``pollen vertical server``, which the parties reach over gRPC with mutual TLS, the
horizontal federation's channel). It sends each party a ``Task`` of kind ``v.*`` and relays what
one party's reply carries to the next party; it holds no keys and no data. Every message is
counted (bytes up: party → coordinator, down: coordinator → party).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pollen.errors import RunError
from pollen.transport.base import Transport
from pollen.types import RoundConfig, Task
from pollen.vertical import psi
from pollen.vertical.config import VerticalConfig

Request = tuple[str, Mapping[str, np.ndarray], Mapping[str, Any]]  # (kind, tensors, settings)


class Exchange:
    """Sends steps to parties and waits for all their replies.

    Args:
        transport: how the parties are reached.
        timeout: seconds to wait for one step's replies (None: for ever).
    """

    def __init__(self, transport: Transport, timeout: float | None = None) -> None:
        self.transport = transport
        self.timeout = timeout
        self.step = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.messages = 0

    def call(self, requests: Mapping[str, Request]) -> dict[str, dict[str, np.ndarray]]:
        """Send each party its request at once; return each party's tensors.

        Raises:
            RunError: a party failed (its reason and the step named), or no reply in time.
        """
        self.step += 1
        sizes = {}
        for pid, (kind, state, extra) in requests.items():
            task = Task(pid, kind, self.step, dict(state), RoundConfig(extra=dict(extra)))
            sizes[pid] = _nbytes(task.state) + len(json.dumps(dict(extra)))
            self.transport.submit(task)
        out: dict[str, dict[str, np.ndarray]] = {}
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while len(out) < len(requests):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            reply = self.transport.poll(timeout=left if left is not None else 5.0)
            if reply is None:
                if deadline is not None and time.monotonic() >= deadline:
                    missing = sorted(set(requests) - set(out))
                    raise RunError(f"no reply from parties {missing} to {requests[missing[0]][0]} within {self.timeout} s")
                continue
            if reply.round != self.step or reply.party_id not in requests:
                continue  # a late reply to an earlier step
            kind = requests[reply.party_id][0]
            if not reply.ok or reply.update is None:
                raise RunError(f"party {reply.party_id} failed at {kind}: {reply.failure or 'no answer'}")
            tensors = dict(reply.update.delta)
            self.bytes_down += reply.bytes_down or sizes[reply.party_id]
            self.bytes_up += reply.bytes_up or _nbytes(tensors)
            self.messages += 2
            out[reply.party_id] = tensors
        return out


def _nbytes(state: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in state.values())) + 16 * len(state)


# ------------------------------------------------------------ PSI and alignment
def align(ex: Exchange, cfg: VerticalConfig) -> dict[str, Any]:
    """Align the feature holders' rows: PSI over their ids (or, with ``psi = false``, their order).

    Returns:
        ``{"aligned": rows in the intersection, "psi_seconds", "psi_bytes", "overlaps"}``.

    Raises:
        RunError: no common id, or (without PSI) parties with different row counts.
    """
    guest, hosts = cfg.guest, cfg.hosts
    t0, b0 = time.perf_counter(), ex.bytes_up + ex.bytes_down
    if not cfg.vertical.psi:
        counts = ex.call({p: ("v.ids.rows", {}, {}) for p in [guest, *hosts]})
        sizes = {p: int(r["count"][0]) for p, r in counts.items()}
        if len(set(sizes.values())) != 1:
            raise RunError(f"psi = false needs rows already aligned, but the parties hold {sizes} rows; turn PSI on")
        return {"aligned": sizes[guest], "psi": False}
    salt = psi.new_salt().hex()  # fresh per session: tags of two sessions cannot be linked
    blinded = ex.call({**{h: ("v.psi.blind", {}, {"salt": salt}) for h in hosts}})
    overlaps = {}
    for h in hosts:
        x = ex.call({guest: ("v.psi.blind", {}, {"salt": salt, "host": h})})[guest]["points"]
        x2 = ex.call({h: ("v.psi.reblind", {"points": x}, {})})[h]["points"]
        got = ex.call({guest: ("v.psi.match", {"host_points": blinded[h]["points"], "reblinded": x2}, {"host": h})})
        overlaps[h] = int(got[guest]["overlap"][0])
    positions = ex.call({guest: ("v.psi.align", {}, {})})[guest]
    counts = ex.call({h: ("v.psi.rows", {"positions": positions[f"pos.{h}"]}, {}) for h in hosts})
    aligned = {int(r["count"][0]) for r in counts.values()}
    size = aligned.pop() if len(aligned) == 1 else -1
    if size <= 0:
        raise RunError(f"the parties share no id (pairwise overlaps with the guest: {overlaps}); check that they write "
                       "their ids alike")
    return {"aligned": size, "psi": True, "psi_seconds": time.perf_counter() - t0,
            "psi_bytes": ex.bytes_up + ex.bytes_down - b0, "overlaps": overlaps}


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions of the aligned rows: a seeded random split that uses no label."""
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    k = int(round(n * test_fraction))
    return np.sort(perm[k:]).astype(np.int64), np.sort(perm[:k]).astype(np.int64)


def run_protocol(ex: Exchange, cfg: VerticalConfig, emit: Callable[[int, dict[str, Any]], None]) -> dict[str, Any]:
    """Align, set up, train (hetero LR or split learning); ``emit(epoch, record)`` after each epoch.

    Returns:
        What summary.json records: alignment, sizes and totals.
    """
    from pollen.vertical import hetero_lr, split

    info = align(ex, cfg)
    train, test = split_rows(info["aligned"], cfg.vertical.test_fraction, cfg.run.seed)
    if len(train) == 0:
        raise RunError(f"{info['aligned']} aligned rows leave none to train on with test_fraction={cfg.vertical.test_fraction}")
    feats = ex.call({p: ("v.setup", {"train": train, "test": test}, {}) for p in [cfg.guest, *cfg.hosts]})
    info.update(train_rows=len(train), test_rows=len(test), features={p: int(r["features"][0]) for p, r in feats.items()})
    t0, b0 = time.perf_counter(), ex.bytes_up + ex.bytes_down
    (hetero_lr.train if cfg.vertical.model == "lr" else split.train)(ex, cfg, len(train), emit)
    info.update(train_seconds=time.perf_counter() - t0, train_bytes=ex.bytes_up + ex.bytes_down - b0,
                messages=ex.messages)
    return info
