"""The web page in front of a service that asks for API keys (issue 22), clicked through in
headless Chromium against a real ``vlgraph-serve`` of the offline profile with
``access.mode: keys`` and only BLIP served.

The page asks for a key when an answer is 401, keeps it in ``sessionStorage`` (this tab
only), sends it as ``Authorization: Bearer KEY`` and says 401 and 429 in words
(``docs/web-page.md``, "API key"). Same Chromium, markers and screenshots as
``test_web_page.py``, whose helpers this module uses.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.browser.test_web_page import (
    EXAMPLES,
    FAILED_LOAD,
    PHONE_WIDTH,
    choose_files,
    fill,
    find,
    open_tab,
    screenshot,
    text,
    wait_for,
)
from tests.support.browser import chromium, served_page
from tests.support.common import REPO_ROOT
from vlgraph.access_config import KEYS_ENV, MODE_ENV, hash_key

pytestmark = [pytest.mark.cli, pytest.mark.browser]

#: The keys of this module's server: one with room to spare, one allowed 3 requests a minute.
KEY = f"page-tests-{secrets.token_urlsafe(24)}"
TIGHT_KEY = f"tight-key-{secrets.token_urlsafe(24)}"
TIGHT_PER_MINUTE = 3
STORAGE_NAME = "vlgraph-api-key"
NEEDED = "This service needs an API key. Enter it to continue; it is kept for this tab only."
REFUSED = "The API key was refused: it may be wrong, revoked or rotated. Enter a current key."
NOT_AUTHORIZED = "Not authorized: this service needs a valid API key (enter it above)."
RATE_LIMITED = re.compile(r"Too many requests for this key: try again in (\d+) seconds?\.")
#: Models this module does not need: not served, so the server starts fast.
UNSERVED_MODELS = ("blip2", "gemma", "intern_vlm")
UNSERVED_TOP_LEVEL = ("vqa", "clip_image", "clip_text", "sd", "sdxl")


def keyed_profile(folder: Path) -> Path:
    """configs/offline.yaml with API keys required, two keys (one with a tight limit) and only
    BLIP served, written under ``folder``."""
    profile = yaml.safe_load((REPO_ROOT / "configs" / "offline.yaml").read_text())
    args = profile["applications"][0]["args"]
    args["access"] = {
        "mode": "keys",
        "keys": [
            {"name": "page-tests", "sha256": hash_key(KEY)},
            {"name": "tight-key", "sha256": hash_key(TIGHT_KEY), "limit": "tight"},
        ],
        "keys_env": None,
        "limits": {
            "default": {"requests_per_minute": 1000},
            "tight": {"requests_per_minute": TIGHT_PER_MINUTE},
        },
    }
    for name in UNSERVED_MODELS:
        args["models"][name] = None
    # The models the profile names itself (they have a task) are left out for the same reason.
    for name in [name for name, model in args["models"].items() if "task" in (model or {})]:
        del args["models"][name]
    for name in UNSERVED_TOP_LEVEL:
        args[name] = None
    path = folder / "offline-keys.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def keyed_url(checkpoint_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``PORT=... vlgraph-serve`` of the keyed profile until the module ends."""
    folder = tmp_path_factory.mktemp("page-access")
    profile = keyed_profile(folder)
    with served_page(profile, checkpoint_cache, folder / "data", {KEYS_ENV, MODE_ENV}) as url:
        yield url


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless Chromium from Debian's package, driven by Debian's chromedriver."""
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(driver: Any, keyed_url: str) -> Iterator[Any]:
    """The page loaded afresh with nothing stored, its status line up; after the test, no
    script error was logged, nothing was requested from another origin and no URL held a
    key."""
    driver.get(keyed_url + "/static/app.css")  # the origin, without running the page
    driver.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
    driver.delete_all_cookies()
    driver.get(keyed_url + "/")
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
    assert all(name.startswith((keyed_url, "data:", "blob:")) for name in requested), requested
    for secret in (KEY, TIGHT_KEY):
        assert not any(secret in name for name in requested)
        assert secret not in driver.current_url


def key_panel_says(driver: Any, message: str) -> None:
    """Wait until the key panel shows ``message``."""
    wait_for(
        driver,
        lambda: (
            find(driver, "#api-key-panel").is_displayed()
            and text(driver, "#api-key-message") == message
        ),
        f"the key panel saying {message!r}",
    )


def enter_key(driver: Any, key: str) -> None:
    """Type ``key`` into the key panel and submit it, as a person would."""
    wait_for(driver, lambda: find(driver, "#api-key-input").is_displayed(), "the key input")
    fill(driver, "#api-key-input", key)
    find(driver, "#api-key-submit").click()


def caption_menu(driver: Any) -> list[str]:
    return [
        option.get_attribute("value")
        for option in driver.find_elements("css selector", "#caption-model option")
    ]


def record_fetches(driver: Any) -> None:
    """From now on, note the URL and headers of every request the page makes."""
    driver.execute_script(
        """
        window.sentRequests = [];
        const original = window.fetch;
        window.fetch = (url, init = {}) => {
            const headers = new Headers(init.headers || {});
            window.sentRequests.push({
                url: String(url),
                authorization: headers.get("Authorization"),
                accept: headers.get("Accept"),
                contentType: headers.get("Content-Type"),
            });
            return original.call(window, url, init);
        };
        """
    )


def caption_once(driver: Any) -> str:
    """Click Caption and wait for its end; the caption shown, or '' with an error."""
    find(driver, "#caption-submit").click()
    wait_for(
        driver,
        lambda: (
            find(driver, "#caption-submit").is_enabled()
            and (
                text(driver, "#caption-error")
                or driver.find_elements("css selector", "#caption-results .caption-result")
            )
        ),
        "the caption or an error",
    )
    captions = driver.find_elements("css selector", "#caption-results .caption")
    return captions[0].text.strip() if captions else ""


def test_the_server_wants_a_key(keyed_url: str) -> None:
    """What the page meets: the page, its assets and the health answer are open, the model
    list needs the key (and gets it from the header the page sends)."""
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert httpx.get(keyed_url + "/", headers={"Accept": browser_accept}).status_code == 200
    assert httpx.get(keyed_url + "/static/app.js").status_code == 200
    assert httpx.get(keyed_url + "/", headers={"Accept": "application/json"}).json()["status"]
    refused = httpx.get(keyed_url + "/api/models")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="vlgraph"'
    assert refused.json()["error"]["code"] == "missing_key"
    served = httpx.get(keyed_url + "/api/models", headers={"Authorization": f"Bearer {KEY}"})
    assert served.status_code == 200
    assert [model["name"] for model in served.json()["models"]] == ["blip"]


def test_the_page_asks_for_a_key(page: Any) -> None:
    """Opened without a key, the page says the service needs one, in a password field under
    the header, visible from every tab; the tools wait, empty and disabled."""
    key_panel_says(page, NEEDED)
    assert "healthy" in text(page, "#service-status")  # the status line is open to all
    key_input = find(page, "#api-key-input")
    assert key_input.get_attribute("type") == "password"
    assert not key_input.get_attribute("name")  # never part of a form submission or a URL
    assert caption_menu(page) == []
    assert not find(page, "#caption-model").is_enabled()
    assert not find(page, "#caption-submit").is_enabled()
    assert not find(page, "#api-key-forget").is_displayed()
    screenshot(page, "api-key-asked")
    open_tab(page, "generate")
    assert find(page, "#api-key-panel").is_displayed()
    open_tab(page, "caption")

    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 780, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        page.refresh()
        key_panel_says(page, NEEDED)
        width, scroll_width, right = page.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth,"
            " document.getElementById('api-key-submit').getBoundingClientRect().right]"
        )
        assert scroll_width <= width == PHONE_WIDTH and right <= PHONE_WIDTH
        screenshot(page, "phone-api-key")
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_wrong_key_is_refused_in_words(page: Any) -> None:
    """A wrong key: the panel says it was refused, the key is not kept, the tools still
    wait."""
    key_panel_says(page, NEEDED)
    enter_key(page, f"not-the-key-{secrets.token_urlsafe(16)}")
    key_panel_says(page, REFUSED)
    assert page.execute_script(f"return sessionStorage.getItem('{STORAGE_NAME}')") is None
    assert not find(page, "#api-key-forget").is_displayed()
    assert caption_menu(page) == []
    assert not find(page, "#caption-submit").is_enabled()
    screenshot(page, "api-key-refused")


def test_the_right_key_opens_the_page_and_is_sent(page: Any, keyed_url: str) -> None:
    """The right key: the panel goes, the caption menu fills from the served models, and a
    caption comes back; every request carried the key in the Authorization header, and only
    to the page's own origin."""
    key_panel_says(page, NEEDED)
    record_fetches(page)
    enter_key(page, KEY)
    wait_for(page, lambda: caption_menu(page) == ["blip"], "the caption menu with blip")
    assert not find(page, "#api-key-panel").is_displayed()
    assert find(page, "#caption-model").is_enabled()
    assert find(page, "#api-key-forget").is_displayed()
    choose_files(page, "#caption-files", EXAMPLES / "example.jpg")
    caption = caption_once(page)
    expected = httpx.post(
        f"{keyed_url}/api/caption-images",
        params={"model": "blip"},
        headers={"Authorization": f"Bearer {KEY}"},
        files=[("images", ("example.jpg", (EXAMPLES / "example.jpg").read_bytes()))],
        timeout=120,
    )
    assert expected.status_code == 200, expected.text
    assert caption and caption == expected.json()["results"][0]["caption"]
    assert not text(page, "#caption-error")
    screenshot(page, "api-key-caption")

    sent = page.execute_script("return window.sentRequests")
    by_path = {request["url"].split("?")[0]: request for request in sent}
    for path in ("api/models", "api/caption-images"):
        assert by_path[path]["authorization"] == f"Bearer {KEY}", sent
    assert by_path["."]["accept"] == "application/json"  # the page's own headers are kept
    for request in sent:
        assert not request["url"].startswith(("http:", "https:", "//")), request
        assert KEY not in request["url"]
        assert request["authorization"] == f"Bearer {KEY}", request


