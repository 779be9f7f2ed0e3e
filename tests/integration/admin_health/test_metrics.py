"""GET /metrics: this service's counters and histogram, in Prometheus text format, moving
after requests (Ray exports metrics every few seconds, so the test polls)."""

from __future__ import annotations

import time

import pytest

from tests.support.common import RunningApp, jpeg_bytes, noise_image
from tests.support.metrics import series_value

pytestmark = pytest.mark.integration


def scrape(app: RunningApp) -> str:
    with app.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def wait_for(app: RunningApp, predicate, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(app)
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics did not move within {timeout_s} s:\n{text}")
        time.sleep(1)


def caption(app: RunningApp, model: str) -> None:
    files = [("images", ("a.jpg", jpeg_bytes(noise_image(1)), "image/jpeg"))]
    with app.client() as client:
        response = client.post("/api/caption-images", params={"model": model}, files=files)
    assert response.status_code == 200, response.text


def test_request_counters_and_model_latency_move(app: RunningApp) -> None:
    requests = "ray_vlgraph_requests_total"
    labels = {"route": "/api/caption-images", "model": "intern_vlm", "status": "200"}
    before = series_value(scrape(app), requests, **labels)
    caption(app, "intern_vlm")
    text = wait_for(app, lambda t: series_value(t, requests, **labels) >= before + 1)
    latency_before = series_value(
        text, "ray_vlgraph_model_latency_seconds_count", model="intern_vlm"
    )
    assert latency_before >= 1
    for _ in range(2):
        caption(app, "intern_vlm")
    text = wait_for(app, lambda t: series_value(t, requests, **labels) >= before + 3)
    assert "# TYPE ray_vlgraph_requests_total counter" in text
    assert all(
        line.startswith(("# HELP ray_vlgraph_", "# TYPE ray_vlgraph_", "ray_vlgraph_"))
        for line in text.splitlines()
        if line
    ), "only this service's series"


def test_error_statuses_are_counted(app: RunningApp) -> None:
    requests = "ray_vlgraph_requests_total"
    labels = {"route": "/api/caption-images", "model": "gemma", "status": "415"}
    before = series_value(scrape(app), requests, **labels)
    files = [("images", ("a.jpg", b"text, not an image", "image/jpeg"))]
    with app.client() as client:
        assert (
            client.post("/api/caption-images", params={"model": "gemma"}, files=files).status_code
            == 415
        )
    wait_for(app, lambda t: series_value(t, requests, **labels) >= before + 1)
