"""Every ``pollen`` command the Dockerfile, docker-compose file and Kubernetes manifests run exists
in the CLI and accepts those flags and values (no Docker engine or cluster runs here)."""

import contextlib
import io
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # in the dev extra

from pollen.cli import build_parser, config_from_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SHELL_WORDS = {"exec", "then", "else", "fi", "if"}


def commands_in(script: str) -> list[list[str]]:
    """The ``pollen …`` commands of a shell script (variables replaced by a party number)."""
    script = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_]+", "0", script)
    out = []
    for segment in re.split(r";|&&|\|\||\(|\)", script):
        tokens = shlex.split(segment)
        if "pollen" in tokens:
            tokens = tokens[tokens.index("pollen") + 1:]
            out.append([t for t in tokens if t not in SHELL_WORDS])
    return out


def from_command(cmd) -> list[list[str]]:
    if isinstance(cmd, str):
        return commands_in(cmd)
    if cmd[:2] == ["sh", "-c"]:
        return commands_in(cmd[2])
    return [list(map(str, cmd[1:]))] if cmd and cmd[0] == "pollen" else []


def compose_commands() -> list[list[str]]:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return [c for svc in doc["services"].values() if "command" in svc for c in from_command(svc["command"])]


def k8s_commands() -> list[list[str]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                out += from_command(list(container.get("command", [])) + list(container.get("args", [])))
    return out


def check(argv: list[str]) -> None:
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"'pollen {' '.join(argv)}' is not accepted by the CLI: {err.getvalue()}")
    if hasattr(args, "config") and not getattr(args, "resume", None):
        config_from_args(args)  # flag values validate (ConfigError otherwise)


def test_compose_commands_exist():
    cmds = compose_commands()
    assert {c[0] for c in cmds} == {"certs", "partition", "server", "client"}
    assert len(cmds) == 7
    for argv in cmds:
        check(argv)


def test_kubernetes_commands_exist():
    cmds = k8s_commands()
    assert sorted(c[0] for c in cmds) == ["client", "server", "server"]
    for argv in cmds:
        check(argv)


def test_dockerfile_runs_the_pollen_script():
    text = (DEPLOY / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[0] == "pollen"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["pollen"] == "pollen.cli:main"
    for copied in re.findall(r"^COPY (.+) \./", text, re.M):
        for name in copied.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which the repository lacks"


def test_a_wrong_flag_would_be_caught():
    with pytest.raises(pytest.fail.Exception):
        check(["client", "--party-id", "0", "--server", "x:1", "--data-path", "d", "--no-such-flag"])


def _resume_tests() -> list[tuple[str, str]]:
    """(shell test, run folder) of each coordinator command that resumes when a checkpoint exists."""
    texts = [(DEPLOY / "docker-compose.yml").read_text(), (DEPLOY / "k8s" / "coordinator.yaml").read_text()]
    found = [m.groups() for t in texts for m in re.finditer(r"if ([^;]*?);\s*then exec pollen server --resume (\S+)", t)]
    assert len(found) == 2, found
    return found


def test_deploy_files_resume_exactly_when_the_run_has_a_checkpoint(tmp_path):
    """The coordinator containers restart with --resume only if the checkpointer's own layout holds
    a checkpoint (else a restarted container would start the run anew into a folder that holds it)."""
    import subprocess

    from pollen.config import make_config
    from pollen.simulation import simulate

    run = tmp_path / "runs" / "r"
    simulate(make_config({"data": {"dataset": "digits", "parties": 2}, "model": {"model": "mlp"},
                          "federation": {"rounds": 1}, "run": {"runs_dir": str(run.parent), "name": "r",
                                                                "progress": False}}))
    empty = tmp_path / "runs" / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for test, folder in _resume_tests():
        for where, resumes in ((run, True), (empty, False), (tmp_path / "none", False)):
            rc = subprocess.run(["sh", "-c", test.replace(folder, str(where))]).returncode
            assert (rc == 0) == resumes, (test, where, sorted(p.name for p in (where / "checkpoints").glob("*"))
                                    if (where / "checkpoints").exists() else "no folder")