def test_the_key_is_kept_for_this_tab_only(page: Any) -> None:
    """The key is in sessionStorage, not in localStorage nor a cookie; Forget key drops it
    and the page asks again."""
    key_panel_says(page, NEEDED)
    enter_key(page, KEY)
    wait_for(page, lambda: caption_menu(page) == ["blip"], "the caption menu with blip")
    assert page.execute_script(f"return sessionStorage.getItem('{STORAGE_NAME}')") == KEY
    local = page.execute_script(
        "return Object.keys(localStorage).map(name => [name, localStorage.getItem(name)])"
    )
    assert not any(KEY in name or KEY in value for name, value in local), local
    assert KEY not in page.execute_script("return document.cookie")
    assert not any(KEY in cookie["value"] for cookie in page.get_cookies())

    page.refresh()  # the same tab keeps it: no question asked
    wait_for(page, lambda: caption_menu(page) == ["blip"], "the caption menu after a reload")
    assert not find(page, "#api-key-panel").is_displayed()

    find(page, "#api-key-forget").click()
    key_panel_says(page, NEEDED)
    assert page.execute_script(f"return sessionStorage.getItem('{STORAGE_NAME}')") is None
    assert not find(page, "#api-key-forget").is_displayed()
    assert caption_menu(page) == []


