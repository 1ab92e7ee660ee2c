"""The real app in headless Chromium: start the server, upload a sample X-ray, see the comparison table, screenshot."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from helpers import NIH14

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT_ENV = "CXR_SCREENSHOT"  # also save the screenshot here when set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not become healthy at {url} in {timeout:.0f} s")


def idle(driver) -> bool:
    """The app has finished its run: no "Running" status and no stale (dimmed) element left."""
    from selenium.webdriver.common.by import By

    return not driver.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget], [data-stale=true]")


def wait_for(driver, condition, timeout: float = 180, poll: float = 0.02):
    """Wait until ``condition(driver)`` is truthy and the app is idle; returns the condition's value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=poll).until(
        lambda d: (value := condition(d)) and idle(d) and value)


def main_text(driver) -> str:
    """The main area's rendered text, read in the page (``innerText``: one call; selenium's ``.text`` walks every node
    from Python and took 0.3-0.6 s on these pages, longer than the interactions it timed)."""
    text = driver.execute_script("const m = document.querySelector('[data-testid=stMain]'); return m && m.innerText;")
    return (text or "").replace("\u2060", "")  # see ui.plain


def open_page(driver, path: str) -> None:
    """Click the sidebar's link to a page ("" is Compare, else "roc", "explain", ...): same session, unlike a new
    URL."""
    from selenium.webdriver.common.by import By

    links = driver.find_elements(By.CSS_SELECTOR, "a[data-testid=stSidebarNavLink]")
    next(a for a in links if urllib.parse.urlparse(a.get_attribute("href")).path.strip("/") == path).click()


@contextlib.contextmanager
def serve(env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real app (``streamlit run app.py``) on a free port, as (url, process) once it answers its health check;
    stopped on exit. Shared with ``benchmarks/app_browser.py``, which also times the start."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def chrome(width: int = 1600, height: int = 2000):
    """Headless Chromium driven by selenium (skips, or fails under CI, when it is not installed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = f"needs {CHROMIUM} and {CHROMEDRIVER} (bash scripts/setup.sh --with-browser)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server() -> Iterator[str]:
    with serve() as (url, _):
        yield url


@pytest.fixture
def browser():
    with chrome() as driver:
        yield driver


@pytest.mark.slow
def test_upload_in_a_real_browser_shows_the_comparison(server, browser, data_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sample = sorted((data_dir / "samples").glob("*.png"))[0]
    browser.get(server)
    wait = WebDriverWait(browser, 180)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))).send_keys(str(sample.resolve()))
    table = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=stHtml] table")))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=stPlotlyChart]")))
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget]"))  # run finished
    rows = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody th.row_heading")]
    assert rows == NIH14  # the results table: one row per label, every model a column
    assert len(table.find_elements(By.CSS_SELECTOR, "thead th")) > 10
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Research tool, not a medical device" in body
    assert sample.name in body and "Labels where models split" in body
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
    shot = tmp_path / "compare.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, os.environ[SCREENSHOT_ENV])


@pytest.mark.slow
def test_a_deep_link_to_a_cold_server_gets_the_app_navigation(server, browser):
    """Before app.py has ever run, Streamlit would run pages/roc.py bare with the pages/ folder as navigation
    ("app", "common", ...) and no task or model selection; the app must go through app.py instead."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/roc")
    sidebar = WebDriverWait(browser, 180).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]") if "Task" in d.find_element(
            By.CSS_SELECTOR, "[data-testid=stSidebar]").text else False)
    assert "ROC & thresholds" in sidebar.text and "Models" in sidebar.text
    assert "common" not in sidebar.text.split()
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")


