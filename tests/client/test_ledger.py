"""The party's privacy ledger (pollen/client/ledger.py): a restarted party continues from it, a
re-issued task is answered from the reply already sent, a budget the coordinator cannot raise, and
nothing leaves the party unless the ledger was written first."""

from __future__ import annotations

import json
import math

import pytest

from pollen.client.ledger import LEDGER_FILE, Ledger
from pollen.compose import assemble
from pollen.privacy.accountant import epsilon_for
from pollen.types import Task

SIGMA, DELTA = 1.0, 1e-5
# Pinned, so that --dp-sgd's recipe (pollen/privacy/recipe.py: 5 local epochs, Poisson rate 0.5) does
# not choose them: the budgets below are sized from one epoch at this rate per round.
EPOCHS, RATE = 1, 1 / 16


def _assembly(digits_cfg, **privacy):
    return assemble(digits_cfg(train={"epochs": EPOCHS},
                               privacy={"dp_sgd": True, "noise_multiplier": SIGMA, "max_grad_norm": 1.0,
                                        "delta": DELTA, "dp_sample_rate": RATE, **privacy}))


def _party(asm, folder, pid="0", **budget):
    return asm.party(pid, asm.trainer(), asm.simulation_path(pid), ledger=asm.ledger(pid, folder, **budget))


def _task(asm, state, rnd, pid="0", **dp):
    cfg = asm.strategy.configure(rnd, list(state))
    if dp:
        cfg = cfg.with_(extra={**cfg.extra, "dp_sgd": {**cfg.extra["dp_sgd"], **dp}})
    return Task(pid, "fit", rnd, state, cfg)


def _eps_after(party, rounds: int) -> float:
    steps = math.ceil(EPOCHS / RATE)  # the steps of one round at a fixed Poisson rate (pollen/privacy/dpsgd.py)
    return epsilon_for(SIGMA, RATE, steps * rounds, DELTA)


def _between(party, ok: int) -> float:
    """A budget that allows ``ok`` rounds and not one more."""
    return (_eps_after(party, ok) + _eps_after(party, ok + 1)) / 2


def test_a_restarted_party_refuses_past_its_budget(digits_cfg, tmp_path):
    asm = _assembly(digits_cfg)
    state = asm.initial_state()
    probe = _party(asm, None)
    target = _between(probe, 2)
    asm = _assembly(digits_cfg, target_epsilon=target)
    party = _party(asm, tmp_path / "ledger")
    assert all(party.handle(_task(asm, state, r)).ok for r in (1, 2))
    reply = party.handle(_task(asm, state, 3))
    assert not reply.ok and "budget" in reply.failure

    restarted = _party(asm, tmp_path / "ledger")  # the process died; a new one reads the same folder
    for rnd in (3, 4):
        reply = restarted.handle(_task(asm, state, rnd))
        assert not reply.ok and "budget" in reply.failure, reply.failure
    ledger = Ledger(tmp_path / "ledger", "0")
    charged = [e for e in ledger.entries if "epsilon" in e]
    refused = [e["round"] for e in ledger.entries if "refused" in e]
    assert [e["round"] for e in charged] == [1, 2] and refused == [3, 3, 4]
    assert ledger.spent() == pytest.approx(_eps_after(party, 2)) and ledger.spent() <= target

    fresh = _party(asm, None)  # what happened before: a party without its ledger trains again from ε = 0
    assert fresh.handle(_task(asm, state, 3)).ok


def test_a_reissued_task_is_answered_from_the_reply_already_sent(digits_cfg, tmp_path):
    asm = _assembly(digits_cfg)
    state = asm.initial_state()
    party = _party(asm, tmp_path / "ledger")
    first = party.handle(_task(asm, state, 1))
    again = _party(asm, tmp_path / "ledger").handle(_task(asm, state, 1))  # after a crash of either side
    assert again.ok and again.update.metrics["ledger_cached"] == 1.0
    for k, v in first.update.delta.items():
        assert (again.update.delta[k] == v).all()  # DP-SGD's noise is fresh each time: the same release
    ledger = Ledger(tmp_path / "ledger", "0")
    assert len([e for e in ledger.entries if "epsilon" in e]) == 1  # charged once
    other = party.handle(_task(asm, state, 1, max_grad_norm=0.5))  # not the same task: trained and charged
    assert other.ok and "ledger_cached" not in other.update.metrics
    assert len([e for e in Ledger(tmp_path / "ledger", "0").entries if "epsilon" in e]) == 2