def test_too_many_requests_are_said_in_words(page: Any) -> None:
    """A key allowed 3 requests a minute: after the model list and two captions, the next
    caption says to try again in so many seconds (from Retry-After); the key is not asked
    again."""
    key_panel_says(page, NEEDED)
    enter_key(page, TIGHT_KEY)  # the model list: the first request of its minute
    wait_for(page, lambda: caption_menu(page) == ["blip"], "the caption menu with blip")
    choose_files(page, "#caption-files", EXAMPLES / "example.jpg")
    answers = [caption_once(page) for _ in range(TIGHT_PER_MINUTE - 1)]
    assert all(answers), (answers, text(page, "#caption-error"))
    assert caption_once(page) == ""
    error = text(page, "#caption-error")
    assert error.startswith("Captioning failed: "), error
    found = RATE_LIMITED.search(error)
    assert found, error
    assert 1 <= int(found.group(1)) <= 60, error
    assert not find(page, "#api-key-panel").is_displayed()
    assert page.execute_script(f"return sessionStorage.getItem('{STORAGE_NAME}')") == TIGHT_KEY
    screenshot(page, "api-key-rate-limited")


def test_a_revoked_key_mid_session_says_not_authorized(page: Any) -> None:
    """A request refused with 401 after the page was opened (here: the stored key replaced
    by one the service does not know) says so in the panel's error line and asks for a key."""
    key_panel_says(page, NEEDED)
    enter_key(page, KEY)
    wait_for(page, lambda: caption_menu(page) == ["blip"], "the caption menu with blip")
    page.execute_script(f"sessionStorage.setItem('{STORAGE_NAME}', 'revoked-key-0123456789')")
    choose_files(page, "#caption-files", EXAMPLES / "example.jpg")
    assert caption_once(page) == ""
    assert text(page, "#caption-error") == f"Captioning failed: {NOT_AUTHORIZED}"
    key_panel_says(page, REFUSED)
    assert page.execute_script(f"return sessionStorage.getItem('{STORAGE_NAME}')") is None
    screenshot(page, "api-key-revoked")
