"""The web page (issue 8), clicked through in headless Chromium against a real
``vlgraph-serve configs/offline.yaml`` (the README's run command with ``PORT``), in the
throughput mode the Docker image runs (Serve's HAProxy ingress).

Chromium and its driver come from Debian's packages (``chromium``, ``chromium-driver``;
the README's install line adds them), driven by Selenium with both paths given, so nothing is
downloaded. Every flow saves a screenshot under ``test-artifacts/screenshots/`` (or
``$VLGRAPH_SCREENSHOT_DIR``). The element ids are the contract in ``docs/web-page.md``.

These tests run with the command-line tests, last: the server starts its own local Ray.
"""

from __future__ import annotations

import base64
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import chromium, served_page
from tests.support.common import REPO_ROOT
from vlgraph.tiny.world import Scene, draw

pytestmark = [pytest.mark.cli, pytest.mark.browser]

SCREENSHOTS = Path(
    os.environ.get("VLGRAPH_SCREENSHOT_DIR", REPO_ROOT / "test-artifacts" / "screenshots")
)
EXAMPLES = REPO_ROOT / "images"
PHONE_WIDTH = 360
TABS = ("caption", "questions", "generate", "similar", "embed", "search")
#: What Chrome logs for every 4xx/5xx answer; the tests send bad files on purpose.
FAILED_LOAD = "Failed to load resource"


