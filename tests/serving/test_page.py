"""The browser page, in a real headless browser: Debian's chromium through chromium-driver, driven by
Selenium (.ci/run installs both).  Upload an image of the shipped dataset, wait for the overlays, and
check the top class shown and the overlay shown against the API's."""

from __future__ import annotations

import base64
import shutil
import tempfile

import cv2
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from onnx_explain import overlay
from onnx_explain.models.shapes import TEST_SEED, make_shapes
from onnx_explain.render.drawing import save_png, to_rgb8
from onnx_explain.serving.process import running_server
from onnx_explain.serving.service import Service

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("Debian's chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs them)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    yield driver
    driver.quit()


def decoded(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    return bgr[..., ::-1]


def test_page_explains_a_dropped_image(exported, browser, tmp_path):
    e = exported("shapenet")
    image = save_png(tmp_path / "shape.png", to_rgb8(make_shapes(1, TEST_SEED).images[0]))
    with running_server(e.path, "--name", "shapes") as url:
        browser.get(url + "/")
        assert "onnx-explain" in browser.title
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait = WebDriverWait(browser, 120)
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#overlays img")))
        browser.save_screenshot(str(tmp_path / "page.png"))
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("explained"), status

        service = Service(e.path, providers="cpu")
        shown, x = service.image({"image": {"b64": base64.b64encode(image.read_bytes()).decode()}})
        result = e.explainer.explain(x[None])
        top = browser.find_elements(By.CSS_SELECTOR, "#classes button")[0]
        assert int(top.get_attribute("data-class")) == int(result.logits[0].argmax())
        assert top.get_attribute("data-label") == e.info.class_names[int(result.logits[0].argmax())]
        shown_overlays = {img.get_attribute("data-method"): img.get_attribute("src")
                          for img in browser.find_elements(By.CSS_SELECTOR, "#overlays img")}
        assert "gradcam@features" in shown_overlays and "saliency" in shown_overlays
        for key, src in shown_overlays.items():
            method = key.split("@")[0]
            np.testing.assert_array_equal(decoded(src), overlay(shown, result[method].heatmap[0]), err_msg=key)

        other = browser.find_elements(By.CSS_SELECTOR, "#classes button")[1]
        other.click()
        wait.until(lambda d: d.find_element(By.ID, "overlays").get_attribute("data-target")
                   == other.get_attribute("data-class"))
        assert (tmp_path / "page.png").stat().st_size > 0
