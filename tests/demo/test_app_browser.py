"""A real headless Chromium (Debian's `chromium`, driven by Playwright) uses the launched demo as a person would:
uploads an image, types, clicks and reads the rendered result, which must be what the app's functions compute with
the same default models. The page must load nothing from outside the app (it runs offline). Screenshots are
written to <repo>/test-artifacts/."""

import io
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import PIL.Image
import pytest

from vitlm.demo.app import DETECTION_EXAMPLES, SEGMENTATION_EXAMPLES, ZERO_SHOT_EXAMPLES, classify, detect, segment
from vitlm.demo.models import ModelStore

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    require_chromium(CHROMIUM)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    outside = []
    page.on("request", lambda request: outside.append(request.url) if leaves_the_app(request.url) else None)
    page.goto(demo_url)
    page.wait_for_selector("#zero-shot-button")
    yield page
    page.close()
    assert not outside, f"the page fetched resources from outside the app: {outside}"


def require_chromium(path: Path):
    """Skip, saying why, on a developer's machine without Chromium; fail where CI demands the browser tests
    (.ci/run installs Chromium and sets VITLM_REQUIRE_BROWSER=1)."""
    if path.exists():
        return
    message = f"the browser tests need Debian's Chromium at {path}: install it with `apt-get install -y chromium`"
    if os.environ.get("VITLM_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"{message} (VITLM_REQUIRE_BROWSER is set)")
    pytest.skip(message)


def leaves_the_app(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in ("data", "blob") and parsed.hostname not in ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def store():
    return ModelStore(device="cpu")  # the same default models the server loads


def test_zero_shot_classification(page, store):
    image = ZERO_SHOT_EXAMPLES[1][0]
    labels = ["blue square", "yellow triangle", "red circle"]
    page.locator("#zero-shot-image input[type=file]").set_input_files(image)
    page.locator("#zero-shot-labels textarea").fill(", ".join(labels))
    page.locator("#zero-shot-button").click()
    top = page.locator("#zero-shot-result [data-testid='label-output-value']")
    top.wait_for()
    page.locator("#zero-shot-heatmap img").wait_for()
    page.screenshot(path=ARTIFACTS / "demo-zero-shot.png", full_page=True)
    expected, _ = classify(image, ", ".join(labels), "", store=store)
    assert top.inner_text().strip() == next(iter(expected))
    shown = page.locator("#zero-shot-result").inner_text()
    for label, probability in expected.items():
        assert label in shown and f"{round(100 * probability)}%" in shown


def test_open_vocabulary_detection(page, store):
    image, queries = DETECTION_EXAMPLES[1]
    page.get_by_role("tab", name="Open-vocabulary detection").click()
    page.locator("#detection-image input[type=file]").set_input_files(image)
    page.locator("#detection-queries textarea").fill(queries)
    threshold = page.locator("#detection-threshold input[type=number]")
    threshold.fill("0")
    threshold.press("Enter")
    page.locator("#detection-button").click()
    first_row = page.locator("#detection-table [role=row][aria-rowindex='2']")  # row 1: the header
    first_row.wait_for()
    page.locator("#detection-result img").first.wait_for()
    page.screenshot(path=ARTIFACTS / "demo-detection.png", full_page=True)
    (_, annotations), rows = detect(image, queries, 0.0, store=store)
    assert int(page.locator("#detection-table [role=grid]").get_attribute("aria-rowcount")) == 1 + len(rows)
    cells = first_row.inner_text().split()
    assert " ".join(cells[:-5]) == rows[0][0] and [float(cell) for cell in cells[-4:]] == rows[0][2:]
    assert float(cells[-5]) == pytest.approx(rows[0][1], abs=1e-3)
    legend = page.locator("#detection-result").inner_text()
    assert all(label in legend for _, label in annotations)


def test_segmentation(page, store):
    """Upload, labels, click: the overlay the page shows is, pixel for pixel, what `segment` computes, and the
    legend lists each label's colour and area."""
    image, labels = SEGMENTATION_EXAMPLES[1]
    page.get_by_role("tab", name="Segmentation").click()
    page.locator("#segmentation-image input[type=file]").set_input_files(image)
    page.locator("#segmentation-labels textarea").fill(labels)
    page.locator("#segmentation-button").click()
    first_row = page.locator("#segmentation-legend [role=row][aria-rowindex='2']")  # row 1: the header
    first_row.wait_for()
    result = page.locator("#segmentation-result img")
    result.wait_for()
    page.screenshot(path=ARTIFACTS / "demo-segmentation.png", full_page=True)
    overlay, rows = segment(image, labels, store=store)
    assert (fetch_image(page, result.get_attribute("src")) == np.asarray(overlay)).all()
    assert int(page.locator("#segmentation-legend [role=grid]").get_attribute("aria-rowcount")) == 1 + len(rows)
    cells = first_row.inner_text().split()
    assert " ".join(cells[:-2]) == rows[0][0] and cells[-2] == rows[0][1]
    assert float(cells[-1]) == pytest.approx(rows[0][2], abs=1e-2)
    # bad labels get a message, and the tab keeps working
    page.locator("#segmentation-labels textarea").fill(" , ")
    page.locator("#segmentation-button").click()
    toast = page.get_by_test_id("toast-body").first
    toast.wait_for()
    assert "Enter at least one of the labels" in toast.inner_text()


def test_inpainting_what_the_user_paints(page):
    image = ZERO_SHOT_EXAMPLES[2][0]
    page.get_by_role("tab", name="Inpainting").click()
    editor = page.locator("#inpainting-editor")
    with page.expect_file_chooser() as chooser:
        editor.get_by_role("button", name="Upload").click()
    chooser.value.set_files(image)
    canvas = editor.locator("canvas").first
    canvas.wait_for()
    page.wait_for_timeout(500)  # the canvas draws the uploaded image
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 60, y - 40)
    page.mouse.down()
    for step in range(1, 5):  # a brush stroke across the orange square (each event is slow on a software canvas)
        page.mouse.move(x - 60 + 30 * step, y - 40 + 20 * step)
    page.mouse.up()
    page.locator("#inpainting-button").click()
    results = page.locator("#inpainting-result img")
    results.first.wait_for()
    page.screenshot(path=ARTIFACTS / "demo-inpainting.png", full_page=True)
    assert results.count() == 4  # the samples slider's default, side by side
    original = np.asarray(PIL.Image.open(image).convert("RGB"))
    samples = [fetch_image(page, results.nth(index).get_attribute("src")) for index in range(4)]
    for filled in samples:
        assert filled.shape == original.shape
        changed = (filled != original).any(axis=-1)
        assert 0 < changed.mean() < 0.5  # the stroke, not the whole image
    assert not (samples[0] == samples[1]).all()  # each sample its own completion


def test_search_by_text(page, store):
    from vitlm.demo.app import EXAMPLE_COLLECTION, search

    page.get_by_role("tab", name="Search").click()
    page.locator("#search-text textarea").fill("a green circle")
    page.locator("#search-button").click()
    first_row = page.locator("#search-table [role=row][aria-rowindex='2']")  # row 1: the header
    first_row.wait_for()
    page.locator("#search-results img").first.wait_for()
    page.screenshot(path=ARTIFACTS / "demo-search.png", full_page=True)
    gallery, rows = search("a green circle", None, EXAMPLE_COLLECTION, 8, store=store)
    assert page.locator("#search-results img").count() == len(gallery) == 8
    assert int(page.locator("#search-table [role=grid]").get_attribute("aria-rowcount")) == 1 + len(rows)
    cells = first_row.inner_text().split()
    assert cells[0] == "1" and float(cells[1]) == pytest.approx(rows[0][1], abs=1e-3)
    assert " ".join(cells[2:]) == rows[0][2]


def fetch_image(page, url: str) -> np.ndarray:
    response = page.request.get(url)
    assert response.ok, url
    return np.asarray(PIL.Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_bad_input_and_a_failing_model_show_messages(page):
    page.locator("#zero-shot-image input[type=file]").set_input_files(ZERO_SHOT_EXAMPLES[0][0])
    page.locator("#zero-shot-labels textarea").fill(" , ")
    page.locator("#zero-shot-button").click()
    toast = page.get_by_test_id("toast-body").first
    toast.wait_for()
    assert "Enter at least one of the labels" in toast.inner_text()
    page.get_by_role("tab", name="Open-vocabulary detection").click()
    selector = page.locator("#zero-shot-object-detection-model input")
    selector.fill("/no/such/model")
    selector.press("Enter")
    status = page.locator("#detection-status")
    page.wait_for_function("document.querySelector('#detection-status').innerText.includes('not loaded')")
    page.screenshot(path=ARTIFACTS / "demo-errors.png", full_page=True)
    assert "no model folder at '/no/such/model'" in status.inner_text()
    # the other tabs keep serving
    page.get_by_role("tab", name="Zero-shot classification").click()
    page.locator("#zero-shot-labels textarea").fill("pink star, red circle")
    page.locator("#zero-shot-button").click()
    page.locator("#zero-shot-result [data-testid='label-output-value']").wait_for()


def test_missing_chromium_skips_unless_required(monkeypatch, tmp_path):
    missing = tmp_path / "chromium"
    monkeypatch.delenv("VITLM_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        require_chromium(missing)
    monkeypatch.setenv("VITLM_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="VITLM_REQUIRE_BROWSER is set"):
        require_chromium(missing)
    require_chromium(tmp_path)  # an existing path passes
