"""The page at `/`, in a real headless browser (Debian's chromium and chromedriver, driven by selenium): a sentence
typed, its target selected with the keyboard, the eight bars read back against the API's answer, rows of an
uploaded jsonl switched; a screenshot is saved with the test's files (and to $NIKL_SCREENSHOT_DIR when set)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, nikl_row, write_jsonl

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def server(tiny_run):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "nikl_emotion", "serve", str(tiny_run), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    assert process.poll() is None, process.stderr.read().decode()
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,820", "--lang=ko-KR"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _api(url: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/predict", json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=30))["rows"][0]


def _bars(driver) -> dict:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
    return {
        r.get_attribute("data-label"): (
            float(r.get_attribute("data-probability")),
            "decided" in r.get_attribute("class"),
        )
        for r in rows
    }


def _wait(driver, condition: str, timeout: float = 30) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {condition}"))


def test_type_select_a_target_and_read_the_bars(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    text, target = "오늘 공연 너무 좋았다", "공연"
    browser.get(server)
    _wait(browser, "document.body.dataset.ready === 'true'")
    box = browser.find_element(By.ID, "text")
    box.send_keys(text)
    box.send_keys(Keys.HOME, *[Keys.ARROW_RIGHT] * 3, Keys.SHIFT, *[Keys.ARROW_RIGHT] * 2, Keys.SHIFT)
    assert browser.find_element(By.ID, "target-info").text == f"target [3, 5): {target}"
    assert browser.find_element(By.CSS_SELECTOR, "#preview mark").text == target
    browser.find_element(By.ID, "predict").click()
    _wait(browser, "document.body.dataset.predicted === '1'")
    expected = _api(server, {"text": text, "target": target})
    bars = _bars(browser)
    assert list(bars) == list(expected["probabilities"])
    for label, (probability, decided) in bars.items():
        assert probability == pytest.approx(expected["probabilities"][label], abs=1e-6)
        assert decided == (label in expected["labels"])
    shot = tmp_path / "serve-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("NIKL_SCREENSHOT_DIR"):
        shutil.copy(shot, os.path.join(os.environ["NIKL_SCREENSHOT_DIR"], shot.name))
    print(f"screenshot: {shot}")


def test_rows_of_an_uploaded_jsonl(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # an emoji before the target: the page selects in UTF-16 units, the task counts characters
    rows = [
        nikl_row("a", "정말 최악의 서비스", ("서비스", 7, 10)),
        nikl_row("b", "😀 내일 여행이 기대된다", ("여행", 5, 7)),
    ]
    upload = write_jsonl(tmp_path / "rows.jsonl", rows)
    browser.get(server)
    _wait(browser, "document.body.dataset.ready === 'true'")
    browser.find_element(By.ID, "file").send_keys(str(upload))
    _wait(browser, "document.body.dataset.predicted === '1'")
    assert browser.find_element(By.ID, "target-info").text == "target [7, 10): 서비스"
    Select(browser.find_element(By.ID, "row-select")).select_by_index(1)
    _wait(browser, "document.body.dataset.predicted === '2'")
    assert browser.find_element(By.ID, "text").get_attribute("value") == rows[1]["input"]["form"]
    assert browser.find_element(By.ID, "target-info").text == "target [5, 7): 여행"
    expected = _api(server, rows[1])
    assert {k: v[0] for k, v in _bars(browser).items()} == pytest.approx(expected["probabilities"], abs=1e-6)
