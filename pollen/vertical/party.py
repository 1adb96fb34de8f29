"""One party of a vertical run: its own rows, keys and model part, and the steps it answers.

A ``VerticalParty`` is driven like a horizontal party: it receives ``Task``s (kind ``v.*``, tensors
in ``task.state``, small settings in ``task.config.extra``) and answers ``Reply``s, in the
simulation's process or over gRPC (``pollen vertical party``). What each step may reveal is
written next to it; the driver (``pollen.vertical.driver``) only relays.

Steps, by protocol:

- PSI (``psi.py``): ``v.psi.blind``, ``v.psi.reblind``, ``v.psi.match``, ``v.psi.align``, ``v.psi.rows``.
- setup: ``v.setup`` (the aligned train/test split; each feature holder standardises its own
  columns with its training rows' mean and standard deviation).
- hetero LR (``hetero_lr.py``): ``v.lr.*``. Split learning (``split.py``): ``v.split.*``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import PollenError, ProtocolError
from pollen.types import Reply, Task, Update
from pollen.vertical import psi
from pollen.vertical.app import PartyTable, VerticalApp, VerticalContext, party_table
from pollen.vertical.config import VerticalConfig


class VerticalParty:
    """A guest, host or arbiter.

    Args:
        cfg: the run's configuration (the coordinator's, in deployment).
        app: the vertical app (its ``load_data`` reads this party's data only).
        party_id: this party's id (``cfg.role`` says what it is).
        data_path: this party's own data (``ctx.data_path``).
    """

    def __init__(self, cfg: VerticalConfig, app: VerticalApp, party_id: str, data_path: str | None = None) -> None:
        self.cfg, self.app, self.party_id = cfg, app, party_id
        self.role = cfg.role(party_id)
        self.ctx = VerticalContext(party_id=party_id, role=self.role, num_parties=cfg.vertical.parties,
                                   seed=cfg.run.seed, data_path=None if data_path is None else Path(data_path),
                                   dataset=cfg.data.dataset, drop=cfg.data.drop)
        self.table: PartyTable | None = None
        if self.role != "arbiter":
            self.table = party_table(app, self.ctx)
        self.rows: np.ndarray | None = None  # this party's rows in the aligned order
        self.x_train = self.x_test = self.y_train = self.y_test = None
        self._sender: dict[str, psi.PsiSender] = {}
        self._receiver: psi.PsiReceiver | None = None
        self.lr: Any = None  # hetero_lr.LrState of this role
        self.split: Any = None  # split.SplitState of this role
        self._handlers: dict[str, Callable[[Task], dict[str, np.ndarray]]] = self._table()

    @property
    def num_examples(self) -> int:
        """Rows this party holds (0 for the arbiter)."""
        return 0 if self.table is None else len(self.table)

    def _table(self) -> dict[str, Callable[[Task], dict[str, np.ndarray]]]:
        from pollen.vertical import hetero_lr, split

        handlers: dict[str, Callable[[Task], dict[str, np.ndarray]]] = {
            "v.psi.blind": self._psi_blind, "v.psi.reblind": self._psi_reblind, "v.psi.match": self._psi_match,
            "v.psi.align": self._psi_align, "v.psi.rows": self._psi_rows, "v.ids.rows": self._ids_rows,
            "v.setup": self._setup,
        }
        handlers.update(hetero_lr.handlers(self))
        handlers.update(split.handlers(self))
        return handlers

    def handle(self, task: Task) -> Reply:
        """Answer one step; any failure becomes the reply's ``failure`` (the run stops on it)."""
        t0 = time.perf_counter()
        handler = self._handlers.get(task.kind)
        if handler is None:
            return Reply(self.party_id, task.kind, task.round, failure=f"unknown vertical step {task.kind!r}")
        try:
            out = handler(task)
        except PollenError as exc:
            return Reply(self.party_id, task.kind, task.round, failure=f"{type(exc).__name__}: {exc}",
                         seconds=time.perf_counter() - t0)
        return Reply(self.party_id, task.kind, task.round, update=Update(out, self.num_examples),
                     seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------ PSI
    def _ids(self) -> list[bytes]:
        assert self.table is not None  # noqa: S101 - only feature holders get PSI steps (the driver's order)
        return psi.id_bytes(self.table.ids)

    def _psi_blind(self, task: Task) -> dict[str, np.ndarray]:
        salt = bytes.fromhex(str(task.config.extra["salt"]))
        threads = self.cfg.vertical.threads
        if self.role == "host":
            self._sender["guest"] = sender = psi.PsiSender(self._ids(), salt, threads)
            return {"points": sender.blinded_ids()}
        if self._receiver is None:
            self._receiver = psi.PsiReceiver(self._ids(), salt, threads)
        return {"points": self._receiver.blinded_ids(str(task.config.extra["host"]))}

    def _psi_reblind(self, task: Task) -> dict[str, np.ndarray]:
        return {"points": self._need_sender().reblind(task.state["points"])}

    def _psi_match(self, task: Task) -> dict[str, np.ndarray]:
        if self._receiver is None:
            raise ProtocolError("PSI match before the guest blinded its ids")
        n = self._receiver.match(str(task.config.extra["host"]), task.state["host_points"], task.state["reblinded"])
        return {"overlap": np.array([n], np.int64)}

    def _psi_align(self, task: Task) -> dict[str, np.ndarray]:
        if self._receiver is None:
            raise ProtocolError("PSI alignment before any match")
        rows, positions = self._receiver.align()
        self.rows = rows
        self._receiver = None  # the keys of this session are gone
        return {f"pos.{h}": p for h, p in positions.items()}

    def _psi_rows(self, task: Task) -> dict[str, np.ndarray]:
        self.rows = self._need_sender().rows(task.state["positions"])
        self._sender.clear()
        return {"count": np.array([len(self.rows)], np.int64)}

    def _need_sender(self) -> psi.PsiSender:
        if "guest" not in self._sender:
            raise ProtocolError("PSI step out of order: this host has not blinded its ids")
        return self._sender["guest"]

    def _ids_rows(self, task: Task) -> dict[str, np.ndarray]:
        """Without PSI (``psi = false``): the rows are already aligned; every party keeps them all, in order."""
        self.rows = np.arange(self.num_examples, dtype=np.int64)
        return {"count": np.array([self.num_examples], np.int64)}

    # ------------------------------------------------------------ setup
    def _setup(self, task: Task) -> dict[str, np.ndarray]:
        """Cut the aligned rows into train and test (positions chosen by the driver from the run
        seed, without labels) and standardise this party's columns on its training rows."""
        if self.table is None:
            return {"features": np.array([0], np.int64)}
        if self.rows is None:
            raise ProtocolError("setup before the rows were aligned")
        train, test = task.state["train"].astype(np.int64), task.state["test"].astype(np.int64)
        n = len(self.rows)
        if (train.size and train.max() >= n) or (test.size and test.max() >= n):
            raise ProtocolError(f"setup: positions beyond the {n} aligned rows")
        x = self.table.x[self.rows]
        mean = x[train].mean(axis=0) if train.size else np.zeros(x.shape[1], np.float32)
        std = x[train].std(axis=0) if train.size else np.ones(x.shape[1], np.float32)
        std = np.where(std > 0, std, 1.0)
        x = ((x - mean) / std).astype(np.float32)
        self.x_train, self.x_test = x[train], x[test]
        if self.table.y is not None:
            y = self.table.y[self.rows]
            self.y_train, self.y_test = y[train], y[test]
        return {"features": np.array([x.shape[1]], np.int64)}

    def model_state(self) -> dict[str, np.ndarray]:
        """This party's part of the trained model (its own weights only)."""
        if self.lr is not None:
            return self.lr.model_state()
        if self.split is not None:
            return self.split.model_state()
        return {}