def test_the_coordinator_cannot_raise_the_budget(digits_cfg, tmp_path):
    asm = _assembly(digits_cfg)
    state = asm.initial_state()
    target = _between(_party(asm, None), 1)
    asm = _assembly(digits_cfg, target_epsilon=target)
    party = _party(asm, tmp_path / "ledger")
    assert party.handle(_task(asm, state, 1)).ok
    # a lying coordinator: a huge target, a δ that makes every ε small, less noise
    for lie in ({"target_epsilon": 1e9}, {"target_epsilon": 1e9, "delta": 0.5}, {"noise_multiplier": 0.3}):
        reply = party.handle(_task(asm, state, 2, **lie))
        assert not reply.ok and "budget" in reply.failure, (lie, reply.failure)
    assert Ledger(tmp_path / "ledger", "0").spent() <= target
    assert party.handle(_task(asm, state, 2, target_epsilon=1e9, delta=0.5)).ok is False


def test_the_party_operators_own_budget_wins(digits_cfg, tmp_path):
    asm = _assembly(digits_cfg, target_epsilon=50.0)  # the coordinator's config: generous
    state = asm.initial_state()
    own = _between(_party(asm, None), 1)
    party = _party(asm, tmp_path / "ledger", max_epsilon=own)
    assert party.handle(_task(asm, state, 1)).ok
    assert "budget" in party.handle(_task(asm, state, 2)).failure
    assert Ledger(tmp_path / "ledger", "0").budget["epsilon"] == own


def test_nothing_leaves_a_party_whose_ledger_cannot_be_written(digits_cfg, tmp_path, monkeypatch):
    import errno

    import pollen.client.ledger as ledger_module

    asm = _assembly(digits_cfg)
    state = asm.initial_state()
    folder = tmp_path / "ledger"
    party = _party(asm, folder)
    assert party.handle(_task(asm, state, 1)).ok
    history = json.loads((folder / LEDGER_FILE).read_text())["state"]["dp_sgd"]["history"]

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ledger_module, "write_atomic", full)
    reply = party.handle(_task(asm, state, 2))
    assert not reply.ok and "cannot write the privacy ledger" in reply.failure and reply.update is None
    assert party.state["dp_sgd"]["history"] == history  # rolled back: nothing was spent
    monkeypatch.undo()
    assert party.handle(_task(asm, state, 2)).ok  # the disk is back: round 2 is charged once
    assert [e["round"] for e in Ledger(folder, "0").entries if "epsilon" in e] == [1, 2]


def test_a_ledger_of_another_party_or_a_broken_one_is_refused(digits_cfg, tmp_path):
    asm = _assembly(digits_cfg)
    party = _party(asm, tmp_path / "ledger")
    assert party.handle(_task(asm, asm.initial_state(), 1)).ok
    from pollen.errors import PrivacyError

    with pytest.raises(PrivacyError, match="party 0's privacy ledger"):
        Ledger(tmp_path / "ledger", "1")
    (tmp_path / "ledger" / LEDGER_FILE).write_text("{not json")
    with pytest.raises(PrivacyError, match="unreadable"):
        Ledger(tmp_path / "ledger", "0")


def test_simulation_keeps_a_ledger_per_party_in_the_run_folder(digits_cfg):
    from pollen.simulation import simulate

    res = simulate(digits_cfg(federation={"rounds": 2}, privacy={"dp_sgd": True, "noise_multiplier": SIGMA,
                                                                  "max_grad_norm": 1.0, "delta": DELTA}))
    folders = sorted(p.name for p in (res.run_dir / "ledgers").iterdir())
    assert folders == ["party-0", "party-1", "party-2", "party-3"]
    for name in folders:
        ledger = Ledger(res.run_dir / "ledgers" / name, name.removeprefix("party-"))
        assert [e["round"] for e in ledger.entries] == [1, 2]
        assert not list((res.run_dir / "ledgers" / name).glob("reply-*"))  # a finished run drops its replies
    assert max(Ledger(res.run_dir / "ledgers" / n, n[6:]).spent() for n in folders) == pytest.approx(
        res.history[-1]["epsilon"])
    assert math.isfinite(res.history[-1]["epsilon"])
