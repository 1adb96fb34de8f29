"""Privacy accountants survive `--resume`: a resumed run reports the same ε as an uninterrupted
one (a reset accountant would report the ε of the rounds after the restart only, and let a party
train past its budget)."""

from __future__ import annotations

import pytest

from pollen.simulation import simulate


def _resumed(digits_cfg, rounds: int, cut: int, **sections):
    full = simulate(digits_cfg(federation={"rounds": rounds}, run={"name": "full"}, **sections))
    part = simulate(digits_cfg(federation={"rounds": cut}, run={"name": "part"}, **sections))
    cfg = digits_cfg(federation={"rounds": rounds}, run={"name": "part"}, **sections)
    (part.run_dir / "config.toml").write_text(
        (full.run_dir / "config.toml").read_text().replace('name = "full"', 'name = "part"'))
    resumed = simulate(cfg, resume=part.run_dir)
    return full.history, part.history, resumed.history


def test_central_client_dp_accountant_survives_resume(digits_cfg):
    privacy = {"client_dp": "central", "client_noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5}
    full, part, resumed = _resumed(digits_cfg, 4, 2, privacy=privacy)
    assert [r["round"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[-1]["epsilon"] == pytest.approx(full[-1]["epsilon"])
    assert resumed[-1]["epsilon"] > part[-1]["epsilon"]  # 4 rounds spend more than 2


def test_adaptive_clip_norm_survives_resume(digits_cfg):
    import json

    # the clipped-count noise comes from a CSPRNG, so runs differ: compare with the checkpoint instead
    privacy = {"client_dp": "central", "client_noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-5,
               "adaptive_clip": True, "clip_count_stddev": 1.0}
    part = simulate(digits_cfg(federation={"rounds": 2}, run={"name": "part"}, privacy=privacy))
    saved = json.loads((part.run_dir / "checkpoints" / "round-000002" / "meta.json").read_text())["extra"]["pipeline"]
    (current,) = [v["current"] for v in saved.values() if "current" in v]
    assert current != 0.5  # it adapted
    resumed = simulate(digits_cfg(federation={"rounds": 3}, run={"name": "part"}, privacy=privacy), resume=part.run_dir)
    assert resumed.history[-1]["clip_norm"] == pytest.approx(current)  # round 3 clips at the adapted norm


def test_dp_sgd_party_accountants_survive_resume(digits_cfg):
    privacy = {"dp_sgd": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
    full, part, resumed = _resumed(digits_cfg, 3, 2, privacy=privacy)
    assert resumed[-1]["epsilon"] == pytest.approx(full[-1]["epsilon"])
    assert resumed[-1]["epsilon"] > part[-1]["epsilon"]
