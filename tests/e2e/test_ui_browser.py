"""The dashboard in a real browser (headless Chromium driven by Selenium, Debian's chromium and
chromium-driver; nothing downloaded): it opens the dashboard of a running federation — a
``pollen server --ui-port`` coordinator with three gRPC parties over mutual TLS — sees the curves
grow, presses pause, sees the coordinator paused (and the API agrees: no round runs while it is),
types a new learning rate (which the parties of the next rounds train with), presses resume, and
the run completes. Screenshots go to ``$POLLEN_SCREENSHOTS`` (default: the
test's temporary folder); docs/img/dashboard-run.png is one of them.

No step depends on timing: the parties run a small app whose training of round 3 waits while a
file ``hold`` exists, so the test knows where the federation is when it presses pause (round 3
going on), and removing the file is what lets round 3 end and the pause take effect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tomllib
import urllib.request
from pathlib import Path

import pytest

from e2e_helpers import PARTIES, free_port, history, setup_root, wait_until

from pollen.telemetry.history import party_metric

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROUNDS, HOLD_ROUND, NEW_LR = 5, 3, 0.2

# The parties' app: digits, a linear model, Pollen's own training loop, and a gate before the
# training of round HOLD_ROUND (the coordinator evaluates on 300 held examples every round).
GATE_APP = f'''
import time
from pathlib import Path

import torch

from pollen.models.builtin import dataset
from pollen.config import make_config

HOLD = Path(__file__).with_name("hold")


def _digits():
    ds = dataset(make_config({{"data": {{"dataset": "digits"}}}}))
    return torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train).long()


def model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def load_data(ctx):
    x, y = _digits()
    return ctx.partition(x[300:], y[300:])


def server_data(ctx):
    x, y = _digits()
    return x[:300], y[:300]


def train(model, data, config, ctx):
    while config.round >= {HOLD_ROUND} and HOLD.exists():  # the test removes the file
        time.sleep(0.02)
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    for _ in range(config.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return {{"num_examples": len(y), "loss": float(loss), "lr": config.lr}}
'''


def required() -> bool:
    """CI (``.ci/run`` sets ``POLLEN_CI=1``) must run the browser test, never skip it."""
    return bool(os.environ.get("POLLEN_CI") or os.environ.get("CI"))


def can_install() -> bool:
    """Debian's chromium and chromium-driver can be installed here (root on a Debian system)."""
    try:
        debian = "ID=debian" in Path("/etc/os-release").read_text().replace('"', "").splitlines()
    except OSError:
        debian = False
    return os.geteuid() == 0 and debian and shutil.which("apt-get") is not None


def _browser_or_skip() -> None:
    """Skip only where the browser cannot be had; fail (with what to do) where it can."""
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    python = []
    for module, extra in (("selenium", "dev"), ("fastapi", "ui"), ("uvicorn", "ui")):
        try:
            __import__(module)
        except ImportError:
            python.append(f"{module} (pip install 'pollen-fl[{extra}]')")
    if python:
        if required():
            pytest.fail(f"the browser test needs {', '.join(python)}; .ci/run installs pollen-fl[dev]")
        pytest.skip(f"needs {', '.join(python)}")
    if missing:
        how = "apt-get install chromium chromium-driver (or run .ci/run, which installs them)"
        if required() or can_install():
            pytest.fail(f"the browser test needs {' and '.join(missing)}: {how}")
        pytest.skip(f"needs {' and '.join(missing)}, which only Debian's chromium and chromium-driver provide "
                    f"here and this is not root on Debian ({how})")


@pytest.fixture
def browser(tmp_path):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1400", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def api(port: int, path: str, token: str) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def points(driver, chart: str) -> int:
    return int(driver.find_element("id", f"chart-{chart}").get_attribute("data-points") or 0)


def shown_state(driver) -> str | None:
    return driver.find_element("id", "status").get_attribute("data-state")


