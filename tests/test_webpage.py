"""The web status page in a real headless Chromium (selenium), against a real daemon.

Screenshots go to $EXEC_SUPERVISOR_ARTIFACTS (CI artifacts) or the test's temp dir;
with EXEC_SUPERVISOR_README_SHOT=path the farm-of-200 view is also saved there (that is
how docs/web-status.png is made: `EXEC_SUPERVISOR_README_SHOT=docs/web-status.png pytest
tests/test_webpage.py -k two_hundred`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Farm, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
SLEEP = shutil.which("sleep")
TOKEN = "page-test-token-0123456789abcdef"
URL_RE = re.compile(r"web status page and metrics at (http://\S+/) ")

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("needs the Debian packages chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1000", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-sync", "--disable-component-update",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    # The system's driver, named explicitly: selenium-manager never runs (it would download one).
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("EXEC_SUPERVISOR_ARTIFACTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def url_of(farm: Farm, count: int = 1) -> str:
    farm.wait_log("web status page and metrics at ", count=count)
    return URL_RE.findall(farm.log())[-1]


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def row_state(driver: Any, exec_id: str) -> str | None:
    return js(driver, "const r = document.querySelector(`tr[data-id='${arguments[0]}']`); "
                      "return r ? r.dataset.state : null;", exec_id)


def shown_rows(driver: Any) -> int:
    return js(driver, "return [...document.querySelectorAll('tr[data-id]')].filter(r => !r.hidden).length;")


def not_blank(driver: Any, path: Path) -> None:
    """Save a screenshot and check it is not blank: many distinct colours in a sample of its pixels."""
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path} is suspiciously small"
    colours = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = new Image();
        img.onload = () => {
            const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
            const g = c.getContext('2d'); g.drawImage(img, 0, 0);
            const data = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
            for (let i = 0; i < data.length; i += 4 * 97) seen.add(data[i] + ',' + data[i+1] + ',' + data[i+2]);
            done(seen.size);
        };
        img.onerror = () => done(-1);
        img.src = 'data:image/png;base64,' + arguments[0];
    """, driver.get_screenshot_as_base64())
    assert colours > 20, f"the page looks blank ({colours} colours in the pixel sample)"


def click_action(driver: Any, action: str, target: str) -> None:
    js(driver, "document.querySelector(`button.act[data-action='${arguments[0]}'][data-target='${arguments[1]}']`)"
               ".click();", action, target)
    wait_until(lambda: js(driver, "return document.getElementById('confirm').open;"), 5, what="the confirm dialog")
    js(driver, "document.getElementById('confirm-yes').click();")


def answer(driver: Any) -> tuple[str, str] | None:
    return js(driver, "const a = document.getElementById('answer'); "
                      "return a.hidden ? null : [a.dataset.ok, a.textContent];")


