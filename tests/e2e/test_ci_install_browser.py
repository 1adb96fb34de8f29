"""``.ci/install-browser`` (run by ``.ci/run``): where the browser test's chromium cannot be
installed — not a Debian system, or not root — CI stops with one clear line saying what to do;
where both programs are there it checks that their versions match."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "install-browser"


def run(env: dict[str, str], as_nobody: bool = False) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT)]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_not_debian_is_one_clear_failure(tmp_path):
    (tmp_path / "os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n')
    out = run({"CHROMIUM": str(tmp_path / "chromium"), "OS_RELEASE": str(tmp_path / "os-release")})
    assert out.returncode == 1
    assert "not a Debian system (ubuntu" in out.stderr and "cannot be installed here" in out.stderr
    assert "Traceback" not in out.stderr and "apt-get update" not in out.stdout


def test_not_root_is_one_clear_failure(tmp_path):
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run the script as another user")
        out = run({"CHROMIUM": "/nonexistent/chromium"}, as_nobody=True)
    else:
        out = run({"CHROMIUM": "/nonexistent/chromium"})
    if "not a Debian system" in out.stderr:
        pytest.skip("this machine is not Debian")
    assert out.returncode == 1
    assert "needs root" in out.stderr and "apt-get install chromium chromium-driver" in out.stderr


def test_mismatched_versions_are_refused(tmp_path):
    for name, version in (("chromium", "Chromium 156.0.1.2 built on Debian"), ("chromedriver", "ChromeDriver 141.0.1.2")):
        (tmp_path / name).write_text(f"#!/bin/sh\necho '{version}'\n")
        (tmp_path / name).chmod(0o755)
    env = {"CHROMIUM": str(tmp_path / "chromium"), "CHROMEDRIVER": str(tmp_path / "chromedriver")}
    out = run(env)
    assert out.returncode == 1 and "differ in major version" in out.stderr
    (tmp_path / "chromedriver").write_text("#!/bin/sh\necho 'ChromeDriver 156.0.1.2 (abc)'\n")
    out = run(env)
    assert out.returncode == 0, out.stderr
    assert "Chromium 156" in out.stdout
