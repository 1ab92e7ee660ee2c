"""How fast the real app answers, driven in headless Chromium (run by hand; takes a few minutes): a streamlit server of
app.py on the shipped checkpoints, each interaction repeated and timed from the browser's input to the page showing
the new result with the run finished. Prints the median of the repeats beside the issue's target (issue 12).

    python benchmarks/app_browser.py
    python benchmarks/app_browser.py --repeats 3 --screenshots /tmp/shots

Timings: cold start (server process started -> Compare page rendered, no model needed yet); upload of a 1024 px NIH
PNG (a film not read before) -> its results table; ROC threshold slider (keyboard, PageUp/PageDown: 0.1) -> the metrics
of that model changed; ROC label change (a label not shown before) -> its curves and metrics; Explain opacity: the
viewer's slider (it acts in the browser) -> the CAM layer painted at the new opacity. Warm: the server has loaded the
models and served the page once.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import test_e2e_browser as e2e  # noqa: E402  the tests' server and browser helpers
from cxrcore.data import data_dir  # noqa: E402

TARGETS = {  # seconds, from issue 12
    "cold start to first rendered page": 10.0,
    "upload 1024 px PNG to table": 1.5,
    "ROC slider to updated metrics": 0.5,
    "ROC label change": 1.0,
    "Explain opacity change": 0.3,
}
ROC_LABELS = ["Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax", "Cardiomegaly", "Edema", "Emphysema"]


def by(css: str):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def rendered_compare(driver) -> bool:
    return "Upload an image to start" in e2e.main_text(driver) and bool(driver.find_elements(*by("input[type=file]")))


def cold_start(repeats: int, driver) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with e2e.serve() as (url, _):
            driver.get(url)
            e2e.wait_for(driver, rendered_compare)
            times.append(time.perf_counter() - t0)
    return times


def timed(action: Callable[[], None], done: Callable[[object], object], driver, timeout: float = 180) -> float:
    """Seconds from the action to ``done`` with the run finished; NaN when it never comes within ``timeout``."""
    from selenium.common.exceptions import TimeoutException

    t0 = time.perf_counter()
    action()
    try:
        e2e.wait_for(driver, done, timeout)
    except TimeoutException:
        return float("nan")
    return time.perf_counter() - t0


def into_view(driver, element):
    """Streamlit draws elements below the fold lazily: scroll there first."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    return element


def upload(driver, film: Path) -> float:
    def shown(d):
        text = e2e.main_text(d)
        return film.name in text and "Labels where models split" in text

    return timed(lambda: driver.find_element(*by("input[type=file]")).send_keys(str(film.resolve())), shown, driver)


def go_to(driver, path: str, ready: Callable[[object], object]) -> None:
    e2e.open_page(driver, path)
    e2e.wait_for(driver, ready)


def metrics_text(driver) -> str:
    """The ROC page's metrics of the chosen model, read in the page (one call, not one per element)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('[data-testid=stMetric]'))"
                                 ".filter(e => e.offsetParent !== null).map(e => e.innerText).join(' ');")


def press(driver, element, key: str, times: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].focus();", element)
    chain = ActionChains(driver)
    for _ in range(times):
        chain = chain.send_keys(key)
    chain.perform()


def roc_slider(driver, repeats: int) -> list[float]:
    from selenium.webdriver.common.keys import Keys

    times = []
    for k in range(repeats):
        thumb = e2e.wait_for(driver, lambda d: next(iter(d.find_elements(*by("[data-testid=stSlider] input"))), None))
        into_view(driver, thumb)
        before = metrics_text(driver)
        key = Keys.PAGE_UP if k % 2 == 0 else Keys.PAGE_DOWN  # one step of a tenth: one rerun
        times.append(timed(lambda: press(driver, thumb, key, 1), lambda d: metrics_text(d) != before, driver, 60))
    return times


def choose(driver, selectbox_label: str, option: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.XPATH, f"//*[@data-testid='stSelectbox'][.//label//*[text()='{selectbox_label}']]")
    into_view(driver, box)  # a box half scrolled off the top closes its menu as soon as one types (a user scrolls up)
    field = box.find_element(By.CSS_SELECTOR, "input")
    field.click()
    field.send_keys(option)
    field.send_keys(Keys.ENTER)


def roc_label(driver, repeats: int) -> list[float]:
    times = []
    for label in ROC_LABELS[:repeats]:
        times.append(timed(lambda: choose(driver, "Label", label),
                           lambda d: f" for {label}\n" in e2e.main_text(d), driver))  # the chosen model's slider
    return times


OPACITY_JS = """
const [value, done] = arguments;
const slider = document.getElementById('opacity'), layer = document.querySelector('img.cam');
const t0 = performance.now();
slider.value = value;
slider.dispatchEvent(new Event('input'));
requestAnimationFrame(() => requestAnimationFrame(() => done(
  getComputedStyle(layer).opacity === String(value) ? (performance.now() - t0) / 1000 : NaN)));