@pytest.fixture(scope="module")
def page_url(checkpoint_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``PORT=... vlgraph-serve configs/offline.yaml``, as a user starts it, until the module
    ends."""
    with served_page(
        "configs/offline.yaml", checkpoint_cache, tmp_path_factory.mktemp("page-data")
    ) as url:
        yield url


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium from Debian's package, driven by Debian's chromedriver."""
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(driver: Any, page_url: str) -> Iterator[Any]:
    """The page freshly loaded at desktop size; after the test, no script error was logged
    and nothing was requested from another origin."""
    driver.get(page_url + "/")
    wait_for(driver, lambda: "healthy" in text(driver, "#service-status"), "service status")
    yield driver
    entries = driver.get_log("browser")
    script_errors = [
        entry["message"]
        for entry in entries
        if entry["level"] == "SEVERE" and FAILED_LOAD not in entry["message"]
    ]
    assert not script_errors, script_errors
    requested = driver.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert all(name.startswith(page_url) or name.startswith("data:") for name in requested), (
        requested
    )


def wait_for(driver: Any, condition: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` and the page's errors."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(_: Any) -> Any:
        try:
            return condition()
        except StaleElementReferenceException:
            return False

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(attempt)
    except TimeoutException:
        alerts = [alert.text for alert in driver.find_elements("css selector", "[role=alert]")]
        message = f"timed out waiting for {what}; alerts on the page: {alerts}"
        raise AssertionError(message) from None


def find(driver: Any, css: str) -> Any:
    return driver.find_element("css selector", css)


def text(driver: Any, css: str) -> str:
    return find(driver, css).text.strip()


def open_tab(driver: Any, tab: str) -> None:
    find(driver, f'nav [data-tab="{tab}"]').click()
    wait_for(driver, lambda: find(driver, f"#{tab}-panel").is_displayed(), f"the {tab} panel")


def choose_files(driver: Any, css: str, *paths: Path) -> None:
    find(driver, css).send_keys("\n".join(str(path) for path in paths))


def fill(driver: Any, css: str, value: str) -> None:
    element = find(driver, css)
    element.clear()
    element.send_keys(value)


def select(driver: Any, css: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(find(driver, css)).select_by_value(value)


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page, below the fold too, as ``name``.png; check a real PNG was
    written."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    capture = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(capture["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    return path


def shown_error(driver: Any, css: str) -> str:
    """The error the page shows in ``css``: visible, in words, not JSON."""
    wait_for(driver, lambda: text(driver, css), f"an error in {css}")
    shown = text(driver, css)
    assert find(driver, css).is_displayed()
    assert "{" not in shown and "request_id" not in shown, shown
    return shown


def not_an_image(tmp_path: Path, name: str = "notes.jpg") -> Path:
    """A text file named like a JPEG."""
    path = tmp_path / name
    path.write_text("these are notes, not a picture\n")
    return path


def api_error(response: httpx.Response) -> str:
    assert 400 <= response.status_code < 500, response.text
    return response.json()["error"]["message"]


def drop_files(driver: Any, css: str, *paths: Path) -> None:
    """Drag files onto ``css`` as a person would: dragenter, dragover and drop events carrying
    a DataTransfer with the files (WebDriver cannot drag from the desktop)."""
    files = [
        {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()} for path in paths
    ]
    driver.execute_script(
        """
        const [target, files] = [document.querySelector(arguments[0]), arguments[1]];
        const transfer = new DataTransfer();
        for (const file of files) {
            const bytes = Uint8Array.from(atob(file.data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], file.name, {type: "image/jpeg"}));
        }
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {
                bubbles: true, cancelable: true, dataTransfer: transfer}));
        }
        """,
        css,
        files,
    )


# ---- the answer at / for API clients and for browsers


def test_api_clients_get_json_and_browsers_get_the_page(page_url: str) -> None:
    """The JSON health check of BLIP captioning by path stays the answer for API clients; a
    browser's Accept gets the page, whose assets are served by the app itself."""
    for accept in (None, "*/*", "application/json", "text/html;q=0.5, application/json"):
        headers = {"Accept": accept} if accept else {}
        health = httpx.get(page_url + "/", headers=headers, timeout=30)
        assert health.status_code == 200
        assert health.headers["content-type"] == "application/json"
        assert health.json()["status"] == "healthy"
        assert health.json()["random_weights"] is True  # every offline model is tiny
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    html = httpx.get(page_url + "/", headers={"Accept": browser_accept}, timeout=30)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert "<title>vlgraph</title>" in html.text
    for asset, media_type in (("static/app.js", "javascript"), ("static/app.css", "text/css")):
        served = httpx.get(f"{page_url}/{asset}", timeout=30)
        assert served.status_code == 200 and media_type in served.headers["content-type"]
        assert asset in html.text  # the page loads it by a relative URL
    assert "http://" not in html.text and "https://" not in html.text  # no CDN
    assert httpx.get(f"{page_url}/static/missing.js", timeout=30).status_code == 404
    escape = httpx.get(f"{page_url}/static/%2e%2e/app.py", timeout=30)
    assert escape.status_code == 404


def test_page_opens_with_the_offline_notice(page: Any) -> None:
    """The offline profile's models are random: the page says so up front."""
    notice = find(page, "#offline-notice")
    assert notice.is_displayed()
    assert "random" in notice.text.lower()
    assert "offline" in text(page, "#service-status")
    assert find(page, "#caption-panel").is_displayed()
    assert not find(page, "#questions-panel").is_displayed()
    screenshot(page, "start")


def test_model_menus_come_from_the_served_models(page: Any, page_url: str) -> None:
    """Every model menu lists what GET /api/models says the profile serves for that task, in
    its order and with its labels (the similar-image menu: the pipeline's generator alone); the
    collective box follows the models that read sets."""
    from selenium.webdriver.support.ui import Select

    catalog = httpx.get(f"{page_url}/api/models", timeout=30).json()
    served, chained = catalog["models"], catalog["similar_image_generator"]

    def able(capability: str) -> list[tuple[str, str]]:
        return [(m["name"], m["label"]) for m in served if capability in m["capabilities"]]

    def menu(css: str) -> list[tuple[str, str]]:
        options = Select(find(page, css)).options
        return [(o.get_attribute("value"), o.get_attribute("textContent").strip()) for o in options]

    assert menu("#caption-model") == able("caption")
    assert menu("#generate-model") == able("generate")
    # the pipeline draws with one generator: the only one its route takes
    assert chained == "sdxl"
    assert menu("#similar-model") == [m for m in able("generate") if m[0] == chained]
    assert Select(find(page, "#similar-model")).first_selected_option.get_attribute("value") == (
        "sdxl"
    )
    collective = {name for name, _ in able("collective")}
    for name, _ in able("caption"):
        select(page, "#caption-model", name)
        enabled = find(page, "#caption-collective").is_enabled()
        assert enabled == (name in collective), name
    select(page, "#caption-model", "blip")


# ---- 1. captioning (multi-model captioning)


def test_caption_flow(page: Any, page_url: str, tmp_path: Path) -> None:
    """Pick the model, a caption prompt and a flag question, choose two images and drop a
    third, see a caption, tags, flag and cache state for each; the same request again is
    answered by the cache."""
    select(page, "#caption-model", "blip")
    fill(page, "#caption-prompt", "a photo of")
    fill(page, "#flag-prompt", "is there a person in the picture?")
    choose_files(page, "#caption-files", EXAMPLES / "example1.jpg", EXAMPLES / "example2.jpg")
    drop_files(page, "#caption-drop", EXAMPLES / "example.jpg")
    selected = text(page, "#caption-selected")
    assert all(name in selected for name in ("example1.jpg", "example2.jpg", "example.jpg"))
    find(page, "#caption-submit").click()
    cards = wait_for(
        page,
        lambda: len(found := page.find_elements("css selector", ".caption-result")) == 3 and found,
        "three caption results",
    )
    expected = httpx.post(
        f"{page_url}/api/caption-images",
        params={
            "model": "blip",
            "caption_prompt": "a photo of",
            "flag_caption_prompt": "is there a person in the picture?",
        },
        files=[("images", (p.name, p.read_bytes())) for p in sorted(EXAMPLES.glob("*.jpg"))],
        timeout=120,
    ).json()["results"]
    caption_of = {item["filename"]: item for item in expected}
    for card in cards:
        name = card.find_element("css selector", ".filename").text.strip()
        caption = card.find_element("css selector", ".caption").text.strip()
        assert caption == caption_of[name]["caption"] and caption.startswith("a photo of")
        shown_tags = card.find_element("css selector", ".tags").text.strip()
        assert shown_tags == ", ".join(caption_of[name]["tags"])
        flag = "flagged" if caption_of[name]["flagged"] else "not flagged"
        assert card.find_element("css selector", ".flagged").text.strip() == flag
        assert card.find_element("css selector", ".cache").text.strip() == "computed"
    screenshot(page, "caption")

    find(page, "#caption-submit").click()  # the same images again: the cache answers
    wait_for(
        page,
        lambda: (
            [c.text for c in page.find_elements("css selector", ".caption-result .cache")]
            == ["from cache"] * 3
        ),
        "cached captions",
    )

    # A file that is not an image gets its own error; the other images still get captions.
    find(page, "#caption-clear").click()
    bad = not_an_image(tmp_path, "<img src=x onerror=alert(1)>.jpg")  # shown as text, not run
    choose_files(page, "#caption-files", bad, EXAMPLES / "example.jpg")
    find(page, "#caption-submit").click()
    wait_for(page, lambda: page.find_elements("css selector", ".caption-result .error"), "error")
    expected_error = httpx.post(
        f"{page_url}/api/caption-images",
        params={"model": "blip"},
        files=[("images", (bad.name, bad.read_bytes()))],
        timeout=60,
    )
    bad_card, good_card = page.find_elements("css selector", ".caption-result")
    assert api_error(expected_error) in bad_card.find_element("css selector", ".error").text
    assert bad_card.find_element("css selector", ".filename").text == bad.name
    assert not bad_card.find_elements("css selector", "img")
    assert good_card.find_element("css selector", ".caption").text.strip()
    screenshot(page, "caption-bad-file")


def test_collective_caption_flow(page: Any, page_url: str) -> None:
    """One caption for a set of images, for the models that read several images at once;
    the option is off for models that cannot."""
    select(page, "#caption-model", "blip")
    assert not find(page, "#caption-collective").is_enabled()
    select(page, "#caption-model", "gemma")
    collective = find(page, "#caption-collective")
    assert collective.is_enabled()
    collective.click()
    choose_files(page, "#caption-files", EXAMPLES / "example1.jpg", EXAMPLES / "example2.jpg")
    find(page, "#caption-submit").click()
    wait_for(page, lambda: text(page, "#collective-result .caption"), "the collective caption")
    expected = httpx.post(
        f"{page_url}/api/caption-collective-images",
        params={"model": "gemma"},
        files=[
            ("images", (name, (EXAMPLES / name).read_bytes()))
            for name in ("example1.jpg", "example2.jpg")
        ],
        timeout=120,
    ).json()
    assert text(page, "#collective-result .caption") == expected["collective_caption"]
    assert "2" in text(page, "#collective-result")
    screenshot(page, "caption-collective")


# ---- 2. questions and history (visual question answering with uploads)


def test_question_flow(page: Any, page_url: str, tmp_path: Path) -> None:
    """Upload, see the caption, ask two questions, see the answers and the history; a file
    that is not an image is refused in words."""
    open_tab(page, "questions")
    assert not find(page, "#question-submit").is_enabled()
    choose_files(page, "#upload-file", EXAMPLES / "example.jpg")
    find(page, "#upload-submit").click()
    wait_for(page, lambda: text(page, "#upload-caption"), "the upload's caption")
    wait_for(
        page,
        lambda: find(page, "#upload-preview").get_attribute("naturalWidth") not in (None, "0"),
        "the uploaded image's preview",
    )
    newest = httpx.get(f"{page_url}/history", params={"limit": 1}, timeout=30).json()["items"][0]
    assert text(page, "#upload-caption") == newest["caption"]

    for question in ("what is in the picture", "is it outdoors"):
        fill(page, "#question-input", question)
        find(page, "#question-submit").click()
        wait_for(
            page,
            lambda q=question: q in text(page, "#question-history"),
            f"the answer to {question!r}",
        )
    stored = httpx.get(f"{page_url}/history", params={"limit": 1}, timeout=30).json()["items"][0]
    assert stored["image_id"] == newest["image_id"] and len(stored["questions"]) == 2
    assert text(page, "#answer") == stored["questions"][-1]["answer"]
    shown = page.find_elements("css selector", "#question-history li.qa")
    assert [item.find_element("css selector", ".question").text for item in shown] == [
        record["question"] for record in stored["questions"]
    ]
    assert [item.find_element("css selector", ".answer").text for item in shown] == [
        record["answer"] for record in stored["questions"]
    ]
    wait_for(
        page,
        lambda: "is it outdoors" in text(page, "#history-list li.history-item"),
        "the history list showing the questions",
    )
    first = find(page, "#history-list li.history-item")
    assert stored["caption"] in first.text
    screenshot(page, "questions")

    bad = not_an_image(tmp_path)
    choose_files(page, "#upload-file", bad)
    find(page, "#upload-submit").click()
    refusal = httpx.post(f"{page_url}/upload", files={"image": (bad.name, bad.read_bytes())})
    assert api_error(refusal) in shown_error(page, "#questions-error")
    screenshot(page, "questions-bad-file")


# ---- 3. generation with live progress (image generation)


def test_generation_flow_shows_live_progress(page: Any) -> None:
    """Prompt, size and steps give an image; the progress bar moves step by step, fed by the
    streaming endpoint, before the image arrives."""
    open_tab(page, "generate")
    fill(page, "#generate-prompt", "a lighthouse at dusk")
    fill(page, "#generate-width", "128")
    fill(page, "#generate-height", "128")
    fill(page, "#generate-steps", "12")
    fill(page, "#generate-seed", "7")
    page.execute_script(
        """
        window.progressSeen = [];
        const bar = document.getElementById("generate-progress");
        const image = document.getElementById("generate-image");
        new MutationObserver(() => window.progressSeen.push({
            value: Number(bar.value), max: Number(bar.max),
            imageShown: (image.getAttribute("src") || "").startsWith("data:image/png"),
        })).observe(bar, {attributes: true});
        """
    )
    find(page, "#generate-submit").click()
    wait_for_png(page, "#generate-image")
    wait_for(page, lambda: find(page, "#generate-submit").is_enabled(), "the button back")
    seen = page.execute_script("return window.progressSeen")
    before_image = [s["value"] for s in seen if not s["imageShown"] and s["max"] == 12]
    assert any(0 < value < 12 for value in before_image), seen
    assert before_image == sorted(before_image), seen
    bar = find(page, "#generate-progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "12"
    assert "12 of 12" in text(page, "#generate-progress-text")
    assert page.execute_script(
        "const img = document.getElementById('generate-image');"
        "return [img.naturalWidth, img.naturalHeight]"
    ) == [128, 128]
    details = text(page, "#generate-details")
    assert "seed 7" in details and "128" in details
    screenshot(page, "generate")

    fill(page, "#generate-steps", "999")
    find(page, "#generate-submit").click()
    error = shown_error(page, "#generate-error")
    assert "50" in error, error  # the offline profile's max_steps, from the API's message
    screenshot(page, "generate-too-many-steps")


# ---- 4. similar image (similar image generation)


def test_similar_image_flow(page: Any, page_url: str, tmp_path: Path) -> None:
    """The original, its BLIP caption and the image generated from it, side by side."""
    make_similar_image(page, steps=4)
    expected = httpx.post(
        f"{page_url}/api/similar-image",
        files={"image": ("example.jpg", (EXAMPLES / "example.jpg").read_bytes())},
        data={"num_inference_steps": "4"},
        timeout=120,
    ).json()
    assert text(page, "#similar-caption") == expected["caption"]
    assert page.execute_script("return document.getElementById('similar-original').naturalWidth")
    tops, lefts = columns(page, "#similar-panel .side-by-side")
    assert max(tops) - min(tops) < 5 and lefts == sorted(lefts), (tops, lefts)
    screenshot(page, "similar")

    bad = not_an_image(tmp_path)
    choose_files(page, "#similar-file", bad)
    find(page, "#similar-submit").click()
    refusal = httpx.post(
        f"{page_url}/api/similar-image", files={"image": (bad.name, bad.read_bytes())}
    )
    assert api_error(refusal) in shown_error(page, "#similar-error")
    screenshot(page, "similar-bad-file")


def make_similar_image(driver: Any, steps: int) -> None:
    """Run the similar-image flow on the example photo until the generated image shows."""
    open_tab(driver, "similar")
    choose_files(driver, "#similar-file", EXAMPLES / "example.jpg")
    fill(driver, "#similar-steps", str(steps))
    find(driver, "#similar-submit").click()
    wait_for_png(driver, "#similar-generated")


def wait_for_png(driver: Any, css: str) -> None:
    """Wait until the ``<img>`` at ``css`` shows a PNG that the API sent as base64."""
    wait_for(
        driver,
        lambda: (find(driver, css).get_attribute("src") or "").startswith("data:image/png"),
        f"an image in {css}",
    )


def columns(driver: Any, css: str) -> tuple[list[float], list[float]]:
    """Top and left of each child of ``css``, in document order."""
    boxes = driver.execute_script(
        "return [...document.querySelector(arguments[0]).children]"
        ".map(child => child.getBoundingClientRect()).map(box => [box.top, box.left])",
        css,
    )
    assert len(boxes) == 3, boxes
    return [top for top, _ in boxes], [left for _, left in boxes]


# ---- 5. embeddings (CLIP embeddings)


def test_embedding_flow(page: Any, page_url: str, tmp_path: Path) -> None:
    """A text and an image in, a short view of each vector and their cosine similarity, the
    same as computed from the API's own vectors."""
    open_tab(page, "embed")
    phrase = "a photo of a lighthouse"
    fill(page, "#embed-a-text", phrase)
    choose_files(page, "#embed-b-file", EXAMPLES / "example.jpg")
    find(page, "#embed-submit").click()
    wait_for(page, lambda: text(page, "#embed-cosine"), "the cosine similarity")
    text_vector = httpx.post(
        f"{page_url}/encode_text", json={"text": phrase, "normalize": True}, timeout=60
    ).json()["embedding"]
    photo = base64.b64encode((EXAMPLES / "example.jpg").read_bytes()).decode()
    image_vector = httpx.post(
        f"{page_url}/encode_image", json={"image_b64": photo, "normalize": True}, timeout=60
    ).json()["embedding"]
    cosine = sum(a * b for a, b in zip(text_vector, image_vector, strict=True)) / (
        math.hypot(*text_vector) * math.hypot(*image_vector)
    )
    shown = text(page, "#embed-cosine")
    assert shown.startswith("cosine similarity: "), shown
    assert abs(float(shown.rsplit(" ", 1)[1]) - cosine) <= 1e-4, (shown, cosine)
    assert "512" in text(page, "#embed-a-vector") and "clip_text" in text(page, "#embed-a-vector")
    assert f"{text_vector[0]:.4f}" in text(page, "#embed-a-vector")
    assert "clip_image" in text(page, "#embed-b-vector")
    screenshot(page, "embed")

    bad = not_an_image(tmp_path)
    choose_files(page, "#embed-b-file", bad)
    find(page, "#embed-submit").click()
    refusal = httpx.post(
        f"{page_url}/encode_image",
        json={"image_b64": base64.b64encode(bad.read_bytes()).decode()},
    )
    assert api_error(refusal) in shown_error(page, "#embed-error")
    screenshot(page, "embed-bad-file")


# ---- phone width


# ---- 6. search over the stored images


def test_search_flow(page: Any, page_url: str, tmp_path: Path) -> None:
    """Two world pictures uploaded; a German description finds the red one first, shown as a
    thumbnail with its score and caption; a dropped picture searches by image; clicking a
    result opens it in the questions panel; an empty search is refused in words."""
    pictures = {}
    for colour, background in (("red", "white"), ("blue", "black")):
        path = tmp_path / f"{colour}.png"
        draw(Scene("circle", colour, background), random.Random(7), 96).save(path)
        answer = httpx.post(
            f"{page_url}/upload", files={"image": (path.name, path.read_bytes())}, timeout=120
        ).json()
        pictures[colour] = (path, answer["image_id"])

    open_tab(page, "search")
    fill(page, "#search-text", "ein roter Kreis auf weißem Hintergrund")
    find(page, "#search-submit").click()
    wait_for(page, lambda: page.find_elements("css selector", "#search-results li"), "results")
    first = find(page, "#search-results li.search-result")
    assert first.get_attribute("data-image-id") == pictures["red"][1]
    assert "score" in first.text
    wait_for(
        page,
        lambda: (
            first.find_element("css selector", "img").get_attribute("naturalWidth")
            not in (None, "0")
        ),
        "the first result's thumbnail",
    )
    screenshot(page, "search-text")

    fill(page, "#search-text", "")
    drop_files(page, "#search-drop", pictures["blue"][0])
    wait_for(page, lambda: "blue.png" in text(page, "#search-chosen"), "the dropped image")
    find(page, "#search-submit").click()
    wait_for(
        page,
        lambda: (
            find(page, "#search-results li.search-result").get_attribute("data-image-id")
            == pictures["blue"][1]
        ),
        "the dropped picture found first",
    )
    find(page, "#search-results li.search-result").click()
    wait_for(page, lambda: find(page, "#questions-panel").is_displayed(), "the questions panel")
    wait_for(page, lambda: find(page, "#question-submit").is_enabled(), "a chosen image")
    stored = httpx.get(f"{page_url}/images/{pictures['blue'][1]}", timeout=30)
    assert stored.status_code == 200
    screenshot(page, "search-to-questions")

    open_tab(page, "search")
    find(page, "#search-clear").click()
    find(page, "#search-submit").click()
    assert "description" in shown_error(page, "#search-error")


def test_every_panel_fits_a_phone_screen(page: Any) -> None:
    """At 360 px wide nothing scrolls sideways, every panel's button is on screen, and the
    similar-image results stack."""
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 780, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        page.refresh()
        wait_for(page, lambda: "healthy" in text(page, "#service-status"), "service status")
        for tab in TABS:
            open_tab(page, tab)
            width, scroll_width = page.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth]"
            )
            assert width == PHONE_WIDTH and scroll_width <= width, (tab, scroll_width)
            button = find(page, f"#{tab}-submit" if tab != "questions" else "#upload-submit")
            right = page.execute_script("return arguments[0].getBoundingClientRect().right", button)
            assert right <= PHONE_WIDTH, (tab, right)
            screenshot(page, f"phone-{tab}")
        make_similar_image(page, steps=2)
        tops, _ = columns(page, "#similar-panel .side-by-side")
        assert tops[0] < tops[1] < tops[2], tops
        assert page.execute_script("return document.documentElement.scrollWidth") <= PHONE_WIDTH
        screenshot(page, "phone-similar-result")
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