def test_two_hundred_instances_live_filter_and_actions(farm: Farm, browser: Any, tmp_path: Path) -> None:
    farm.write({
        "Crawler": {"command": [SLEEP, "10000"], "args": [], "count": 150},
        "Indexer": {"command": [SLEEP, "10000"], "args": [], "count": 50},
    }, http={"listen": "127.0.0.1:0", "token_env": "PAGE_TEST_TOKEN", "actions": True})
    os.environ["PAGE_TEST_TOKEN"] = TOKEN
    try:
        farm.start(wait_instances=200)
    finally:
        del os.environ["PAGE_TEST_TOKEN"]
    url = url_of(farm)
    shots = artifacts(tmp_path)
    browser.get(url)
    wait_until(lambda: js(browser, "return document.querySelectorAll('tr[data-id]').length;") == 200, 20,
               what="200 rows")
    wait_until(lambda: js(browser, "return document.getElementById('conn').classList.contains('ok');"), 10,
               what="the page connected")
    wait_until(lambda: js(browser, "return document.querySelectorAll(\"tr[data-state='running']\").length;") == 200,
               30, what="all 200 running on the page")
    ids = set(js(browser, "return [...document.querySelectorAll('tr[data-id]')].map(r => r.dataset.id);"))
    assert ids == {f"ET-Crawler-{i}" for i in range(150)} | {f"ET-Indexer-{i}" for i in range(50)}
    assert js(browser, "return document.getElementById('totals').textContent;") == "200 / 200"
    assert TOKEN not in browser.page_source

    # kill -9: the crash and the restart show without a reload, within 2 s.
    victim = "ET-Indexer-7"
    old_pid = farm.instances()[victim]
    js(browser, "window.__marker = 'no reload';")
    killed = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)

    def cell(column: int) -> str:
        return js(browser, f"return document.querySelector(\"tr[data-id='{victim}'] td:nth-child({column})\")"
                           ".textContent;")

    # The crash (last exit: killed by SIGKILL, restarts 1) and the restart (a new pid, starting or running).
    wait_until(lambda: "SIGKILL" in cell(6) and cell(5) == "1" and cell(3) not in ("", str(old_pid))
               and row_state(browser, victim) in ("starting", "running"), 2.0, interval=0.01,
               what="the crash and the restart on the page")
    assert time.monotonic() - killed < 2.0
    assert js(browser, "return window.__marker;") == "no reload"
    wait_until(lambda: js(browser, "return [...document.querySelectorAll('#events li')].some(li => "
                                   "li.dataset.event === 'crashed' && li.dataset.execId === arguments[0]);", victim),
               5, what="the crash in recent events")
    # the crash event carries the signal in its message
    assert "SIGKILL" in js(browser, "return [...document.querySelectorAll('#events li')].find(li => "
                                    "li.dataset.event === 'crashed').textContent;")

    # The filter narrows the rows.
    box = browser.find_element("id", "filter")
    box.send_keys("Indexer-4")
    wait_until(lambda: shown_rows(browser) == 11, 5, what="11 rows for 'Indexer-4' (4, 40-49)")
    box.clear()
    box.send_keys(" ")
    js(browser, "const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'));")
    wait_until(lambda: shown_rows(browser) == 200, 5, what="all rows back")
    browser.execute_script("const s = document.getElementById('state-filter'); s.value = '!running';"
                           "s.dispatchEvent(new Event('change'));")
    wait_until(lambda: shown_rows(browser) <= 1, 5, what="only non-running rows")
    browser.execute_script("const s = document.getElementById('state-filter'); s.value = '';"
                           "s.dispatchEvent(new Event('change'));")

    # Sorting by a column reorders rows in place.
    js(browser, "document.querySelector(\"section[data-type='Indexer'] th[data-key='restarts']\").click();")
    js(browser, "document.querySelector(\"section[data-type='Indexer'] th[data-key='restarts']\").click();")
    wait_until(lambda: js(browser, "return document.querySelector(\"section[data-type='Indexer'] tbody tr\")"
                                   ".dataset.id;") == victim, 5, what="the restarted one first by restarts")

    # The instance detail: command line, environment names, log path.
    js(browser, "document.querySelector(\"tr[data-id='ET-Crawler-3'] td.id a\").click();")
    wait_until(lambda: "ES_TEST_MARK" in js(browser, "return document.getElementById('detail-facts').textContent;"),
               5, what="the detail panel")
    facts = js(browser, "return document.getElementById('detail-facts').textContent;")
    assert f"{SLEEP} 10000" in facts and "ET-Crawler-3.log" in facts and "PAGE_TEST_TOKEN" not in facts

    not_blank(browser, shots / "farm-200.png")
    # Groups collapse: the Indexer group (with the crash) comes into view.
    js(browser, "document.querySelector(\"section[data-type='Crawler'] .ghead .name\").click();")
    assert js(browser, "return getComputedStyle(document.querySelector(\"section[data-type='Crawler'] table\"))"
                       ".display;") == "none"
    readme_shot = os.environ.get("EXEC_SUPERVISOR_README_SHOT")
    if readme_shot:
        browser.save_screenshot(readme_shot)
    js(browser, "document.querySelector(\"section[data-type='Crawler'] .ghead .name\").click();")

    # An action without the token is refused, with it done.
    target = "ET-Crawler-5"
    pid = farm.instances()[target]
    click_action(browser, "restart", target)
    wait_until(lambda: answer(browser), 10, what="an answer")
    ok, text = answer(browser)
    assert ok == "0" and "401" in text, text
    assert farm.instances()[target] == pid
    browser.find_element("id", "token").send_keys(TOKEN)
    js(browser, "document.getElementById('token-save').click();")
    assert js(browser, "return sessionStorage.getItem('es-token');") == TOKEN
    assert TOKEN not in browser.current_url
    click_action(browser, "restart", target)
    wait_until(lambda: (answer(browser) or ("", ""))[0] == "1", 10, what="the restart accepted")
    wait_until(lambda: farm.instances().get(target) not in (None, pid), 20, what="a new pid")
    # Scale a type from its group header.
    js(browser, "document.querySelector(\"section[data-type='Indexer'] .scale-n\").value = '45';")
    click_action(browser, "scale", "Indexer")
    wait_until(lambda: js(browser, "return document.querySelectorAll(\"section[data-type='Indexer'] tr[data-id]\")"
                                   ".length;") == 45, 20, what="45 Indexer rows after scale")
    not_blank(browser, shots / "after-actions.png")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_page_survives_a_daemon_restart_and_switches_language(farm: Farm, browser: Any,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    farm.write({"A": {"command": [SLEEP, "10000"], "args": [], "count": 3}},
               http={"listen": f"127.0.0.1:{port}"}, events={"forward": False, "language": "zh"})
    farm.start(wait_instances=3)
    url = url_of(farm)
    browser.get(url)
    connected = "return document.getElementById('conn').classList.contains('ok');"
    wait_until(lambda: js(browser, connected), 15, what="the page connected")
    # events.language: zh is the page's language until the operator switches (set from the first answer).
    wait_until(lambda: js(browser, "return document.documentElement.lang;") == "zh-CN", 10, what="the page in Chinese")
    assert "最近事件" in js(browser, "return document.body.textContent;")
    js(browser, "const s = document.getElementById('lang'); s.value = 'en'; s.dispatchEvent(new Event('change'));")
    assert "recent events" in js(browser, "return document.body.textContent;")
    assert farm.stop() == 0
    wait_until(lambda: not js(browser, connected), 10, what="the page showing disconnected")
    assert "disconnected" in js(browser, "return document.getElementById('conn').textContent;")
    not_blank(browser, artifacts(tmp_path) / "disconnected.png")
    old_pid = js(browser, "return document.getElementById('farm-host').textContent;")
    farm.start(wait_instances=3)
    url_of(farm, count=2)
    wait_until(lambda: js(browser, connected), 20, what="the page reconnected by itself")
    wait_until(lambda: js(browser, "return document.getElementById('farm-host').textContent;") != old_pid, 10,
               what="the new daemon's pid in the header")
    wait_until(lambda: js(browser, "return document.querySelectorAll('tr[data-id]').length;") == 3, 10,
               what="the rows after reconnecting")
