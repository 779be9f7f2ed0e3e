"""The whole HTTP API fuzzed from its own OpenAPI description with schemathesis.

Every operation the description lists, every check schemathesis has (``--checks all``: no 5xx,
status codes, content types, headers and bodies as described, invalid data refused, valid
data accepted, auth not ignored, ...), all of its phases (the description's examples,
boundary coverage, random fuzzing, stateful sequences), against the session's live
``serve.run`` on tiny checkpoints. The admin key is sent so admin routes are exercised past
their auth; ``ignored_auth`` checks that they refuse requests without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_ADMIN_KEY, RunningApp

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
#: Examples per operation and phase: enough to reach every branch of the small schemas,
#: small enough for CI.
MAX_EXAMPLES = 20


def test_every_operation_passes_every_schemathesis_check(app: RunningApp, tmp_path: Path) -> None:
    command = [
        str(SCHEMATHESIS), "run", f"{app.url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "20261122",
        "--workers", "2",
        "--request-timeout", "60",
        "--header", f"X-API-Key: {TEST_ADMIN_KEY}",
        "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path),
        "--no-color",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
