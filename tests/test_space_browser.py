"""The Space in a real browser: Debian's chromium, headless, driven by Selenium through chromedriver.

A visitor on a desktop (1280 px) and on a phone (390 px, emulated) loads the page, clicks an example, reads the
top-k label, sees Grad-CAM images, changes the layer and the opacity, opens the misclassified gallery; every
caption is readable in full and nothing is wider than the screen. A bad upload is reported once and cleared;
hidden Grad-CAM is not computed; typing a number sends one request. The Space serves its release by Hub id, from a local Hub cache (offline).
Screenshots are kept in test-artifacts/. Not skipped: without chromium it fails and says what to install (CI
installs it).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, assert_close_pixels, make_release, running_space
from PIL import Image

from resnet_cifar import release
from space import app
from uploads import FILE_META, UploadFolder

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# These flags work in this sandbox (root, no GPU, closed network): see the machine notes.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,2200",
)
TIMEOUT = 120  # generous: CI machines and this one may be busy with other jobs


ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DESKTOP, PHONE = 1280, 390


def hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face cache holding `folder` as the latest snapshot of model repo `repo_id` (read offline)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return root


@pytest.fixture(scope="module")
def browser_setup(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the browser test needs Debian's chromium and chromedriver "
            "(apt-get install -y chromium chromium-driver), or set CHROMIUM / CHROMEDRIVER to their paths"
        )
    folder = make_release(tmp_path_factory.mktemp("release"), card=CARD)
    cache = hub_cache(tmp_path_factory.mktemp("hub"), "someone/resnet9", folder)
    uploads = UploadFolder(tmp_path_factory.mktemp("expected-tmp"))
    space = app.Space(release.read(folder), uploads)  # the same handlers, in this process: what the page must show
    log = tmp_path_factory.mktemp("server") / "space.log"
    with running_space("someone/resnet9", log, env={"HF_HUB_CACHE": str(cache)}) as url:
        yield url, space, log
    uploads.close()


CARD = ("---\nlicense: mit\nmodel-index:\n- name: r\n  results:\n  - task: {type: image-classification}\n"
        "    dataset: {type: uoft-cs/cifar10, name: CIFAR-10}\n    metrics:\n    - {type: accuracy, value: 0.8885}\n"
        "---\n# card\n")


def uploaded(space, path: Path) -> dict:
    """`path` as an upload of the in-process Space."""
    target = space.uploads.path / uuid.uuid4().hex / path.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(path, target)
    return {"path": str(target), "meta": FILE_META}


def open_browser(profile: Path, width: int):
    """Headless chromium showing pages `width` CSS pixels wide (a phone is emulated: chromium's window is at
    least 500 px)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900 if width < 600 else 1400, "deviceScaleFactor": 1, "mobile": width < 600})
    return chrome


@pytest.fixture
def driver(tmp_path, request):
    chrome = open_browser(tmp_path / "profile", getattr(request, "param", DESKTOP))
    try:
        yield chrome
    finally:
        screenshot(chrome, request.node.name)
        chrome.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page as a PNG in test-artifacts/ (kept after the run, for people and CI to look at)."""
    ARTIFACTS.mkdir(exist_ok=True)
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": min(height, 8000), "deviceScaleFactor": 1, "mobile": width < 600})
    path = ARTIFACTS / f"{name.replace('[', '-').replace(']', '')}.png"
    driver.save_screenshot(str(path))
    return path


# ---------------------------------------------------------------- what the page shows


def wait_for(driver, check, what: str, timeout: float = TIMEOUT):
    """Poll `check(driver)` until it returns something truthy; fail naming `what` and the page's errors."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = check(driver)
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - the DOM changes under us while gradio re-renders
            last = err
        time.sleep(0.2)
    toasts = driver.execute_script(
        "return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)")
    pytest.fail(f"timed out waiting for {what}; last seen: {last!r}; error toasts: {toasts}")


def gallery(driver, elem_id: str) -> list[tuple[str, str]]:
    """(image URL, caption) of each image in a gallery, in order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(i => [i.src, i.alt])",
        f"#{elem_id} .grid-container img",
    )


def label_rows(driver) -> list[str]:
    """The class names the Label shows, top first."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#prediction .confidence-set dt')).map(d => d.innerText)")