"""


def explain_opacity(driver, repeats: int) -> list[float]:
    """The viewer's opacity slider (in the browser, no rerun): from its input event to the second animation frame
    after it, with the CAM layer's opacity at the new value (NaN if it is not)."""
    from selenium.webdriver.common.by import By

    frame = e2e.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=stMain] iframe"))[0]
    driver.switch_to.frame(frame)
    try:
        e2e.wait_for(driver, lambda d: d.execute_script("return !!document.querySelector('img.cam')"))
        return [driver.execute_async_script(OPACITY_JS, 0.8 if k % 2 == 0 else 0.5) for k in range(repeats)]
    finally:
        driver.switch_to.default_content()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-cold", action="store_true", help="leave out the cold starts (the slowest part)")
    p.add_argument("--screenshots", type=Path, default=None, help="save a screenshot of each step here")
    a = p.parse_args()
    films = sorted((data_dir() / "samples").glob("*.png"))[:a.repeats + 1]  # NIH films: 1024 x 1024
    results: dict[str, list[float]] = {}

    def record(name: str, times: list[float]) -> None:
        results[name] = times
        print(f"{name}: " + " ".join(f"{t:.2f}" for t in times), flush=True)

    def shot(driver, name: str) -> None:
        if a.screenshots:
            a.screenshots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(a.screenshots / f"{name}.png"))

    from selenium.common.exceptions import NoSuchElementException, TimeoutException
    from selenium.webdriver.common.by import By

    with e2e.chrome(1600, 1000) as driver:
        record("cold start to first rendered page", [] if a.skip_cold else cold_start(a.repeats, driver))
        with e2e.serve() as (url, _):
            driver.get(url)
            e2e.wait_for(driver, rendered_compare)
            upload(driver, films[0])  # warm-up: the models load on the first upload
            record("upload 1024 px PNG to table", [upload(driver, f) for f in films[1:]])
            shot(driver, "compare")
            go_to(driver, "roc", lambda d: "Operating points" in e2e.main_text(d))
            record("ROC slider to updated metrics", roc_slider(driver, a.repeats))
            record("ROC label change", roc_label(driver, a.repeats))
            shot(driver, "roc")
            try:
                go_to(driver, "explain", lambda d: "Colour bar" in e2e.main_text(d) and d.find_elements(
                    By.CSS_SELECTOR, "[data-testid=stMain] iframe"))
                record("Explain opacity change", explain_opacity(driver, a.repeats))
            except (TimeoutException, NoSuchElementException) as exc:
                print(f"Explain opacity change: not measured ({type(exc).__name__})")
                results["Explain opacity change"] = []
            shot(driver, "explain")
    print(f"\n{'timing (median of %d)' % a.repeats:<38} {'median':>8} {'target':>8}  ok   all (s)")
    for name, target in TARGETS.items():
        ts = results[name]
        med = statistics.median(ts) if ts else float("nan")
        print(f"{name:<38} {med:8.2f} {target:8.2f}  {'yes' if med <= target else 'NO '}  "
              + " ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
