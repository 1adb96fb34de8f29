"""What a new user meets first: --version, --help per command, completion, progress, refusals."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from pollen.cli import main


def _help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_version(capsys):
    import pollen

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pollen {pollen.__version__}"


def test_each_command_shows_only_its_own_flags(capsys):
    sim = _help_text("simulate", capsys)
    assert "--backend" in sim and "--app" in sim and "--heartbeat-interval" not in sim and "--port" not in sim
    server = _help_text("server", capsys)
    assert "--port" in server and "--app" in server and "--backend" not in server and "--attack" not in server
    client = _help_text("client", capsys)
    assert "--data" in client and "--app" in client and "--rounds" not in client
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--port", "9394"])  # a network flag is not a simulation flag
    assert e.value.code == 2


def test_help_sections_fit_a_screen(capsys):
    text = _help_text("simulate", capsys)
    sections = text.split("\n\n")
    assert max(len(s.splitlines()) for s in sections) <= 60


def test_completion_lists_commands_and_their_flags(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -F _pollen pollen" in script and "simulate" in script and "--dp-sgd" in script
    out = subprocess.run(["bash", "-c", script + "\nCOMP_WORDS=(pollen sim); COMP_CWORD=1; _pollen; echo ${COMPREPLY[@]}"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["simulate"]


def test_pollen_help_does_not_import_torch():
    code = "import sys; from pollen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def test_progress_shows_parties_done_and_an_eta_within_the_first_round():
    from pollen.telemetry.events import PartyReplied, RoundStarted, RunStarted
    from pollen.telemetry.progress import ProgressSink

    sink = ProgressSink(io.StringIO(), live=False)
    sink(RunStarted(rounds=5, start_round=1, parties=4))
    assert sink.eta() is None
    sink(RoundStarted(1, ("0", "1", "2", "3")))
    sink(PartyReplied(1, "0", "fit", 1.0))
    assert sink.eta() is not None and sink.eta() > 0  # estimated from 1 of 4 parties of round 1
    sink(PartyReplied(1, "1", "fit", 1.0, failure="ModelError: shapes differ"))
    assert "party 1 failed in round 1: ModelError: shapes differ" in sink.stream.getvalue()


def test_a_config_mistake_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["simulate", "--dataset", "digits", "--rounds", "0", "--runs-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "federation.rounds" in err and "Traceback" not in err
