"""Who gets the page at ``GET /``: browsers; everyone else keeps the JSON of BLIP captioning
by path."""

from __future__ import annotations

import re

import pytest

from deployments.ingress.routes.web import STATIC_DIR, page_html, prefers_html

BROWSERS = [
    # Chromium, Firefox and Safari navigations
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8 ",
    "TEXT/HTML",
    "text/*",
    "application/json;q=0.5, text/html",
]
API_CLIENTS = [
    None,
    "",
    "*/*",  # curl, httpx, requests
    "application/json",
    "application/json, text/html",  # equal rank: JSON
    "text/html;q=0.5, application/json",
    "text/html;q=0, */*",
    "text/html;q=oops, */*;q=0.1",
    "image/png",
    ",;,",
]


@pytest.mark.parametrize("accept", BROWSERS)
def test_browsers_get_the_page(accept: str) -> None:
    assert prefers_html(accept)


@pytest.mark.parametrize("accept", API_CLIENTS)
def test_api_clients_keep_json(accept: str | None) -> None:
    assert not prefers_html(accept)


def test_the_page_and_its_assets_ship_with_the_package() -> None:
    """Everything the page loads is in the package, by relative URL: no CDN."""
    html = page_html()
    for asset in ("app.js", "app.css"):
        assert (STATIC_DIR / asset).is_file()
        assert f'"static/{asset}"' in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    script = (STATIC_DIR / "app.js").read_text()
    assert not re.search(r"(fetch|import)\(\s*[\"'`](https?:)?//", script)
