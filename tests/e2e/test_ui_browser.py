"""The dashboard in a real browser (headless Chromium driven by Selenium, Debian's chromium and
chromium-driver; nothing downloaded): it opens the dashboard of a running federation — a
``pollen server --ui-port`` coordinator with three gRPC parties over mutual TLS — sees the curves
grow, presses pause, sees the coordinator paused (and the API agrees: no round runs while it is),
presses resume, and the run completes. Screenshots go to ``$POLLEN_SCREENSHOTS`` (default: the
test's temporary folder); docs/img/dashboard-run.png is one of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tomllib
import urllib.request
from pathlib import Path

import pytest

from e2e_helpers import PARTIES, free_port, history, setup_root, wait_until

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROUNDS = 50


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'pollen-fl[dev]')")
    if missing:
        if os.environ.get("CI"):  # CI installs them (.ci/run): a missing browser there is a failure
            pytest.fail(f"the browser test needs {', '.join(missing)}; .ci/run installs chromium and chromium-driver")
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)")


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


def api(port: int, path: str, token: str) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def points(driver, chart: str) -> int:
    return int(driver.find_element("id", f"chart-{chart}").get_attribute("data-points") or 0)


def test_watch_pause_resume_complete(procs, prepared, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("POLLEN_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    setup_root(procs, prepared)
    port, ui = free_port(), free_port()
    server = procs.start("server", "server", "--dataset", "digits", "--num-parties", str(PARTIES), "--rounds", str(ROUNDS),
                         "--epochs", "2", "--seed", "0", "--no-progress", "--host", "127.0.0.1", "--port", str(port),
                         "--certs-dir", "certs", "--runs-dir", "runs", "--name", "web", "--ui-port", str(ui),
                         "--ui-token-file", "tokens.toml", "--ui-keep")
    wait_until(lambda: "waiting for" in procs.log("server") or server.poll() is not None, 90, "the coordinator to listen")
    assert "dashboard: http://127.0.0.1:" in procs.log("server")
    assert server.poll() is None, procs.log("server")
    tokens = tomllib.loads((procs.root / "tokens.toml").read_text())
    control = next(iter(tokens["control"].values()))

    # The browser is on the page before any party joins: it watches the run from round 1.
    browser.get(f"http://127.0.0.1:{ui}/#/run/web?token={control}")
    wait = WebDriverWait(browser, 120, poll_frequency=0.1)
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state"))
    for pid in range(PARTIES):
        procs.party(pid, port)

    wait.until(lambda d: points(d, "accuracy") >= 2)
    seen = points(browser, "accuracy")
    wait.until(lambda d: points(d, "accuracy") > seen)  # the curves grow without a reload
    assert points(browser, "loss") >= 2 and points(browser, "bytes") >= 2 and points(browser, "round-time") >= 2

    browser.find_element("id", "btn-pause").click()
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "paused")
    browser.save_screenshot(str(shots / "dashboard-paused.png"))
    run = api(ui, "/api/runs/web", control)
    assert run["control"]["state"] == "paused"  # the coordinator waits between rounds
    done = run["rounds_done"]
    assert 2 <= done < ROUNDS
    assert len(api(ui, "/api/runs/web/rounds", control)) == done
    assert [c["command"] for c in run["commands"]] == ["pause"] and run["commands"][0]["by"].startswith("operator@")
    # While paused the page keeps polling and the round count does not move.
    browser.refresh()
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "paused")
    assert api(ui, "/api/runs/web", control)["rounds_done"] == done

    browser.find_element("id", "btn-resume").click()
    wait.until(lambda d: d.find_element("id", "status").get_attribute("data-state") == "finished")
    wait.until(lambda d: points(d, "accuracy") == ROUNDS)
    browser.save_screenshot(str(shots / "dashboard-run.png"))
    browser.get(f"http://127.0.0.1:{ui}/#/run/web/parties")
    wait.until(lambda d: len(d.find_elements("css selector", "#parties-table tr[data-party]")) == PARTIES)
    browser.save_screenshot(str(shots / "dashboard-parties.png"))
    browser.get(f"http://127.0.0.1:{ui}/#/")
    wait.until(lambda d: d.find_elements("css selector", "#runs tr[data-run='web']"))
    browser.save_screenshot(str(shots / "dashboard-runs.png"))

    records = history(procs.root / "runs" / "web")
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert [c["command"] for c in records[done]["control"]] == ["pause", "resume"]
    wait_until(lambda: "the dashboard stays" in procs.log("server"), 60, "the run folder to be written")
    server.send_signal(signal.SIGINT)  # --ui-keep: the dashboard stays until Ctrl-C
    assert server.wait(timeout=60) == 0, procs.log("server")
    if os.environ.get("POLLEN_SCREENSHOTS") is None:
        print(f"screenshots in {shots}")
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
