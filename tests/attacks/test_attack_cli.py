"""``pollen attack membership|inversion`` on a real (tiny) run directory, DP bound check included."""

from __future__ import annotations

import json

from pollen.cli import main


def test_attack_commands_on_a_run(tmp_path, digits_cfg, capsys):
    from pollen.simulation import simulate

    cfg = digits_cfg(data={"dataset": "digits", "parties": 2, "holdout": 0}, federation={"rounds": 1},
                     model={"model": "logreg"})
    run = simulate(cfg).run_dir
    history = run / "history.jsonl"
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    lines[-1]["epsilon"] = 0.5  # as a DP run would record it; the config gives no delta → δ = 0
    history.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    args = ["attack", "membership", "--run", str(run), "--candidates", "60", "--shadows", "1", "--bootstrap", "20"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "loss_threshold" in out and "lira_offline" in out and "DP bound" in out
    saved = json.loads((run / "attacks" / "membership.json").read_text())
    assert saved["privacy"]["epsilon"] == 0.5 and "dp_bound" in saved["attacks"]["loss_threshold"]
    assert main(["attack", "inversion", "--run", str(run), "--steps", "20"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["attack", "inversion", "--run", str(run), "--party", "9"]) == 2  # a one-line error, not a traceback
