"""The page for people: ``GET /`` answers it to browsers, its assets are served at ``/static``.

The path-captioning service makes ``GET /`` a JSON health check and the multi-model
captioning service makes it a test page, so
the ingress answers by content negotiation (:func:`prefers_html`): a browser, which lists
``text/html`` in ``Accept`` above anything else, gets the page; curl, httpx and other API
clients (``*/*`` or ``application/json``) keep the JSON. Everything the page needs ships in
``deployments/ingress/web/``: no CDN, so it works offline.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"


def mount_static(app: FastAPI) -> None:
    """Serve the page's assets at ``/static`` (Starlette's StaticFiles: no path escapes the
    folder, ETag and Last-Modified for caching)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@cache
def page_html() -> str:
    """The page (read once per replica)."""
    return (WEB_DIR / "index.html").read_text(encoding="utf-8")


def prefers_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks ``text/html`` above ``application/json``.

    Quality values decide (RFC 9110, section 12.5.1); a type's quality is that of its most
    specific matching range, and an equal rank keeps the JSON, so ``*/*`` and a missing
    header mean JSON.
    """
    if not accept:
        return False
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media_type, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media_type:
            ranges[media_type.lower()] = quality
    return _quality(ranges, "text", "html") > _quality(ranges, "application", "json")


def _quality(ranges: dict[str, float], kind: str, subtype: str) -> float:
    for candidate in (f"{kind}/{subtype}", f"{kind}/*", "*/*"):
        if candidate in ranges:
            return ranges[candidate]
    return 0.0