@pytest.mark.slow
def test_the_film_viewer_zooms_sets_window_level_and_cam_opacity_in_the_browser(server, browser, data_dir):
    """Wheel zoom at the cursor, shift-drag window/level, invert, and the Explain page's opacity all act on the
    full-resolution film in the browser: the iframe is not rebuilt (no rerun), and the view is kept when the page is
    left and opened again."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def viewer():
        """The page's viewer, once the app has been idle for a second (a later run could rebuild the iframe)."""
        browser.switch_to.default_content()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe") and d.find_elements(
            By.CSS_SELECTOR, "[data-testid=stHtml], [data-testid=stDataFrame]"))
        time.sleep(1)
        browser.switch_to.frame(wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0])
        return wait_for(browser, lambda d: d.execute_script("return window.cxrViewer && window.cxrViewer.state()"))

    browser.get(server)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys(
        str((data_dir / "samples" / "00001933_000.png").resolve()))
    fitted = viewer()["view"]
    stage = browser.find_element(By.ID, "stage")
    assert "native 1024 x 1024 px" in browser.find_element(By.ID, "status").text
    browser.execute_script("window.notRebuilt = true")
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(stage), 0, -400).perform()
    zoomed = browser.execute_script("return window.cxrViewer.state().view")
    assert zoomed["s"] > 1.5 * fitted["s"]
    (ActionChains(browser).key_down(Keys.SHIFT).click_and_hold(stage).move_by_offset(-120, 40).release()
     .key_up(Keys.SHIFT).perform())
    browser.find_element(By.ID, "invert").click()
    state = browser.execute_script("return window.cxrViewer.state()")
    assert state["window"] < 200 and state["level"] < 128 and state["invert"] and state["view"] == zoomed
    slope = float(browser.find_element(By.ID, "fr").get_attribute("slope"))
    assert slope == pytest.approx(-255 / state["window"], rel=1e-4)  # cxrcore.viewer.transfer's rule, inverted
    assert browser.execute_script("return window.notRebuilt")

    browser.switch_to.default_content()
    open_page(browser, "explain")
    viewer()
    cams = browser.find_elements(By.CSS_SELECTOR, "img.cam")
    tiles = browser.find_elements(By.CSS_SELECTOR, ".tile")
    assert len(cams) > 1 and len(tiles) == len(cams)  # every map side by side under the viewer
    tiles[1].click()
    assert browser.execute_script("return window.cxrViewer.state().layer") == 1 and cams[1].is_displayed()
    browser.execute_script("window.notRebuilt = true; const e = document.getElementById('opacity'); e.value = 0.8;"
                           "e.dispatchEvent(new Event('input'))")
    layer = browser.find_element(By.CSS_SELECTOR, "img.cam[data-layer='0']")
    assert layer.value_of_css_property("opacity") == "0.8" and browser.execute_script("return window.notRebuilt")

    browser.switch_to.default_content()
    open_page(browser, "")
    kept = viewer()
    assert kept["view"] == zoomed and kept["invert"] and kept["window"] == state["window"]


@pytest.mark.slow
def test_the_film_and_task_stay_put_across_pages_and_a_refresh(server, browser, data_dir, tmp_path):
    """Compare -> ROC -> Compare keeps the uploader naming the film and its results; a refresh keeps the page (its
    path) and the task (a query parameter)."""
    from selenium.webdriver.common.by import By

    sample = sorted((data_dir / "samples").glob("*.png"))[0]
    browser.get(server)
    sidebar = "[data-testid=stSidebar]"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"{sidebar} input[type=file]"), 300)
    browser.find_element(By.CSS_SELECTOR, f"{sidebar} input[type=file]").send_keys(str(sample.resolve()))
    wait_for(browser, lambda d: sample.name in main_text(d) and "Labels where models split" in main_text(d), 300)
    open_page(browser, "roc")
    wait_for(browser, lambda d: "Operating points" in main_text(d), 300)
    open_page(browser, "")
    wait_for(browser, lambda d: "Labels where models split" in main_text(d), 300)
    uploader = browser.find_element(By.CSS_SELECTOR, f"{sidebar} [data-testid=stFileUploader]").text
    assert sample.name in uploader and sample.name in main_text(browser)
    assert f"Reading {sample.name}" in browser.find_element(By.CSS_SELECTOR, sidebar).text.replace("\u2060", "")
    browser.save_screenshot(str(tmp_path / "back_on_compare.png"))

    browser.find_element(By.XPATH, "//*[@data-testid='stSidebar']//label[.//p[starts-with(text(), "
                                   "'PneumoniaMNIST')]]").click()
    wait_for(browser, lambda d: "task=pneumoniamnist-local" in d.current_url, 300)
    open_page(browser, "roc")
    wait_for(browser, lambda d: "Operating points" in main_text(d), 300)
    browser.refresh()
    wait_for(browser, lambda d: "Operating points" in main_text(d), 300)
    assert urllib.parse.urlparse(browser.current_url).path.strip("/") == "roc"
    assert "PneumoniaMNIST" in main_text(browser)  # the header names what the models learnt from
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
    browser.save_screenshot(str(tmp_path / "roc_after_refresh.png"))
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).parent.mkdir(parents=True, exist_ok=True)
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(os.environ[SCREENSHOT_ENV]).parent / shot.name)
