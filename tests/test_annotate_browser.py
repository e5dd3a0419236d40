"""``medadapt annotate`` in a real browser: headless Chromium drives the page served by the real server.

The server runs as ``python -m medadapt annotate DATA --port P --no-learn`` (the
command users type; online learning, which would open each image with a learned
proposal, is tested through the API in test_annotate_api.py) in a subprocess with the real LiteMedSAM; selenium drives Debian's
Chromium through the system chromedriver (nothing is downloaded). With
``MEDADAPT_SCREENSHOTS=docs/images`` the test also segments the liver on a
bundled CT slice and saves the screenshots the documentation shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import disc_image
from PIL import Image
from scipy import ndimage

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}; apt-get install chromium "
                "chromium-driver)", allow_module_level=True)
pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[test]')")
pytest.importorskip("fastapi", reason="needs the app extra (pip install -e '.[app]')")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from medadapt.demo import demo_root  # noqa: E402
from medadapt.io.imaging import load_mask  # noqa: E402

SHOTS = os.environ.get("MEDADAPT_SCREENSHOTS")
DISCS = {"a.png": dict(center=(70, 90), radius=32, seed=1), "b.png": dict(center=(100, 150), radius=36, seed=2)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


class Server:
    """``medadapt annotate DATA`` in a subprocess on a free loopback port."""

    def __init__(self, data: Path, log: Path, args: tuple[str, ...] = ("--no-learn",)) -> None:
        self.data, self.log, self.args, self.proc, self.url = data, log, tuple(args), None, ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "medadapt", "annotate", str(self.data), "--port",
                                      str(port), "--device", "cpu", *self.args],
                                     stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/api/state", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the server did not answer within 180 s:\n{self.log.read_text()[-3000:]}")

    def ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotate") / "images"
    folder.mkdir()
    truth = {}
    for name, spec in DISCS.items():
        image, mask = disc_image(**spec)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / name)
        truth[name] = mask
    shutil.copy(demo_root() / "ct" / "images" / "amos_0006_90.png", folder / "c_ct.png")  # for the screenshots
    return folder, truth


@pytest.fixture(scope="module")
def server(data):
    srv = Server(data[0], data[0].parent / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def wait(driver, condition, what: str, timeout: float = 90):
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"waited {timeout} s for {what}")


def attr(driver, element_id: str, name: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute(name) or ""


def load(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")


def open_item(driver, name: str) -> None:
    driver.find_element(By.XPATH, f"//ul[@id='items']/li[text()='{name}']").click()
    wait(driver, lambda d: "current" in d.find_element(By.XPATH, f"//li[text()='{name}']").get_attribute("class")
         and d.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false", f"{name} to open")


def offset(driver, x: float, y: float) -> tuple[int, int]:
    """Image pixel (x, y) -> an offset from the centre of the prompt canvas, in CSS pixels."""
    w, h, width = driver.execute_script(
        "const r = document.getElementById('marks').getBoundingClientRect();"
        "return [r.width, r.height, document.getElementById('image').width];")
    scale = w / width
    return round((x + 0.5) * scale - w / 2), round((y + 0.5) * scale - h / 2)


def prompts(driver) -> int:
    return int(attr(driver, "marks", "data-prompts") or 0)


def drag_box(driver, box) -> None:
    driver.find_element(By.CSS_SELECTOR, "input[name='tool'][value='box']").click()
    before, marks = prompts(driver), driver.find_element(By.ID, "marks")
    (x0, y0), (x1, y1) = offset(driver, box[0], box[1]), offset(driver, box[2], box[3])
    ActionChains(driver).move_to_element_with_offset(marks, x0, y0).click_and_hold() \
        .move_to_element_with_offset(marks, (x0 + x1) // 2, (y0 + y1) // 2) \
        .move_to_element_with_offset(marks, x1, y1).release().perform()
    wait(driver, lambda d: prompts(d) == before + 1, "the box's mask")


def click(driver, x: float, y: float) -> float:
    """A positive click at image pixel (x, y); returns the page's click-to-redrawn-mask latency in ms."""
    driver.find_element(By.CSS_SELECTOR, "input[name='tool'][value='point']").click()
    before, marks = prompts(driver), driver.find_element(By.ID, "marks")
    ActionChains(driver).move_to_element_with_offset(marks, *offset(driver, x, y)).click().perform()
    wait(driver, lambda d: prompts(d) == before + 1, "the click's mask")
    return float(attr(driver, "marks", "data-latency-ms"))


def accept(driver, name: str) -> None:
    labelled = int(attr(driver, "mask", "data-label-pixels") or 0)
    driver.find_element(By.ID, "accept").click()
    wait(driver, lambda d: int(attr(d, "mask", "data-label-pixels") or 0) > labelled and prompts(d) == 0
         and d.find_element(By.XPATH, f"//li[text()='{name}']").get_attribute("data-accepted") == "true",
         f"{name}'s mask to be saved and marked accepted")


