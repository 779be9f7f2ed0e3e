"""Figures the reliability and security suites measure (cases tried, load held, faults
survived), written where docs/guarantees.md and a reader can find them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tests.support.common import REPO_ROOT


def guarantees_dir() -> Path:
    """``$VLGRAPH_GUARANTEES_DIR``, else ``test-artifacts/guarantees`` in the repository."""
    folder = os.environ.get("VLGRAPH_GUARANTEES_DIR")
    return Path(folder) if folder else REPO_ROOT / "test-artifacts" / "guarantees"


def record_figures(suite: str, command: str, **figures: Any) -> dict[str, Any]:
    """Write ``figures`` and the command that reproduces them to ``{suite}.json`` (one file
    per suite, rewritten each run) and print them (``pytest -s`` shows the line)."""
    folder = guarantees_dir()
    folder.mkdir(parents=True, exist_ok=True)
    report = {"suite": suite, "command": command, **figures}
    (folder / f"{suite}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"[guarantees] {json.dumps(report, sort_keys=True)}")
    return report


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` of 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
