"""The access gate: which key a presented value is, compared in constant time, and the
usage counted under the caller's name."""

from __future__ import annotations

import secrets
import statistics
import time

from deployments.ingress.callers import AccessGate
from deployments.ingress.rate_limits import CallerBudgets
from vlgraph.access_config import AccessRules, ApiKey, hash_key

KEYS = {f"team-{n}": f"vlg-{secrets.token_urlsafe(32)}" for n in range(8)}
ADMIN = "the-admin-key-000000000000"


def gate() -> AccessGate:
    rules = AccessRules(
        mode="keys",
        keys=tuple(ApiKey(name=name, sha256=hash_key(key)) for name, key in KEYS.items()),
        admin_sha256=hash_key(ADMIN),
    )
    return AccessGate(rules, CallerBudgets(None, lease_s=60))


def test_every_key_is_found_by_its_value_and_nothing_else_is() -> None:
    checked = gate()
    for name, key in KEYS.items():
        assert checked.identify(key) == (ApiKey(name=name, sha256=hash_key(key)), False)
        assert checked.identify(key[:-1]) == (None, False)
        assert checked.identify(key + " ") == (None, False)
    assert checked.identify(ADMIN) == (None, True)
    assert checked.identify("") == (None, False)


def test_new_rules_apply_to_the_next_request() -> None:
    checked = gate()
    key = KEYS["team-0"]
    checked.rules = AccessRules(
        mode="keys", keys=(ApiKey(name="rotated", sha256=hash_key(key + "-new")),)
    )
    assert checked.identify(key) == (None, False)
    assert checked.identify(key + "-new")[0].name == "rotated"


def test_the_time_taken_does_not_depend_on_how_much_of_a_key_is_right() -> None:
    """A value sharing all but the last character of a real key takes as long to refuse as
    one sharing nothing (the gate compares hashes, all of them, every time). Medians of
    interleaved rounds; a comparison that stopped at the first differing character of the
    key would show the near miss taking longer."""
    checked = gate()
    real = KEYS["team-3"]
    near_miss = real[:-1] + ("A" if real[-1] != "A" else "B")
    far_miss = "x" * len(real)
    rounds = {near_miss: [], far_miss: [], real: []}
    for _ in range(3000):
        for value, times in rounds.items():
            started = time.perf_counter_ns()
            checked.identify(value)
            times.append(time.perf_counter_ns() - started)
    medians = {value: statistics.median(times) for value, times in rounds.items()}
    print({("near", "far", "real")[n]: m for n, m in enumerate(medians.values())})
    assert 0.75 < medians[near_miss] / medians[far_miss] < 1.33
    assert 0.75 < medians[real] / medians[far_miss] < 1.33