def add_class(driver, name: str) -> None:
    driver.find_element(By.ID, "new-class").send_keys(name)
    driver.find_element(By.ID, "add-class").click()
    wait(driver, lambda d: d.find_element(By.ID, "class-select").get_attribute("value") == name
         and d.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "false", f"class {name}")


def bbox(mask: np.ndarray, pad: int = 5) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()) - pad, int(ys.min()) - pad, int(xs.max()) + pad, int(ys.max()) + pad]


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"annotate-{name}.png"))


def box_on(server, driver, truth, name: str) -> None:
    """A fresh page with ``name`` open and a box drawn around its disc."""
    server.ensure()
    load(driver, server.url)
    open_item(driver, name)
    drag_box(driver, bbox(truth[name]))


def test_box_then_clicks_redraw_the_mask_and_accept_saves_it(server, browser, data):
    folder, truth = data
    box_on(server, browser, truth, "a.png")
    wait(browser, lambda d: d.find_element(By.ID, "model").text.startswith("Model: litemedsam"), "the model line")
    mask = truth["a.png"]
    assert int(attr(browser, "mask", "data-mask-pixels")) > 0.8 * mask.sum()
    cy, cx = DISCS["a.png"]["center"]
    latencies = [click(browser, cx + dx, cy + dy) for dx, dy in ((0, 0), (8, 4), (-8, -4), (4, -8), (-4, 8))]
    print(f"click -> redrawn mask latency in the browser (ms): {[round(v) for v in latencies]}, "
          f"median {statistics.median(latencies):.0f}")
    assert max(latencies) < 1500
    drawn = int(attr(browser, "mask", "data-mask-pixels"))
    assert 0.8 * mask.sum() < drawn < 1.25 * mask.sum()
    accept(browser, "a.png")
    assert dice(load_mask(folder / "labels" / "a.png") == 1, mask) > 0.9
    assert int(attr(browser, "mask", "data-label-pixels")) == (load_mask(folder / "labels" / "a.png") > 0).sum()
    if SHOTS:  # the documentation's screenshots: liver and spleen on a bundled CT slice
        open_item(browser, "c_ct.png")
        for organ in ("spleen", "liver"):
            add_class(browser, organ)
            truth_mask = load_mask(demo_root() / "ct" / "masks" / f"amos_0006_90_{organ}.png") > 0
            drag_box(browser, bbox(truth_mask, 6))
            if organ == "liver":
                y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(truth_mask)), truth_mask.shape)
                click(browser, x, y)
                shot(browser, "prompt")
            accept(browser, "c_ct.png")
        shot(browser, "accepted")


def test_a_killed_server_restarts_with_every_accepted_mask(server, browser, data):
    folder, truth = data
    box_on(server, browser, truth, "b.png")
    accept(browser, "b.png")
    open_item(browser, "a.png")
    drag_box(browser, [10, 10, 60, 50])  # work in progress, never accepted
    server.kill()  # SIGKILL: no shutdown handler runs

    session = json.loads((folder / "labels" / "annotate-session.json").read_text())
    accepted = set(session["accepted"])
    assert "b.png" in accepted
    server.start()
    load(browser, server.url)
    marked = {li.text for li in browser.find_elements(By.CSS_SELECTOR, "#items li[data-accepted='true']")}
    assert marked == accepted
    for name in accepted & set(truth):
        saved = load_mask(folder / "labels" / name)
        assert dice(saved == 1, truth[name]) > 0.9
        open_item(browser, name)
        assert int(attr(browser, "mask", "data-label-pixels")) == (saved > 0).sum()
        assert int(attr(browser, "mask", "data-mask-pixels")) == 0  # the unaccepted box died with the server


def test_enter_then_next_marks_the_image_saved_and_a_focused_list_keeps_its_keys(server, browser, data):
    folder, truth = data
    box_on(server, browser, truth, "b.png")
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    ActionChains(browser).send_keys(Keys.ENTER).send_keys("n").perform()  # accept, and on before the answer
    wait(browser, lambda d: d.find_element(By.XPATH, "//li[text()='b.png']").get_attribute("data-accepted") == "true",
         "b.png marked saved after the page moved on")
    current = "return document.querySelector('#items li.current').textContent"
    wait(browser, lambda d: d.execute_script(current) == "c_ct.png", "the next image")
    assert dice(load_mask(folder / "labels" / "b.png") == 1, truth["b.png"]) > 0.9
    browser.find_element(By.ID, "class-select").send_keys("p")  # typed into the class list, not a shortcut
    time.sleep(1)
    assert browser.execute_script(current) == "c_ct.png"
