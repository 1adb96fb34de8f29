"""Checkpoints after every round: enough to resume a crashed run with the same result, and safe
against crashes and damaged files.

``checkpoints/round-<r>/`` holds ``model.safetensors`` (global model), ``optimizer.safetensors``
(server optimizer state), ``meta.json`` (round, last history record, extra state) and
``MANIFEST.json`` (SHA-256 and size of each file). A round's folder is written aside
(``.tmp-round-<r>-…``, every file and the folder fsynced) and renamed into place, so a crash at any
moment leaves either the whole new checkpoint or none of it: the model of round r can never be paired
with the metadata of round r − 1. The last ``KEEP`` checkpoints are kept. Loading verifies a
checkpoint against its manifest (and that its floats are finite); a damaged one is skipped with a
warning for the one before it. Sampling and party randomness derive from (seed, round), so no RNG
stream needs saving.

Runs written before this layout (the three files directly in ``checkpoints/``, no manifest) are
still read, as the oldest candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.numpy import load_file, save_file

from pollen.errors import RunError
from pollen.server.shutdown import deferred_signals, disk_error

log = logging.getLogger("pollen.server")
KEEP = 2  # checkpoints kept: the newest, and the one to fall back to when it is damaged
MANIFEST = "MANIFEST.json"
FILES = ("model.safetensors", "optimizer.safetensors", "meta.json")
_ROUND_DIR = re.compile(r"^round-(\d{6,})$")


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


class DamagedCheckpoint(RunError):
    """A checkpoint folder that fails verification (a missing or altered file)."""


class Checkpointer:
    """Writes and reads the checkpoints of a run directory.

    Args:
        run_dir: ``runs/<name>``; checkpoints go to ``run_dir/checkpoints``.
        extra_state: more JSON-able state to save with every checkpoint (simulated parties').
        keep: how many of the newest checkpoints to keep (at least 1).
    """

    def __init__(self, run_dir: str | Path, extra_state: Callable[[], Mapping[str, Any]] | None = None,
                 keep: int = KEEP) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.extra_state = extra_state
        self.keep = max(int(keep), 1)
        self.skipped: list[str] = []  # why newer checkpoints were passed over by the last load

    # ------------------------------------------------------------ writing
    def save(self, round: int, state: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray],
             record: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
        """Save the state after ``round`` as ``checkpoints/round-<round>/``; keep the last ``keep``.

        A SIGTERM or SIGINT arriving meanwhile takes effect once the checkpoint is in place.

        Returns:
            The checkpoint's folder.

        Raises:
            RunError: the disk is full, read-only or not writable (one line that names the folder).
        """
        extra = {**(extra or {}), **(self.extra_state() if self.extra_state is not None else {})}
        meta = {"round": round, "order": list(state), "record": dict(record or {}), "extra": extra}
        with deferred_signals():
            try:
                return self._write(round, state, optimizer_state, meta)
            except OSError as exc:
                raise disk_error(exc, self.dir, f"the checkpoint of round {round}") from None

    def _write(self, round: int, state: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray],
               meta: Mapping[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / _name(round)
        tmp = self.dir / f".tmp-{_name(round)}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(tmp / "model.safetensors"))
            save_file({k: np.asarray(v, order="C") for k, v in optimizer_state.items()}, str(tmp / "optimizer.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
            files = {}
            for name in FILES:
                _fsync(tmp / name)
                files[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            (tmp / MANIFEST).write_text(json.dumps({"round": round, "files": files}, indent=1))
            _fsync(tmp / MANIFEST)
            _fsync(tmp)
            if final.exists():  # the same round again (a resumed run redoing it): swap, never leave a gap
                old = self.dir / f".old-{_name(round)}-{secrets.token_hex(4)}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            _fsync(self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints; remove older ones, leftovers of crashed writes and
        the files of the layout before round folders."""
        rounds = self._rounds()
        for _, path in rounds[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)
        for p in self.dir.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
        if rounds:
            for name in FILES:
                (self.dir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------ reading
    def exists(self) -> bool:
        """True when a checkpoint (complete or not: ``load`` verifies) is present."""
        return bool(self._rounds()) or (self.dir / "meta.json").exists()

    def load(self) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
        """``(round, state, optimizer_state, meta)`` of the newest checkpoint that verifies; newer
        damaged ones are skipped with a warning (their reasons in ``skipped``).

        Raises:
            RunError: no checkpoint, or none that verifies.
        """
        if not self.exists():
            raise RunError(f"no checkpoint in {self.dir}: nothing to resume (was the run started with this directory?)")
        self.skipped = []
        candidates: list[tuple[str, Callable[[], Any]]] = [(p.name, lambda p=p: _verified(p)) for _, p in self._rounds()]
        if (self.dir / "meta.json").exists():
            candidates.append(("checkpoints/ (written before round folders)", lambda: _legacy(self.dir)))
        for name, read in candidates:
            try:
                loaded = read()
            except DamagedCheckpoint as exc:
                self.skipped.append(f"{name}: {exc}")
                continue
            if self.skipped:
                log.warning("checkpoint %s is damaged (%s); resuming from %s instead", self.skipped[0].split(":")[0],
                            "; ".join(s.split(": ", 1)[1] for s in self.skipped), name,
                            extra={"event": "checkpoint_damaged"})
            return loaded
        raise RunError(f"no checkpoint in {self.dir} verifies ({'; '.join(self.skipped)}); the run cannot be resumed "
                       "— start it again (--overwrite) or restore the folder from a backup")

    def model_file(self, round: int) -> Path:
        """The model file of round ``round``'s checkpoint (as ``load`` returned it): in its round
        folder, or in the flat layout written before round folders."""
        own = self.dir / _name(round)
        return (own if own.is_dir() else self.dir) / FILES[0]

    def resume_point(self, pipeline: _Stateful | None = None) -> ResumePoint:
        """The last good checkpoint as a :class:`ResumePoint`; puts the update pipeline's saved
        server-side state (party-level DP accountant, adaptive clip norm) back into ``pipeline``.

        Raises:
            RunError: no checkpoint, or none that verifies.
        """
        done, state, opt, meta = self.load()
        extra = meta.get("extra", {})
        if pipeline is not None:
            pipeline.load_state_dict(extra.get("pipeline", {}))
        return ResumePoint(done + 1, state, opt, meta.get("record"), extra)

    def _rounds(self) -> list[tuple[int, Path]]:
        """(round, folder) of every round folder, newest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _ROUND_DIR.match(p.name)) and p.is_dir()]
        return sorted(found, reverse=True)


def _name(round: int) -> str:
    return f"round-{round:06d}"


def _verified(folder: Path) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """A round folder checked against its manifest, then read.

    Raises:
        DamagedCheckpoint: what is missing or altered.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedCheckpoint(f"no readable {MANIFEST} ({type(exc).__name__})") from None
    for name in FILES:
        want = files.get(name) if isinstance(files, dict) else None
        path = folder / name
        if not isinstance(want, dict) or not path.is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if path.stat().st_size != want.get("bytes") or _sha256(path) != want.get("sha256"):
            raise DamagedCheckpoint(f"{name} differs from the SHA-256 in its manifest")
    rnd, state, opt, meta = _read(folder)
    if rnd != manifest.get("round") or _name(rnd) != folder.name:
        raise DamagedCheckpoint(f"it says round {rnd}, its manifest {manifest.get('round')!r}")
    return rnd, state, opt, meta


def _legacy(folder: Path) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """The three files of the layout before round folders (no manifest to verify against)."""
    return _read(folder)


def _read(folder: Path) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
        opt = load_file(str(folder / "optimizer.safetensors"))
        rnd = int(meta["round"])
        state = {k: state[k] for k in meta.get("order", state)}
    except Exception as exc:  # noqa: BLE001 - any corruption is reported the same way
        raise DamagedCheckpoint(f"unreadable: {type(exc).__name__}: {str(exc)[:200]}") from None
    for name, arr in [*state.items(), *opt.items()]:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DamagedCheckpoint(f"tensor {name!r} holds NaN or Inf")
    return rnd, state, opt, meta


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