def fetch_rgb(url: str) -> np.ndarray:
    """The pixels of an image the page shows."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def set_slider(driver, elem_id: str, value: float) -> None:
    """Type a value into a slider's number box, as a visitor can."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)
    box.send_keys(Keys.TAB)


def choose(driver, elem_id: str, option_text: str) -> None:
    """Open a dropdown and click the option showing `option_text`."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[role=combobox]").click()
    options = wait_for(driver, lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "li[role=option]")
                                          if o.get_attribute("aria-label") == option_text], f"option {option_text!r}")
    options[0].click()


def overflowing(driver) -> list[str]:
    """Elements that stick out of the viewport sideways (what makes a phone scroll horizontally)."""
    return driver.execute_script("""
        const width = document.documentElement.clientWidth;
        return Array.from(document.querySelectorAll('body *')).filter(e => {
            const r = e.getBoundingClientRect();
            return r.width > 0 && r.height > 0 && (r.right > width + 1 || r.left < -1);
        }).map(e => e.tagName + '#' + e.id + '.' + String(e.className).slice(0, 40));""")


def cut_texts(driver) -> list[str]:
    """Captions and control labels whose text does not fit in their box (clipped or ellipsed)."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('.caption-label, label, .label-text, [data-testid=block-info]'))
            .filter(e => e.offsetParent !== null && (e.scrollWidth > e.clientWidth + 1))
            .map(e => e.innerText);""")


def columns(driver, elem_id: str) -> int:
    """How many columns a gallery shows (distinct left edges of its images)."""
    return driver.execute_script(
        "return new Set(Array.from(document.querySelectorAll(arguments[0])).map(i => Math.round("
        "i.getBoundingClientRect().left))).size", f"#{elem_id} .grid-container img")


def changed(driver, elem_id: str, before: list[tuple[str, str]], count: int):
    """The gallery once it shows `count` images that differ from `before`."""
    now = gallery(driver, elem_id)
    return now if len(now) == count and now != before else None


# ---------------------------------------------------------------- the visit


@pytest.mark.parametrize("driver", [DESKTOP, PHONE], indirect=True, ids=["desktop", "phone"])
def test_a_visitor_explores_the_space(browser_setup, driver):
    from selenium.webdriver.common.by import By

    url, space, _ = browser_setup
    width = driver.execute_script("return window.innerWidth")
    examples = [p.name for p in EXAMPLES]
    dog = EXAMPLES[examples.index("0012_dog.png")]
    dog_path = uploaded(space, dog)
    driver.get(url)

    # On load: the model by its Hub id, linked to its card, with the card's accuracy; no server path anywhere.
    link = wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "someone/resnet9"), "the model's Hub link")[0]
    assert link.get_attribute("href") == "https://huggingface.co/someone/resnet9"
    assert "88.85 % test accuracy" in driver.find_element(By.TAG_NAME, "body").text
    assert "/tmp" not in driver.find_element(By.TAG_NAME, "body").text
    # The Grad-CAM gallery explains the first five examples.
    first = wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5 and gallery(d, "gradcam-gallery"),
                     "the Grad-CAM gallery of the examples")
    assert [caption for _, caption in first] == [c for _, c in space.gradcam(None, 5, "layer3", 0.5)]
    assert columns(driver, "gradcam-gallery") == (5 if width == DESKTOP else 2)

    # Click the dog example: the label shows the top 3 classes, as the model ranks them.
    thumbnails = driver.find_elements(By.CSS_SELECTOR, "#examples button.gallery-item")
    assert len(thumbnails) == 10
    next(t for t in thumbnails if t.find_element(By.TAG_NAME, "img").get_attribute("src").endswith(dog.name)).click()
    expected = list(space.classify(dog_path, 3))
    wait_for(driver, lambda d: label_rows(d) == expected, f"the label to show {expected}")
    top = driver.find_element(By.CSS_SELECTOR, "#prediction [data-testid=label-output-value]").text
    assert top == expected[0]

    # The Grad-CAM gallery now starts with the clicked image, explained at the default layer, and does not show
    # the dog a second time among the examples.
    cam = wait_for(driver, lambda d: (g := gallery(d, "gradcam-gallery")) and g[0][1].startswith("your image") and g,
                   "the Grad-CAM gallery with the clicked example first")
    assert [c for _, c in cam] == [c for _, c in space.gradcam(dog_path, 5, "layer3", 0.5)]
    assert not any(c.startswith("example dog") for _, c in cam)
    assert_close_pixels(fetch_rgb(cam[0][0]), space.gradcam(dog_path, 1, "layer3", 0.5)[0][0])

    # "Why not ...?": the predicted class beside the runner-up by default, then beside a class the visitor picks.
    compare = wait_for(driver, lambda d: len(gallery(d, "compare-gallery")) == 2 and gallery(d, "compare-gallery"),
                       "the why-not gallery")
    assert compare[0][1].startswith(f"predicted: {expected[0]} (")
    assert compare[1][1].startswith(f"why not {expected[1]}? {expected[1]} (")
    choose(driver, "why-not", "truck")
    compare = wait_for(driver, lambda d: changed(d, "compare-gallery", compare, 2), "the why-not gallery for truck")
    assert compare[1][1].startswith("why not truck? truck (")

    # Another layer: new overlays, the ones the library computes for that layer.
    choose(driver, "layer", "layer1: textures and small parts (16x16)")
    cam_l1 = wait_for(driver, lambda d: changed(d, "gradcam-gallery", cam, 5), "overlays at layer1")
    assert_close_pixels(fetch_rgb(cam_l1[0][0]), space.gradcam(dog_path, 1, "layer1", 0.5)[0][0])

    # More classes in the label.
    set_slider(driver, "top-k", 5)
    wait_for(driver, lambda d: label_rows(d) == list(space.classify(dog_path, 5)), "five classes in the label")

    # Open the misclassified gallery: captions "predicted (p) / true" from the release's set.
    assert not driver.find_elements(By.CSS_SELECTOR, "#misclassified-gallery .grid-container img")
    driver.find_element(By.CSS_SELECTOR, "#show-misclassified input[type=checkbox]").click()
    mis = wait_for(driver, lambda d: (g := gallery(d, "misclassified-gallery")) and len(g) == 10 and g,
                   "ten misclassified images")
    assert [c for _, c in mis] == [c for _, c in space.misclassified(10, False, "layer1", 0.5)]
    driver.find_element(By.CSS_SELECTOR, "#misclassified-gradcam input[type=checkbox]").click()
    mis_cam = wait_for(driver, lambda d: changed(d, "misclassified-gallery", mis, 10), "Grad-CAM on the mistakes")
    assert [c for _, c in mis_cam] == [c for _, c in mis]

    # Opacity 0: the overlays fade to the plain (upscaled) images.
    set_slider(driver, "opacity", 0)
    cam_0 = wait_for(driver, lambda d: changed(d, "gradcam-gallery", cam_l1, 5), "overlays at opacity 0")
    plain_dog = space.gradcam(dog_path, 1, "layer1", 0.0)[0][0]
    assert_close_pixels(fetch_rgb(cam_0[0][0]), plain_dog)
    wait_for(driver, lambda d: gallery(d, "misclassified-gallery") == mis, "plain mistakes again at opacity 0")

    # Everything readable at this width: nothing sticks out sideways, no caption or label is cut.
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    assert overflowing(driver) == []
    assert cut_texts(driver) == []
    assert columns(driver, "misclassified-gallery") == (5 if width == DESKTOP else 2)


def test_a_bad_upload_is_reported_once_and_cleared(browser_setup, driver, tmp_path):
    from selenium.webdriver.common.by import By

    url, _, _ = browser_setup
    driver.get(url)
    wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5, "the page to load")
    broken = tmp_path / "broken.png"
    broken.write_bytes(EXAMPLES[0].read_bytes()[:300])  # a truncated PNG: gradio takes it, the model cannot
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(broken))
    toasts = wait_for(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)"), "a warning toast")
    time.sleep(2)
    toasts = driver.execute_script("return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)")
    assert len(toasts) == 1 and "could not be decoded" in toasts[0], toasts
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, "#upload img"), "the broken image cleared")
    assert not driver.find_elements(By.CSS_SELECTOR, "#prediction .error, #prediction [data-testid=error]")
    assert label_rows(driver) == []


def test_hidden_gradcam_is_not_computed_and_comes_back_for_the_settings_of_now(browser_setup, driver):
    """Show Grad-CAM off: the gallery goes, and changing the layer asks the server for nothing; on again: one
    request, for the layer chosen while it was hidden."""
    from selenium.webdriver.common.by import By

    url, space, log = browser_setup
    driver.get(url)
    wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5, "the page to load")
    time.sleep(1)
    before = log.read_text().count("server time /gradcam ")
    driver.find_element(By.CSS_SELECTOR, "#show-gradcam input[type=checkbox]").click()
    wait_for(driver, lambda d: not gallery(d, "gradcam-gallery"), "the Grad-CAM gallery hidden")
    choose(driver, "layer", "layer1: textures and small parts (16x16)")
    time.sleep(3)  # a request for the hidden gallery would have been logged by now
    assert log.read_text().count("server time /gradcam ") == before, "nothing computed for a hidden gallery"
    driver.find_element(By.CSS_SELECTOR, "#show-gradcam input[type=checkbox]").click()
    cam = wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5 and gallery(d, "gradcam-gallery"),
                   "the Grad-CAM gallery back")
    assert_close_pixels(fetch_rgb(cam[0][0]), space.gradcam(None, 1, "layer1", 0.5)[0][0])
    time.sleep(1)
    assert log.read_text().count("server time /gradcam ") == before + 1


def test_typing_a_number_sends_one_request(browser_setup, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, _, log = browser_setup
    driver.get(url)
    wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5, "the page to load")
    time.sleep(1)
    before = log.read_text().count("server time /gradcam images=10")
    box = driver.find_element(By.CSS_SELECTOR, "#gradcam-count input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("10", Keys.ENTER)
    wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 10, "ten Grad-CAM images")
    time.sleep(3)  # a second, identical request would have arrived by now
    assert log.read_text().count("server time /gradcam images=10") - before == 1


def test_bare_gradio_fires_a_sliders_change_twice_for_one_typed_number(driver):
    """The gap LastRequests (space/app.py) covers, on a bare gradio app with no code of ours: typing a number
    into a slider's box and pressing Enter fires its change event more than once, mostly twice with the same value
    ([10, 10]; once in a while [1, 10], the first digit on its own), its input event likewise, and
    trigger_mode="always_last" merges neither (the first has finished). The release event, the third candidate,
    fires only on leaving the box: Enter alone would apply nothing. The day this fails, gradio sends one event
    and LastRequests can go."""
    import gradio as gr
    from conftest import free_port
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    calls: dict[str, list[float]] = {"change": [], "input": [], "release": []}
    with gr.Blocks() as demo:
        count = gr.Slider(1, 10, 5, step=1, elem_id="count")
        shown = gr.Textbox(elem_id="shown")
        count.change(lambda v: calls["change"].append(v) or str(v), count, shown, trigger_mode="always_last")
        count.input(lambda v: calls["input"].append(v), count, None, trigger_mode="always_last")
        count.release(lambda v: calls["release"].append(v), count, None)
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        box = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#count input[type=number]"), "the slider")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("10", Keys.ENTER)
        wait_for(driver, lambda d: calls["change"] and calls["change"][-1] == 10, "the change event")
        time.sleep(2)
        on_enter = {name: list(values) for name, values in calls.items()}
        driver.find_element(By.CSS_SELECTOR, "#shown textarea").click()  # leave the box
        time.sleep(3)
    finally:
        demo.close()
    for event in ("change", "input"):
        assert len(on_enter[event]) >= 2 and on_enter[event][-1] == 10, on_enter
    assert on_enter["release"] == [], on_enter
    assert calls == {**on_enter, "release": [10]}, calls


def test_a_number_typed_past_a_sliders_end_is_one_warning_and_the_page_stays(browser_setup, driver):
    """Issue 17: top-k 11 typed into the slider's box used to wipe the image and its prediction."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, _, _ = browser_setup
    driver.get(url)
    wait_for(driver, lambda d: len(gallery(d, "gradcam-gallery")) == 5, "the page to load")
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(EXAMPLES[0]))
    rows = wait_for(driver, lambda d: len(label_rows(d)) == 3 and label_rows(d), "the prediction")
    box = driver.find_element(By.CSS_SELECTOR, "#top-k input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("11", Keys.ENTER)
    wait_for(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)"), "a warning toast")
    time.sleep(2)
    toasts = driver.execute_script("return Array.from(document.querySelectorAll('.toast-body')).map(t => t.innerText)")
    assert len(toasts) == 1 and "top_k must be a whole number from 1 to 10, got 11" in toasts[0], toasts
    assert "'" not in toasts[0], "no stray quotes"
    assert driver.find_elements(By.CSS_SELECTOR, "#upload img"), "the visitor's image stays"
    assert label_rows(driver) == rows, "and its prediction"
