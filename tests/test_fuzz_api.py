"""The whole HTTP API fuzzed from its own OpenAPI description with schemathesis.

Every operation the description lists, every check schemathesis has (``--checks all``: no
server error, documented statuses, content types, headers and bodies as described, invalid
data refused, valid data accepted, auth not ignored, no hang past 30 s, ...), all of its
phases (the description's examples, boundary coverage, random fuzzing, stateful sequences
following the description's links), against the session's live ``serve.run`` on tiny
checkpoints. The admin key is sent so admin routes are exercised past their auth;
``ignored_auth`` checks that they refuse requests without it. Valid images, base64 images and
fetchable image URLs come from ``tests/fuzz_hooks.py``; what the checks expect where JSON
Schema cannot say everything is in ``tests/schemathesis.toml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import (
    REPO_ROOT,
    TEST_ADMIN_KEY,
    RunningApp,
    serving_on_image_host,
)
from tests.fuzz_hooks import image_for_url_path
from tests.guarantees import record_figures

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
#: Examples per operation and phase: enough to reach every branch of the small schemas,
#: small enough for CI.
MAX_EXAMPLES = 20
SEED = 20261122


class _FuzzImages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = image_for_url_path(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def fuzz_image_host() -> Iterator[str]:
    """The image server whose URLs the fuzzer sends as valid ``image_url`` values."""
    with serving_on_image_host(_FuzzImages) as url:
        yield url


def test_every_operation_passes_every_schemathesis_check(
    app: RunningApp, fuzz_image_host: str, tmp_path: Path
) -> None:
    command = [
        str(SCHEMATHESIS), "--config-file", "tests/schemathesis.toml",
        "run", f"{app.url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "2",
        "--request-timeout", "60",
        "--header", f"X-API-Key: {TEST_ADMIN_KEY}",
        "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path),
        "--no-color",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "VLGRAPH_FUZZ_IMAGE_HOST": fuzz_image_host,
    }
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    (junit,) = tmp_path.glob("junit*.xml")
    suites = ElementTree.parse(junit).getroot()
    operations = suites.findall(".//testcase")
    assert len(operations) >= 22, "every operation of the description was tested"
    record_figures(
        "fuzz",
        "pytest tests/test_fuzz_api.py",
        operations=len(operations),
        failures=int(suites.get("failures", 0)),
        errors=int(suites.get("errors", 0)),
        summary=[line for line in output.splitlines() if "generated" in line][-1:],
        seed=SEED,
        max_examples=MAX_EXAMPLES,
    )