def test_watch_pause_resume_complete(procs, prepared, browser, tmp_path):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("POLLEN_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    setup_root(procs, prepared)
    root = procs.root
    (root / "gate_app.py").write_text(GATE_APP)
    hold = root / "hold"
    hold.touch()  # round HOLD_ROUND's training waits until the test removes it
    port = free_port()
    server = procs.start("server", "server", "--app", "gate_app.py", "--num-parties", str(PARTIES),
                         "--rounds", str(ROUNDS), "--seed", "0", "--no-progress", "--host", "127.0.0.1",
                         "--port", str(port), "--certs-dir", "certs", "--runs-dir", "runs", "--name", "web",
                         "--ui-port", "0", "--ui-token-file", "tokens.toml", "--ui-keep")
    wait_until(lambda: "waiting for" in procs.log("server") or server.poll() is not None, 120, "the coordinator to listen")
    assert server.poll() is None, procs.log("server")
    ui = int(re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", procs.log("server")).group(1))
    tokens = tomllib.loads((root / "tokens.toml").read_text())
    control = next(iter(tokens["control"].values()))

    # The browser is on the page before any party joins: no round can have run yet.
    browser.get(f"http://127.0.0.1:{ui}/#/run/web?token={control}")
    # The page redraws parts of itself: an element found a moment ago may be gone; look again.
    wait = WebDriverWait(browser, 180, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    wait.until(shown_state)
    assert points(browser, "accuracy") == 0
    browser.execute_script("window.pollenNotReloaded = true")  # gone if the page were reloaded
    for pid in range(PARTIES):
        procs.start(f"party{pid}", "client", "--party-id", str(pid), "--server", f"localhost:{port}",
                    "--app", "gate_app.py", "--certs-dir", "certs", "--backoff-cap", "1", "--threads", "1")

    # Rounds 1 and 2 run; round 3 waits on the gate. The curves grow from 0 to 2 points in place.
    wait.until(lambda d: points(d, "accuracy") == HOLD_ROUND - 1)
    assert browser.execute_script("return window.pollenNotReloaded === true")
    for name in ("loss", "bytes", "round-time"):
        wait.until(lambda d: points(d, name) == HOLD_ROUND - 1)
    wait.until(lambda d: shown_state(d) == "running")
    # Round 3 has started (its parties are training, held by the gate): a pause now comes after it.
    wait_until(lambda: api(ui, "/api/runs/web", control)["live"]["round"] == HOLD_ROUND, 120, "round 3 to start")
    assert api(ui, "/api/runs/web", control)["rounds_done"] == HOLD_ROUND - 1

    # Pause while round 3 goes on: the coordinator finishes that round, then waits.
    browser.find_element("id", "btn-pause").click()
    wait.until(lambda d: shown_state(d) == "pausing")
    assert api(ui, "/api/runs/web", control)["rounds_done"] == HOLD_ROUND - 1
    hold.unlink()  # round 3 may end now
    wait.until(lambda d: shown_state(d) == "paused")
    wait.until(lambda d: points(d, "accuracy") == HOLD_ROUND)
    browser.save_screenshot(str(shots / "dashboard-paused.png"))
    run = api(ui, "/api/runs/web", control)
    assert run["control"]["state"] == "paused"  # the round loop is waiting between rounds 3 and 4
    assert run["rounds_done"] == HOLD_ROUND
    assert len(api(ui, "/api/runs/web/rounds", control)) == HOLD_ROUND
    assert [c["command"] for c in run["commands"]] == ["pause"] and run["commands"][0]["by"].startswith("operator@")
    # A reload while paused shows the same: paused, round 3 the last one.
    browser.refresh()
    wait.until(lambda d: shown_state(d) == "paused" and points(d, "accuracy") == HOLD_ROUND)
    run = api(ui, "/api/runs/web", control)
    assert run["control"]["state"] == "paused" and run["rounds_done"] == HOLD_ROUND

    # While paused, a new learning rate for the next rounds, typed into the page's form.
    browser.find_element("id", "set-lr").send_keys(str(NEW_LR))
    browser.find_element("id", "btn-apply").click()
    # The paused loop applies commands as they come (a pause holds rounds, not commands).
    wait_until(lambda: [c["command"] for c in api(ui, "/api/runs/web", control)["commands"]] == ["pause", "reconfigure"],
               120, "the new settings to be applied")
    assert api(ui, "/api/runs/web", control)["control"]["state"] == "paused"
    browser.find_element("id", "btn-resume").click()
    wait.until(lambda d: shown_state(d) == "finished")
    wait.until(lambda d: points(d, "accuracy") == ROUNDS)
    browser.save_screenshot(str(shots / "dashboard-run.png"))
    browser.get(f"http://127.0.0.1:{ui}/#/run/web/parties")
    wait.until(lambda d: len(d.find_elements("css selector", "#parties-table tr[data-party]")) == PARTIES)
    browser.save_screenshot(str(shots / "dashboard-parties.png"))
    browser.get(f"http://127.0.0.1:{ui}/#/")
    wait.until(lambda d: d.find_elements("css selector", "#runs tr[data-run='web']"))
    browser.save_screenshot(str(shots / "dashboard-runs.png"))

    records = history(root / "runs" / "web")
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    applied = records[HOLD_ROUND]["control"]  # applied before round 4, with who made them
    assert [c["command"] for c in applied] == ["pause", "reconfigure", "resume"]
    assert applied[1]["args"] == {"lr": NEW_LR} and all(c["by"].startswith("operator@") for c in applied)
    # What the parties trained with (the app reports config.lr): the new rate from round 4 on.
    lrs = [party_metric(r, "train_lr") for r in records]
    assert lrs[HOLD_ROUND:] == pytest.approx([NEW_LR] * (ROUNDS - HOLD_ROUND))
    assert all(abs(lr - NEW_LR) > 0.01 for lr in lrs[:HOLD_ROUND])
    wait_until(lambda: "the dashboard stays" in procs.log("server"), 120, "the run folder to be written")
    server.send_signal(signal.SIGINT)  # --ui-keep: the dashboard stays until Ctrl-C
    assert server.wait(timeout=60) == 0, procs.log("server")
    if os.environ.get("POLLEN_SCREENSHOTS") is None:
        print(f"screenshots in {shots}")
