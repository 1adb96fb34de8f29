"""The Ray backend: a Pollen-started local Ray and a two-node Ray cluster on 127.0.0.1 (head and
worker started with ``ray start``) train the same model as inline simulation; parties run on both
nodes; a party's state (SCAFFOLD's control variate) survives the death of the actors that held it.

Ray starts several processes: run these under ``cpuslot --all``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the 'ray' extra (in 'dev') is needed for these tests")

from pollen.simulation.ray_backend import RAY_ENV  # noqa: E402


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `ray start` for a second node: Ray refuses to add a node in its local mode
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), and in cluster mode it replaces --node-ip-address=127.0.0.1
# by the machine's own address (resolve_ip_for_localhost). Keeping the address as given is the one
# change here; everything else is Ray's own CLI.
_JOIN = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
         "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node, one CPU each, every address 127.0.0.1, started with `ray start`."""
    temp = Path(tempfile.mkdtemp(prefix="pr", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": os.pathsep.join(sys.path)}
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]

    def ray_start(cmd: list[str], extra_env: dict[str, str]) -> None:
        done = subprocess.run([*cmd, *common], env={**env, **extra_env}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    try:
        ray_start([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
                   "--include-dashboard=false", f"--temp-dir={temp}"], {})
        ray_start([sys.executable, "-c", _JOIN, "start", f"--address=127.0.0.1:{port}"],
                  {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"})
        yield f"127.0.0.1:{port}", temp
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop_processes_of(temp)  # only this cluster's processes, by pid (not `ray stop`: it stops every Ray)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_processes_of(temp: Path) -> None:
    """Terminate the processes whose command line names ``temp`` (this cluster's head, worker,
    raylets, GCS and Ray workers), then kill what is left after 3 s."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in part for part in (proc.info["cmdline"] or [])):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=3)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _inline(digits_cfg, **sections):
    from pollen.simulation import simulate

    return simulate(digits_cfg(run={"name": "inline"}, simulation={"threads": 1}, **sections)).state


def test_local_ray_started_by_pollen_gives_the_inline_model(digits_cfg, tmp_path):
    from pollen.simulation import simulate

    # a short run folder: a Pollen-started Ray keeps its sockets in <run>/ray
    short = Path(tempfile.mkdtemp(prefix="pr", dir="/tmp"))
    try:
        cfg = digits_cfg(simulation={"backend": "ray", "workers": 2, "threads": 1}, run={"name": "r", "runs_dir": str(short)})
        result = simulate(cfg)
        assert (result.run_dir / "ray").is_dir()  # Ray's temporary files inside the run folder
        assert not ray.is_initialized()  # Pollen stopped the Ray it started
        _same(result.state, _inline(digits_cfg))
        assert [r["parties"] for r in result.history] == [["0", "1", "2", "3"]] * 3
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _run_on(address: str, cfg, run_dir: Path, kill_after_round: int | None = None):
    import ray._private.ray_constants as constants

    from pollen.compose import assemble
    from pollen.simulation.ray_backend import RayTransport
    from pollen.telemetry.events import EventBus, RoundCompleted

    cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"ray_address": address, "threads": 1})})
    fed = assemble(cfg)
    local_mode = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False  # this driver takes 127.0.0.1 as its address, as the nodes do
    try:
        transport = RayTransport(fed, run_dir, state_dir=run_dir / "party_state", actors=2)
    finally:
        constants.ENABLE_RAY_CLUSTER = local_mode
    bus = EventBus()

    def kill(event):  # between rounds: every actor, and with it every party state held in memory
        if isinstance(event, RoundCompleted) and event.round == kill_after_round:
            for actor in transport.actors:
                ray.kill(actor, no_restart=True)

    bus.subscribe(kill)
    try:
        state = fed.coordinator(transport, bus).run(fed.initial_state())
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        return state, dict(transport.served), transport.replaced, nodes
    finally:
        transport.close()
        ray.shutdown()


def _remote_peers(temp: Path) -> set[str]:
    """Addresses other than loopback that the cluster's processes are connected to."""
    import ipaddress

    import psutil

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%")[0])
        mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view
        return (mapped or addr).is_loopback

    out = set()
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp) in part for part in (proc.info["cmdline"] or [])):
                out |= {c.raddr.ip for c in proc.net_connections(kind="inet") if c.raddr and not loopback(c.raddr.ip)}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_two_node_cluster_gives_the_inline_model_with_parties_on_both_nodes(cluster, digits_cfg, tmp_path):
    address, temp = cluster
    state, served, _, nodes = _run_on(address, digits_cfg(), tmp_path / "run")
    assert len(served) == 2 and all(n > 0 for n in served.values())  # tasks ran on the head and on the worker
    assert nodes == {"127.0.0.1"} and not _remote_peers(temp)  # every node and connection on loopback
    _same(state, _inline(digits_cfg))


def test_party_state_survives_the_death_of_its_actor(cluster, digits_cfg, tmp_path):
    strategy = {"name": "scaffold"}  # each party's control variate cᵢ changes every round it trains
    state, _, replaced, _ = _run_on(cluster[0], digits_cfg(strategy=strategy), tmp_path / "run", kill_after_round=1)
    assert replaced == 2  # both actors died and were replaced
    assert any((tmp_path / "run" / "party_state").rglob("*.safetensors"))
    _same(state, _inline(digits_cfg, strategy=strategy))  # with cᵢ lost, round 2 would train differently
