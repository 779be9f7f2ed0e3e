"""Fresh seeds for fuzz and property tests: a new one each run, printed by the test, and
``$VLGRAPH_FUZZ_SEED`` to replay one."""

from __future__ import annotations

import os
import random

import pytest

SEED_VARIABLE = "VLGRAPH_FUZZ_SEED"


def fresh_seed() -> int:
    """``$VLGRAPH_FUZZ_SEED``, else a seed nobody chose (from the OS's randomness)."""
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    if chosen:
        try:
            return int(chosen)
        except ValueError:
            pytest.fail(f"{SEED_VARIABLE}={chosen!r} is not an integer seed")
    return random.SystemRandom().randrange(2**32)
