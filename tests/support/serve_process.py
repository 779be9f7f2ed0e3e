"""A ``serve run`` (or ``vlgraph-serve``) process driven as a user drives it, for the tests
that need the real command line rather than the session's Ray instance."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.support.common import REPO_ROOT


class ServeRun:
    """A ``serve run`` process (or ``command``) whose output is collected as it arrives."""

    def __init__(
        self, config: Path | str, env: dict[str, str], command: tuple[str, ...] = ("serve", "run")
    ):
        self.output = ""
        self._process = subprocess.Popen(
            [*command, str(config)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.output += line

    def wait_for_output(self, pattern: str, timeout_s: float) -> float:
        """Seconds until ``pattern`` appeared in the output; fails after ``timeout_s``."""
        started = time.monotonic()
        while not re.search(pattern, self.output):
            if time.monotonic() - started > timeout_s:
                raise AssertionError(
                    f"{pattern!r} not seen in {timeout_s} s:\n{self.output[-3000:]}"
                )
            time.sleep(0.2)
        return time.monotonic() - started

    def wait_until_healthy(self, url: str, timeout_s: float) -> None:
        """Poll ``GET {url}/healthz`` until it answers 200 (every model reachable); fails at
        once, with the command's output, if the process ends first, and after ``timeout_s``
        otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                raise AssertionError(
                    f"{' '.join(self._process.args)} ended with {self._process.returncode} "
                    f"before {url} was healthy:\n{self.output[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{url} did not become healthy within {timeout_s} s:\n{self.output[-3000:]}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Ctrl-C, as a user would; then make sure nothing is left running."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)
