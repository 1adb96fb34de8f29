"""Two benchmark children taking turns, so that the host's speed drift lands on both.

On this shared host the speed of the same job drifts by several per cent within minutes (plain-loop
runs of one 5-round W1 job took 28.8–36.2 s minutes apart): measured one whole job after the other,
the drift lands on whichever variant runs during it. With ``run``, both children start together and
take turns: each runs until it calls ``turn()`` (W1: after each round), then blocks reading its stdin
(no CPU) until the parent hands it the next turn, so one of them runs at any moment, with every
core, and a drift slower than a turn is shared. Each child subtracts ``waited()`` from its times;
its CPU seconds and peak RSS are its own.

A child (started with ``--lockstep`` among its arguments)::

    T_START = time.perf_counter()
    if lockstep.ACTIVE:
        T_START = lockstep.first_turn()   # nothing, not even the imports, runs before its turn
    ...
    lockstep.turn()                       # at each point where the other variant may run
                                          # (pollen.simulate: callbacks=[lockstep.after_each_round])
    job_s = time.perf_counter() - T_START - lockstep.waited()
    print("RESULT " + json.dumps(result))

The parent: ``results = lockstep.run({"plain": [...argv...], "pollen": [...]}, first="plain")``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

ACTIVE = "--lockstep" in sys.argv
_waited = 0.0


def first_turn() -> float:
    """Wait for this child's first turn; the time it starts (for the child's job time)."""
    sys.stdin.readline()
    return time.perf_counter()


def turn() -> None:
    """End this child's turn and wait for the next one (a no-op outside lockstep)."""
    global _waited
    if not ACTIVE:
        return
    t = time.perf_counter()
    print("TURN", flush=True)
    sys.stdin.readline()
    _waited += time.perf_counter() - t


def after_each_round(event: object) -> None:
    """A ``pollen.simulate(callbacks=[...])`` callback: a turn ends with each ``RoundCompleted``
    (emitted after the round's checkpoint)."""
    if type(event).__name__ == "RoundCompleted":
        turn()


def waited() -> float:
    """Seconds this child has spent waiting for its turns so far."""
    return _waited


def run(commands: dict[str, list[str]], first: str) -> dict[str, dict]:
    """Run the children (kind → argv) taking turns, ``first`` first; each one's ``RESULT`` JSON by kind.

    Raises:
        RuntimeError: a child ended without a result (the others are stopped).
    """
    kinds = [first] + [k for k in commands if k != first]
    procs = {k: subprocess.Popen(commands[k] + ["--lockstep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1) for k in kinds}
    results: dict[str, dict] = {}
    try:
        while len(results) < len(kinds):
            for k in kinds:
                if k in results:
                    continue
                proc = procs[k]
                proc.stdin.write("go\n")
                proc.stdin.flush()
                for line in proc.stdout:  # until this child ends its turn or its run
                    if line.startswith("TURN"):
                        break
                    if line.startswith("RESULT "):
                        results[k] = json.loads(line[7:])
                        break
                else:
                    raise RuntimeError(f"the {k} child ended without a result (exit {proc.wait()})")
    finally:
        for proc in procs.values():
            if proc.poll() is None and len(results) < len(kinds):
                proc.kill()  # another child failed: this one would wait for its turn for ever
            proc.wait()
    return results
