"""Checkpoints after every round: enough to resume a crashed run with the same result.

``checkpoints/`` holds ``model.safetensors`` (global model), ``optimizer.safetensors`` (server
optimizer state) and ``meta.json`` (round, last history record, extra state). Each file is written
to a temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact.
Sampling and party randomness derive from (seed, round), so no RNG stream needs saving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.numpy import load_file, save_file

from pollen.errors import RunError


class _Stateful(Protocol):
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run goes on: what every resuming entry point (simulation, ``pollen server``) needs.

    Attributes:
        start: the first round still to run.
        state: the global model after round ``start - 1``.
        optimizer_state: the server optimizer's state then.
        record: that round's history line (restored to history.jsonl if the crash lost it).
        extra: the rest of the saved state (simulated parties' accountants, ...).
    """

    start: int
    state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    record: dict[str, Any] | None
    extra: dict[str, Any]


def _atomic_save(arrays: Mapping[str, np.ndarray], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


class Checkpointer:
    """Writes and reads the checkpoint of a run directory.

    Args:
        run_dir: ``runs/<name>``; checkpoints go to ``run_dir/checkpoints``.
    """

    def __init__(self, run_dir: str | Path, extra_state: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.extra_state = extra_state  # more JSON-able state to save with every checkpoint (simulated parties')

    def save(self, round: int, state: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray],
             record: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Save the state after ``round``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(state, self.dir / "model.safetensors")
        _atomic_save(optimizer_state, self.dir / "optimizer.safetensors")
        extra = {**(extra or {}), **(self.extra_state() if self.extra_state is not None else {})}
        meta = {"round": round, "order": list(state), "record": dict(record or {}), "extra": extra}
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, default=str))
        os.replace(tmp, self.dir / "meta.json")

    def exists(self) -> bool:
        """True when a complete checkpoint is present."""
        return (self.dir / "meta.json").exists()

    def load(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
        """``(round, state, optimizer_state, meta)`` of the last checkpoint.

        Raises:
            RunError: no checkpoint, or an unreadable one.
        """
        if not self.exists():
            raise RunError(f"no checkpoint in {self.dir}: nothing to resume (was the run started with this directory?)")
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            state = load_file(str(self.dir / "model.safetensors"))
            opt = load_file(str(self.dir / "optimizer.safetensors"))
        except Exception as exc:  # noqa: BLE001 - any corruption is reported the same way
            raise RunError(f"checkpoint in {self.dir} is unreadable: {exc}") from exc
        state = {k: state[k] for k in meta.get("order", state)}
        return int(meta["round"]), state, opt, meta

    def resume_point(self, pipeline: _Stateful | None = None) -> ResumePoint:
        """The last checkpoint as a :class:`ResumePoint`; puts the update pipeline's saved
        server-side state (party-level DP accountant, adaptive clip norm) back into ``pipeline``.

        Raises:
            RunError: no checkpoint, or an unreadable one.
        """
        done, state, opt, meta = self.load()
        extra = meta.get("extra", {})
        if pipeline is not None:
            pipeline.load_state_dict(extra.get("pipeline", {}))
        return ResumePoint(done + 1, state, opt, meta.get("record"), extra)
