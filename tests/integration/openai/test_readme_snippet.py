"""The README's ``openai`` snippet runs as written against a live app (only its base URL
changed) and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.support.common import REPO_ROOT, RunningApp

pytestmark = pytest.mark.integration

QUICK_START_URL = "http://127.0.0.1:8000/v1"


def readme_snippet() -> str:
    """The Python block of the README's OpenAI-compatible API section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## OpenAI-compatible API", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's OpenAI section has no python block"
    return found.group(1)


def test_the_readme_openai_snippet_runs(app: RunningApp) -> None:
    snippet = readme_snippet()
    assert QUICK_START_URL in snippet
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet.replace(QUICK_START_URL, f"{app.url}/v1"), "README.md", "exec"), {})
    output = printed.getvalue()
    assert "'gemma'" in output and "'clip_image'" in output, output
    assert output.count("a red circle on a white background") >= 2, output  # whole, streamed
    # Two partial images where the generator runs enough steps (20 in the offline profile;
    # the test profile's few steps leave room for one).
    assert output.count("image_generation.partial_image") >= 1, output
    assert "image_generation.completed" in output, output
