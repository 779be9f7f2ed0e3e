"""The whole HTTP API fuzzed from its own OpenAPI description with schemathesis.

Every operation the description lists, every check schemathesis has (no server error,
documented statuses, content types, headers and bodies as described, invalid data refused,
valid data accepted, auth not ignored, ...; no hang past 30 s by the request timeout), all of its
phases (the description's examples, boundary coverage, random fuzzing, stateful sequences
following the description's links), against the session's live ``serve.run`` on tiny
checkpoints. The admin key is sent so admin routes are exercised past their auth;
``ignored_auth`` checks that they refuse requests without it. Valid images, base64 images and
fetchable image URLs come from ``tests/support/fuzz_hooks.py``; what the checks expect where JSON
Schema cannot say everything is in ``tests/support/schemathesis.toml``.

Two runs. The fixed one (seed 20261122, every phase, 20 examples per operation and phase) is
the same every time: its figures are the ones docs/guarantees.md quotes. The fresh one draws a
new seed each run (``$VLGRAPH_FUZZ_SEED`` overrides it) and spends a smaller budget on the
phases a seed steers, random fuzzing and stateful sequences, so CI keeps meeting cases no run
met before; its seed is printed, and a failure names the command that replays it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.support.common import (
    REPO_ROOT,
    TEST_ADMIN_KEY,
    RunningApp,
    serving_on_image_host,
)
from tests.support.fuzz_hooks import image_for_url_path
from tests.support.guarantees import record_figures
from tests.support.seeds import SEED_VARIABLE, fresh_seed

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
#: Examples per operation and phase: enough to reach every branch of the small schemas,
#: small enough for CI.
MAX_EXAMPLES = 20
SEED = 20261122
#: The fresh-seed run's budget: the seeded phases only, fewer examples (about a quarter of
#: the fixed run's cases), so both runs together stay within CI's time.
FRESH_MAX_EXAMPLES = 10
FRESH_PHASES = "fuzzing,stateful"
#: Set to replay a fresh-seed run (its seed is printed and in its failure message).
REPLAY = f"{SEED_VARIABLE}={{seed}} pytest tests/guarantees/test_fuzz_api.py -k fresh"


@dataclass(frozen=True)
class FuzzRun:
    """One schemathesis run: its seed, budget and phases, and where its figures go."""

    name: str
    seed: int
    max_examples: int
    phases: str | None  # None: every phase
    suite: str  # the tests/support/guarantees.py suite its figures are recorded as
    replay: str


@pytest.fixture(params=["fixed", "fresh"])
def fuzz_run(request: pytest.FixtureRequest) -> FuzzRun:
    if request.param == "fixed":
        return FuzzRun(
            "fixed",
            SEED,
            MAX_EXAMPLES,
            None,
            "fuzz",
            "pytest tests/guarantees/test_fuzz_api.py -k fixed",
        )
    seed = fresh_seed()
    return FuzzRun(
        "fresh", seed, FRESH_MAX_EXAMPLES, FRESH_PHASES, "fuzz-fresh", REPLAY.format(seed=seed)
    )


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


def every_check_but_response_time() -> str:
    """Every check schemathesis registers, by name, for ``--checks``: what ``all`` names, less
    ``max_response_time``, which ``all`` turns on with a 10 s limit and which times answers
    by the wall clock (a clock step on a CI machine read as a 247 s answer inside a 121 s
    run). A hang is still a failure: ``--request-timeout`` bounds every request."""
    import schemathesis.specs.openapi.checks  # noqa: F401 - registers the OpenAPI checks
    from schemathesis.checks import CHECKS

    names = sorted(CHECKS.get_all_names())
    assert len(names) >= 14 and "not_a_server_error" in names, names
    return ",".join(names)


def test_every_operation_passes_every_schemathesis_check(
    app: RunningApp,
    fuzz_image_host: str,
    fuzz_run: FuzzRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with capsys.disabled():
        print(
            f"\n[fuzz] {fuzz_run.name} run: seed {fuzz_run.seed}, "
            f"{fuzz_run.max_examples} examples per operation and phase, "
            f"phases {fuzz_run.phases or 'all'}; replay: {fuzz_run.replay}"
        )
    command = [
        str(SCHEMATHESIS), "--config-file", "tests/support/schemathesis.toml",
        "run", f"{app.url}/openapi.json",
        "--checks", every_check_but_response_time(),
        "--max-examples", str(fuzz_run.max_examples),
        "--seed", str(fuzz_run.seed),
        "--workers", "2",
        "--request-timeout", "30",
        "--header", f"X-API-Key: {TEST_ADMIN_KEY}",
        "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path),
        "--no-color",
    ]  # fmt: skip
    if fuzz_run.phases:
        command += ["--phases", fuzz_run.phases]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "VLGRAPH_FUZZ_IMAGE_HOST": fuzz_image_host,
    }
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{output[-12000:]}\n\n{fuzz_run.name} run with seed {fuzz_run.seed} failed; "
        f"replay it with: {fuzz_run.replay}"
    )
    (junit,) = tmp_path.glob("junit*.xml")
    suites = ElementTree.parse(junit).getroot()
    operations = suites.findall(".//testcase")
    assert len(operations) >= 22, "every operation of the description was tested"
    record_figures(
        fuzz_run.suite,
        fuzz_run.replay,
        operations=len(operations),
        failures=int(suites.get("failures", 0)),
        errors=int(suites.get("errors", 0)),
        summary=[line for line in output.splitlines() if "generated" in line][-1:],
        seed=fuzz_run.seed,
        max_examples=fuzz_run.max_examples,
        phases=fuzz_run.phases or "all",
    )
