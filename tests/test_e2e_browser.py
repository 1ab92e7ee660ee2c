"""The real app in headless Chromium: start the server, upload a sample X-ray, see the comparison table, screenshot."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


@pytest.fixture
def server() -> str:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
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
                "--window-size=1600,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_upload_in_a_real_browser_shows_the_comparison(server, browser, data_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    sample = sorted((data_dir / "samples").glob("*.png"))[0]
    browser.get(server)
    wait = WebDriverWait(browser, 180)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))).send_keys(str(sample.resolve()))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=stDataFrame]")))
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=stPlotlyChart]")))
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget]"))  # run finished
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
