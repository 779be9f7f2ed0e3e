"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Debian's
``chromium-driver`` through Selenium, nothing downloaded."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("VLGRAPH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VLGRAPH_CHROMEDRIVER", "/usr/bin/chromedriver"))
DESKTOP = (1280, 1000)


def start_chromium() -> Any:
    """A headless Chromium at desktop size whose console log the tests can read."""
    for needed, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: install Debian's {package} (see README)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    browser.set_script_timeout(30)
    return browser


@contextlib.contextmanager
def served_page(
    profile: str | Path, checkpoint_cache: Path, data_dir: Path, drop: set[str] = frozenset()
) -> Iterator[str]:
    """``PORT=... vlgraph-serve PROFILE`` as a user starts it, in the Docker image's mode
    (HAProxy straight to the ingress replica, SSE included), until the block ends; its URL.
    ``drop``: environment variables the server must not see (beside ``IMAGE_ROOT``)."""
    from tests.support.common import free_port, release_ray, wait_until_healthy
    from tests.support.serve_process import ServeRun

    release_ray()
    port = free_port()
    hidden = {"IMAGE_ROOT", *drop}
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env.update(
        VLGRAPH_CACHE_DIR=str(checkpoint_cache),
        VLGRAPH_DATA_DIR=str(data_dir),
        PORT=str(port),
        VLGRAPH_SERVE_MODE="throughput",
    )
    server = ServeRun(str(profile), env, ("vlgraph-serve",))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, timeout_s=240)
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """:func:`start_chromium` until the block ends."""
    browser = start_chromium()
    try:
        yield browser
    finally:
        browser.quit()
