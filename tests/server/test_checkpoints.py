"""Crash-safe checkpoints (issue 12, item 5): one folder per round, written aside and renamed into
place, with a SHA-256 manifest; the last two kept; verified on load with a fallback to the older one;
disk errors as one line; a run whose rounds keep aggregating nothing stops and says why.

Before issue 12 the three checkpoint files were replaced one at a time (a crash between them paired
round r's model with round r−1's metadata, and round r was applied twice), 1 KiB of random bytes
inside the model was accepted on resume (every later round NaN, exit 0), and one checkpoint was kept.
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import pollen.server.checkpoint as ckpt
from pollen.errors import RunError
from pollen.server import Checkpointer, Coordinator
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.telemetry import EventBus, RoundCompleted
from pollen.transport.base import Transport
from pollen.types import Reply, Update


def _state(r: int) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 64), float(r), np.float32), "n": np.array(r, np.int64)}


def _save(ck: Checkpointer, r: int) -> None:
    ck.save(r, _state(r), {"m": np.full(3, float(r))}, {"round": r})


def _consistent(loaded, r: int) -> None:
    rnd, state, opt, meta = loaded
    assert rnd == r and meta["record"]["round"] == r and meta["round"] == r
    assert float(state["w"][0, 0]) == r and int(state["n"]) == r and float(opt["m"][0]) == r


def test_one_folder_per_round_with_a_manifest_and_the_last_two_kept(tmp_path):
    ck = Checkpointer(tmp_path)
    for r in range(1, 5):
        _save(ck, r)
    names = sorted(p.name for p in ck.dir.iterdir())
    assert names == ["round-000003", "round-000004"]
    manifest = json.loads((ck.dir / "round-000004" / "MANIFEST.json").read_text())
    assert manifest["round"] == 4 and set(manifest["files"]) == {"model.safetensors", "optimizer.safetensors", "meta.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    _consistent(ck.load(), 4)


def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)
    _save(ck, 1)
    real = ckpt.save_file
    calls = []

    def crash_after_the_model(arrays, path):
        calls.append(path)
        real(arrays, path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies between the model and the rest

    monkeypatch.setattr(ckpt, "save_file", crash_after_the_model)
    with pytest.raises(KeyboardInterrupt):
        _save(ck, 2)
    _consistent(Checkpointer(tmp_path).load(), 1)  # never round 2's model with round 1's metadata
    # a crash that even left its half-written folder behind (SIGKILL): ignored, then cleaned up
    torn = ck.dir / ".tmp-round-000002-dead"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    _consistent(Checkpointer(tmp_path).load(), 1)
    monkeypatch.setattr(ckpt, "save_file", real)
    _save(ck, 2)
    assert sorted(p.name for p in ck.dir.iterdir()) == ["round-000001", "round-000002"]
    _consistent(ck.load(), 2)


@pytest.mark.parametrize("damage", ["random bytes in the model", "metadata edited", "optimizer missing",
                                    "manifest missing"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before_with_a_warning(tmp_path, caplog, damage):
    ck = Checkpointer(tmp_path)
    _save(ck, 1)
    _save(ck, 2)
    newest = ck.dir / "round-000002"
    if damage == "random bytes in the model":
        raw = bytearray((newest / "model.safetensors").read_bytes())
        raw[-2048:-1024] = np.random.default_rng(0).bytes(1024)  # 1 KiB inside the tensor data
        (newest / "model.safetensors").write_bytes(bytes(raw))
    elif damage == "metadata edited":
        meta = json.loads((newest / "meta.json").read_text())
        (newest / "meta.json").write_text(json.dumps({**meta, "round": 7}))
    elif damage == "optimizer missing":
        (newest / "optimizer.safetensors").unlink()
    else:
        (newest / "MANIFEST.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pollen.server"):
        point = ck.resume_point()
    assert point.start == 2 and float(point.state["w"][0, 0]) == 1.0
    assert "round-000002 is damaged" in caplog.text and "resuming from round-000001" in caplog.text
    assert ck.skipped and ck.skipped[0].startswith("round-000002")


def test_no_checkpoint_that_verifies_is_a_clear_error(tmp_path):
    ck = Checkpointer(tmp_path)
    _save(ck, 1)
    _save(ck, 2)
    for d in ck.dir.iterdir():
        (d / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(RunError, match="no checkpoint in .* verifies"):
        ck.load()


def test_a_checkpoint_of_the_layout_before_round_folders_still_loads(tmp_path):
    from safetensors.numpy import save_file

    d = tmp_path / "checkpoints"
    d.mkdir()
    save_file(_state(3), str(d / "model.safetensors"))
    save_file({"m": np.full(3, 3.0)}, str(d / "optimizer.safetensors"))
    (d / "meta.json").write_text(json.dumps({"round": 3, "order": ["w", "n"], "record": {"round": 3}, "extra": {}}))
    ck = Checkpointer(tmp_path)
    _consistent(ck.load(), 3)
    _save(ck, 4)  # the next save moves to round folders and drops the old files
    assert sorted(p.name for p in ck.dir.iterdir()) == ["round-000004"]


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    ck = Checkpointer(tmp_path)

    def full(arrays, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(RunError) as err:
        _save(ck, 1)
    text = str(err.value)
    assert "the disk is full" in text and str(ck.dir) in text and "--resume" in text and "\n" not in text
    assert not any(ck.dir.iterdir())  # nothing half-written left behind


def test_the_cli_prints_a_disk_error_as_one_line(monkeypatch, capsys):
    import pollen.cli as cli
    import pollen.telemetry.report as report

    def readonly(run_dir):
        raise OSError(errno.EROFS, "Read-only file system", "runs/x/report.md")

    monkeypatch.setattr(report, "write_report", readonly)
    assert cli.main(["report", "runs/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-only" in err[0] and "runs/x/report.md" in err[0]


# ---------------------------------------------------------------- rounds that aggregate nothing
class Failing(Transport):
    def available(self):
        return ["0", "1"]

    def submit(self, task):
        self.last = task

    def poll(self, timeout=None):
        t, self.last = getattr(self, "last", None), None
        if t is None:
            return None
        return Reply(t.party_id, "fit", t.round, failure="ModelError: your app's model does not fit the data")

    def pending(self):
        return 1 if getattr(self, "last", None) else 0


def test_a_run_that_keeps_aggregating_nothing_stops_and_says_why(tmp_path):
    records = []
    bus = EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    ck = Checkpointer(tmp_path)
    coord = Coordinator(fedavg(Sampler(), ClientConfig()), Failing(), rounds=50, events=bus, checkpointer=ck,
                        max_empty_rounds=3)
    with pytest.raises(RunError) as err:
        coord.run({"w": np.zeros(2, np.float32)})
    text = str(err.value)
    assert [r["round"] for r in records] == [1, 2, 3]  # stopped early, every round it ran recorded
    assert "rounds 1-3 aggregated nothing" in text and "model does not fit" in text and "--resume" in text
    assert ck.load()[0] == 3


def test_the_empty_round_limit_is_a_flag_and_can_be_resumed():
    from pollen.compose import RESUMABLE
    from pollen.config import make_config

    assert make_config({}).federation.max_empty_rounds == 5
    assert make_config({"federation": {"max_empty_rounds": 0}}).federation.max_empty_rounds == 0
    assert "max_empty_rounds" in RESUMABLE["federation"]


# ---------------------------------------------------------------- the coordinator's own privacy ledger
def test_the_central_dp_ledger_is_in_the_checkpoint_and_a_cut_round_is_charged_once(digits_cfg, monkeypatch):
    from pollen.privacy.accountant import epsilon_for
    from pollen.simulation import simulate

    cfg = digits_cfg(data={"dataset": "digits", "parties": 6}, federation={"rounds": 2, "parties_per_round": 3},
                     privacy={"client_dp": "central", "client_noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5})

    class Killed(Exception):
        pass

    real = Checkpointer.save

    def killed_before_round_2_is_saved(self, rnd, *args, **kwargs):
        if rnd == 2:  # round 2 aggregated (its noise drawn, the ledger charged); the process dies here
            raise Killed
        return real(self, rnd, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", killed_before_round_2_is_saved)
    with pytest.raises(Killed):
        simulate(cfg)
    monkeypatch.setattr(Checkpointer, "save", real)
    run_dir = Path(cfg.run.runs_dir) / cfg.run.name
    saved = json.loads((run_dir / "checkpoints" / "round-000001" / "meta.json").read_text())["extra"]["pipeline"]
    (ledger,) = [v["accountant"] for v in saved.values() if "accountant" in v]
    assert sum(n for _, _, n in ledger) == 1  # the ledger of the rounds the checkpoint holds, no more
    resumed = simulate(cfg, resume=run_dir)
    assert [r["round"] for r in resumed.history] == [1, 2]
    # 6 parties, 3 sampled per round (q = 0.5): two rounds charged, round 2 once (the uninterrupted run's ε)
    assert resumed.history[-1]["epsilon"] == pytest.approx(epsilon_for(0.5, 0.5, 2, 1e-5, sampling="without_replacement"))
