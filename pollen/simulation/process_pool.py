"""The process-pool transport: parties live in worker processes, one torch thread each.

Party ``i`` lives in worker ``i mod W`` for the whole run; its state (control variates,
error-feedback residuals, ledgers) is kept in the run's party-state store on disk, with an LRU in
the worker's memory, and its data is loaded only when it is sampled. Tasks and replies cross the process boundary
as safetensors bytes (raw tensor buffers + JSON header), never pickled objects. Each worker
imports the app by its reference and assembles its parties with ``pollen.compose.assemble``,
like every other mode (loading and partitioning are deterministic).
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from pollen.errors import ConfigError, TransportError
from pollen.serialization import reply_from_bytes, reply_to_bytes, task_from_bytes, task_to_bytes
from pollen.transport.base import Transport
from pollen.types import Reply, Task


def _worker(conn: Connection, cfg_dict: dict[str, Any], app_ref: str, ids: list[str], threads: int,
            state_dir: str | None, resume_round: int | None) -> None:
    import torch

    from pollen.compose import assemble
    from pollen.config import make_config

    torch.set_num_threads(threads)
    assembly = assemble(make_config(cfg_dict), app_ref)
    parties = assembly.party_pool(assembly.trainer(), ids, state_dir, resume_round)
    conn.send_bytes(b"ready")
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        if data == b"stop":
            return
        task = task_from_bytes(data)
        conn.send_bytes(reply_to_bytes(parties.handle(task)))


class ProcessPoolTransport(Transport):
    """Runs parties in ``workers`` processes.

    Args:
        assembly: the run (``pollen.compose.Assembly``); each worker assembles it again from its
            config and app reference.
        workers: number of worker processes.
        threads: torch threads per worker.
        state_dir: the run's party-state store (None: each worker's memory only).
        resume_round: the round a resumed run starts at (parties read the state saved before it).

    Raises:
        ConfigError: the app was given as an object no other process can import.
    """

    def __init__(self, assembly: Any, workers: int, threads: int = 1, state_dir: Any = None,
                 resume_round: int | None = None) -> None:
        app_ref = assembly.app.reference
        if app_ref is None:
            raise ConfigError("worker processes import the app by name: give it as a .py file or a module name")
        cfg_dict = assembly.cfg.to_dict()
        self.ids = list(assembly.party_ids)
        workers = max(1, min(workers, len(self.ids)))
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs = []
        self._owner: dict[str, int] = {}
        for w in range(workers):
            mine = self.ids[w::workers]
            for pid in mine:
                self._owner[pid] = w
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, daemon=True, args=(child, cfg_dict, app_ref, mine, threads,
                                                                  None if state_dir is None else str(state_dir), resume_round))
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for w, conn in enumerate(self._conns):
            try:
                if conn.recv_bytes() != b"ready":
                    raise TransportError(f"worker {w} sent an unexpected greeting")
            except EOFError:
                raise TransportError(f"worker {w} died while loading its parties (see its error above)") from None
        self._queues: list[deque[bytes]] = [deque() for _ in self._conns]
        self._busy: list[Task | None] = [None] * len(self._conns)
        self._sent: list[int] = [0] * len(self._conns)
        self._tasks: list[deque[Task]] = [deque() for _ in self._conns]

    def available(self) -> list[str]:
        return list(self.ids)

    def submit(self, task: Task) -> None:
        w = self._owner.get(task.party_id)
        if w is None:
            raise TransportError(f"unknown party {task.party_id!r}")
        self._tasks[w].append(task)
        self._dispatch(w)

    def _dispatch(self, w: int) -> None:
        if self._busy[w] is None and self._tasks[w]:
            task = self._tasks[w].popleft()
            self._busy[w] = task
            data = task_to_bytes(task)
            self._sent[w] = len(data)
            self._conns[w].send_bytes(data)

    def poll(self, timeout: float | None = None) -> Reply | None:
        busy = [self._conns[w] for w in range(len(self._conns)) if self._busy[w] is not None]
        if not busy:
            return None
        ready = wait(busy, timeout)
        if not ready:
            return None
        conn = ready[0]
        w = self._conns.index(conn)
        task = self._busy[w]
        self._busy[w] = None
        try:
            data = conn.recv_bytes()
            # bytes as they crossed the pipe, both ways (the coordinator's byte accounting)
            reply = replace(reply_from_bytes(data), bytes_down=self._sent[w], bytes_up=len(data))
        except (EOFError, OSError):
            reply = Reply(task.party_id, task.kind, task.round, failure=f"worker process {w} died")
        self._dispatch(w)
        return reply

    def pending(self) -> int:
        return sum(len(q) for q in self._tasks) + sum(b is not None for b in self._busy)

    def forget(self, round: int) -> None:
        for q in self._tasks:
            keep = [t for t in q if t.round > round]
            q.clear()
            q.extend(keep)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send_bytes(b"stop")
                conn.close()
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []
