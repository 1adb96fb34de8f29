"""The Ray backend: simulated parties run in Ray actors, on this machine or a Ray cluster.

``pollen simulate --backend ray`` (optional extra ``ray``). The same ``Coordinator`` and round
loop drive it through the :class:`~pollen.transport.base.Transport` interface:

- **actors**: ``--workers`` actors (default: the cluster's CPUs / ``--party-cpus``), each
  assembling the run once with ``pollen.compose.assemble`` (app, model, trainer, pipeline) and
  serving whichever party a task names; ``--party-cpus`` / ``--party-gpus`` (fractions allowed) are
  each actor's Ray resources, and it trains with that many torch threads;
- **the global model goes into the object store once per round** (its safetensors bytes, as one
  numpy buffer: every actor on a node reads the same shared memory, nothing is pickled), and each
  task carries a reference to it plus a small JSON header;
- **replies are streamed back** as they finish (``ray.wait``), each actor taking the next queued
  task as soon as it is free; a task whose actor died runs once more on the actor that replaces it;
- **party state** lives in the run's party-state store on disk (``<run>/party_state``, an LRU in
  each actor): a party served by another actor, or by an actor that replaced one that died, finds
  its state again. On a multi-machine cluster that folder must be on a filesystem every node sees;
- **Ray itself**: without ``--ray-address`` Pollen starts a local Ray for the run and stops it at
  the end, with its temporary files in ``<run>/ray``, usage statistics and token authentication off
  and its node on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's local mode, which takes
  the loopback address instead of the machine's interface); ``--ray-address HOST:PORT`` (or
  ``auto``) joins a cluster started with ``ray start`` (a cluster on loopback: every node with
  ``--node-ip-address=127.0.0.1`` and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``, which lets nodes join).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import ConfigError, TransportError, require
from pollen.transport.base import Transport
from pollen.types import Reply, Task

log = logging.getLogger(__name__)

# Keep a Pollen-started Ray on loopback and writing nothing outside the run folder (ENVIRONMENT.md).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
MAX_SOCKET_PATH = 107  # AF_UNIX; Ray's sockets live under <temp dir>/session_<date>_<pid>/sockets/


class PartyWorker:
    """One Ray actor: the run assembled once, parties built as tasks name them.

    Args:
        cfg_dict: the run config.
        app_ref: the app's reference (a .py path or module name).
        state_dir: the run's party-state store.
        resume_round: a resumed run's first round.
        threads: torch threads for training.
    """

    def __init__(self, cfg_dict: dict[str, Any], app_ref: str, state_dir: str | None, resume_round: int | None,
                 threads: int) -> None:
        import torch

        from pollen.compose import assemble
        from pollen.config import make_config

        torch.set_num_threads(max(1, threads))
        self.assembly = assemble(make_config(cfg_dict), app_ref)
        self.parties = self.assembly.party_pool(self.assembly.trainer(), None, state_dir, resume_round)

    def node(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def handle(self, header_json: str, payload: np.ndarray) -> bytes:
        """Run one task: ``header_json`` (party, kind, round, config) and the model's safetensors
        bytes (a read-only view of the object store's shared memory); returns the reply's bytes."""
        from pollen.serialization import reply_to_bytes
        from pollen.transport.rpc.tensors import decode
        from pollen.types import RoundConfig

        h = json.loads(header_json)
        state, _ = decode(payload)  # views into the shared buffer: the model is never copied here
        task = Task(h["party_id"], h["kind"], int(h["round"]), state, RoundConfig.from_dict(h["config"]))
        return reply_to_bytes(self.parties.handle(task))

    def state_of(self, party_id: str) -> dict[str, Any]:
        """A party's state as this actor's store reads it (tests)."""
        return dict(self.parties.store.get(party_id))


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        MissingExtraError: Ray is not installed (names the ``ray`` extra).
    """
    return require("ray", "ray", "the Ray backend (--backend ray)")


def start_local_ray(run_dir: Path, num_cpus: int | None, num_gpus: float | None = None) -> None:
    """Start a Ray for this process with its files in ``<run_dir>/ray`` and everything on loopback.

    Raises:
        ConfigError: the run folder's path is too long for Ray's socket paths.
    """
    ray = require_ray()
    temp = (Path(run_dir) / "ray").resolve()
    if len(str(temp)) + 64 > MAX_SOCKET_PATH:  # session_YYYY-MM-DD_HH-MM-SS_NNNNNN_PID/sockets/plasma_store
        raise ConfigError(f"Ray keeps sockets under the run folder, and {temp} is too long for a socket path "
                          f"({len(str(temp))} characters; at most {MAX_SOCKET_PATH - 64}): use a shorter --runs-dir "
                          "or --name, or start Ray yourself and pass --ray-address")
    temp.mkdir(parents=True, exist_ok=True)
    before = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # inherited by the raylet, GCS and workers Ray starts now
    try:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=str(temp), _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)  # workers inherit this process's environment (PYTHONPATH, RAY_ENV)
    finally:
        for k, v in before.items():  # a library call leaves the caller's environment as it was
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RayTransport(Transport):
    """Parties as Ray actors (see the module's docstring).

    Args:
        assembly: the run; each actor assembles it again from its config and app reference.
        run_dir: the run folder (a local Ray keeps its files in ``<run_dir>/ray``).
        state_dir: the party-state store (None: each actor's memory only).
        resume_round: a resumed run's first round.
        actors: actors to start (default ``--workers``, else the cluster's CPUs / ``--party-cpus``).

    Raises:
        ConfigError: an app given as an object (actors import it by name), or no resources.
        MissingExtraError: Ray is not installed (``pip install 'pollen-fl[ray]'``).
    """

    def __init__(self, assembly: Any, run_dir: str | Path, state_dir: str | Path | None = None,
                 resume_round: int | None = None, actors: int | None = None) -> None:
        ray = require_ray()
        app_ref = assembly.app.reference
        if app_ref is None:
            raise ConfigError("Ray actors import the app by name: give it as a .py file or a module name")
        sim = assembly.cfg.simulation
        self._started = False
        if not ray.is_initialized():
            if sim.ray_address:  # the cluster's own settings (auth, addresses) apply; no usage stats from here
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address=sim.ray_address, log_to_driver=False, logging_level=logging.WARNING,
                         configure_logging=False)
            else:
                from pollen.compose import cores

                start_local_ray(Path(run_dir), cores())
                self._started = True
        self.ray = ray
        self.ids = assembly.party_ids
        cpus = float(ray.cluster_resources().get("CPU", 1))
        count = actors or sim.workers or max(1, int(cpus // sim.party_cpus))
        count = max(1, min(count, assembly.party_cache(), len(self.ids)))
        threads = sim.threads or max(1, int(sim.party_cpus))
        remote = ray.remote(PartyWorker).options(num_cpus=sim.party_cpus, num_gpus=sim.party_gpus,
                                                 scheduling_strategy="SPREAD")
        args = (assembly.cfg.to_dict(), app_ref, None if state_dir is None else str(state_dir), resume_round, threads)
        self._make = lambda: remote.remote(*args)  # noqa: E731
        self.actors = [self._make() for _ in range(count)]
        try:
            self.nodes = ray.get([a.node.remote() for a in self.actors], timeout=600)
        except Exception as exc:  # noqa: BLE001 - Ray's own errors (an app that fails to import, …)
            self.close()
            raise TransportError(f"Ray actors failed to start: {str(exc).splitlines()[-1][:500]}") from None
        self._idle: deque[Any] = deque(self.actors)
        self._queue: deque[Task] = deque()
        self._running: dict[Any, tuple[Task, Any]] = {}  # ObjectRef -> (task, actor)
        self._model: tuple[Any, Any] | None = None  # (the state, its ObjectRef)
        self._model_bytes = 0
        self.served: dict[str, int] = {}  # node id -> tasks run there (tests, benchmarks)
        self._retried: set[tuple[str, str, int]] = set()
        self.replaced = 0

    # ------------------------------------------------------------ Transport interface
    def available(self) -> list[str]:
        return list(self.ids)

    def submit(self, task: Task) -> None:
        if task.party_id not in self.ids:
            raise TransportError(f"unknown party {task.party_id!r}")
        self._queue.append(task)
        self._dispatch()

    def poll(self, timeout: float | None = None) -> Reply | None:
        if not self._running:
            return None
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        task, actor = self._running.pop(ref)
        from pollen.serialization import reply_from_bytes

        try:
            data = self.ray.get(ref)
            reply = reply_from_bytes(data)
            reply = Reply(reply.party_id, reply.kind, reply.round, reply.update, reply.evaluation, reply.failure,
                          reply.seconds, bytes_down=self._model_bytes, bytes_up=len(data))
            node = self.nodes[self.actors.index(actor)]
            self.served[node] = self.served.get(node, 0) + 1
            self._idle.append(actor)
        except self.ray.exceptions.RayActorError as exc:
            self._replace(actor)
            key = (task.party_id, task.kind, task.round)
            if key not in self._retried:  # its state is on disk: a fresh actor runs the task again, once
                self._retried.add(key)
                self._queue.appendleft(task)
                self._dispatch()
                return self.poll(timeout)
            reply = Reply(task.party_id, task.kind, task.round, failure=f"Ray actor died: {str(exc).splitlines()[0][:200]}")
        except self.ray.exceptions.RayError as exc:
            reply = Reply(task.party_id, task.kind, task.round, failure=f"Ray: {str(exc).splitlines()[-1][:300]}")
            self._idle.append(actor)
        self._dispatch()
        return reply

    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    def forget(self, round: int) -> None:
        self._queue = deque(t for t in self._queue if t.round > round)

    def close(self) -> None:
        ray = getattr(self, "ray", None) or require_ray()
        for actor in getattr(self, "actors", []):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        self._model = None
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

    # ------------------------------------------------------------ internals
    def _payload(self, task: Task) -> Any:
        """The task's model in the object store: put once per round (every task of a round shares it)."""
        if self._model is None or self._model[0] is not task.state:
            from pollen.transport.rpc.messages import state_payload

            encoded = state_payload(task.state)
            buf = np.empty(encoded.size, dtype=np.uint8)
            pos = 0
            for piece in [memoryview(encoded.head), *encoded.parts]:  # one copy, into the put buffer
                buf[pos : pos + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
                pos += len(piece)
            self._model = (task.state, self.ray.put(buf))
            self._model_bytes = encoded.size
        return self._model[1]

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            task = self._queue.popleft()
            actor = self._idle.popleft()
            header = json.dumps({"party_id": task.party_id, "kind": task.kind, "round": task.round,
                                 "config": task.config.to_dict()})
            self._running[actor.handle.remote(header, self._payload(task))] = (task, actor)

    def _replace(self, actor: Any) -> None:
        """A new actor in place of one that died (its parties' state is on disk)."""
        i = self.actors.index(actor)
        self.actors[i] = self._make()
        try:
            self.nodes[i] = self.ray.get(self.actors[i].node.remote(), timeout=600)
        except self.ray.exceptions.RayError:
            pass
        self._idle.append(self.actors[i])
        self.replaced += 1
