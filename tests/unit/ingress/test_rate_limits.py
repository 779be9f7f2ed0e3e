"""Callers' budgets: the moving window per minute and the slots in flight, in process and in
a real redis-server shared by two budget holders (two ingress replicas), and Redis failing
open."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.ingress.rate_limits import CallerBudgets, RedisTarget
from tests.support.common import RedisServer, free_port
from vlgraph.access_config import RateLimit


def run(coroutine):
    return asyncio.run(coroutine)


# A live server's answers get a generous timeout: on a loaded machine 40 concurrent first
# calls can take longer than production's default, and a timeout fails open, which these
# tests would read as a broken limit. Failing open has its own test, against a dead port.
LIVE_REDIS_TIMEOUT_S = 10.0


def redis_budgets(server: RedisServer, namespace: str, on_fail_open=lambda: None):
    target = RedisTarget("127.0.0.1", server.port, 0, LIVE_REDIS_TIMEOUT_S, namespace=namespace)
    return CallerBudgets(target, lease_s=60, on_fail_open=on_fail_open)


def test_the_minute_window_refuses_past_its_rate_with_the_headers() -> None:
    async def scenario() -> None:
        budgets = CallerBudgets(None, lease_s=60)
        limit = RateLimit(requests_per_minute=3)
        admitted = [await budgets.admit("key:alice", limit) for _ in range(3)]
        assert all(a.allowed for a in admitted)
        assert [a.headers["RateLimit-Remaining"] for a in admitted] == ["2", "1", "0"]
        refused = await budgets.admit("key:alice", limit)
        assert not refused.allowed and refused.reason == "rate_limited"
        assert refused.headers["RateLimit-Limit"] == "3"
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert 1 <= int(refused.headers["RateLimit-Reset"]) <= 60
        assert refused.retry_after_s == int(refused.headers["RateLimit-Reset"])
        assert (await budgets.admit("key:bob", limit)).allowed  # another caller's budget

    run(scenario())


def test_slots_in_flight_are_given_back_on_release() -> None:
    async def scenario() -> None:
        budgets = CallerBudgets(None, lease_s=60)
        limit = RateLimit(max_in_flight=2)
        first, second = [await budgets.admit("key:alice", limit) for _ in range(2)]
        third = await budgets.admit("key:alice", limit)
        assert first.allowed and second.allowed and not third.allowed
        assert third.reason == "too_many_in_flight" and third.retry_after_s == 1
        await first.release()
        assert (await budgets.admit("key:alice", limit)).allowed

    run(scenario())


def test_two_holders_share_one_budget_through_redis(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        namespace = f"test-share-{time.time_ns()}"
        one, two = redis_budgets(redis_server, namespace), redis_budgets(redis_server, namespace)
        limit = RateLimit(requests_per_minute=4, max_in_flight=3)
        answers = [await (one, two)[n % 2].admit("key:alice", limit) for n in range(6)]
        assert [a.allowed for a in answers] == [True, True, True, False, False, False]
        assert {a.reason for a in answers[3:]} == {"too_many_in_flight", "rate_limited"}
        # The slot one holder gives back is the other's to take.
        await answers[0].release()
        again = await two.admit("key:bob", RateLimit(max_in_flight=1))
        assert (
            again.allowed and not (await one.admit("key:bob", RateLimit(max_in_flight=1))).allowed
        )
        await again.release()
        assert (await one.admit("key:bob", RateLimit(max_in_flight=1))).allowed

    run(scenario())


def test_a_lost_release_frees_its_slot_when_the_lease_ends(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        target = RedisTarget(
            "127.0.0.1", redis_server.port, 0, LIVE_REDIS_TIMEOUT_S, f"lease-{time.time_ns()}"
        )
        budgets = CallerBudgets(target, lease_s=1)
        limit = RateLimit(max_in_flight=1)
        assert (await budgets.admit("key:alice", limit)).allowed  # never released
        assert not (await budgets.admit("key:alice", limit)).allowed
        await asyncio.sleep(1.2)
        assert (await budgets.admit("key:alice", limit)).allowed

    run(scenario())


def test_a_redis_that_is_down_or_hung_admits_quickly_and_counts_it() -> None:
    async def scenario(server: RedisServer | None, port: int) -> None:
        failures: list[int] = []
        target = RedisTarget("127.0.0.1", port, 0, 0.25, f"down-{time.time_ns()}")
        budgets = CallerBudgets(target, lease_s=60, on_fail_open=lambda: failures.append(1))
        limit = RateLimit(requests_per_minute=1, max_in_flight=1)
        started = time.monotonic()
        answers = [await budgets.admit("key:alice", limit) for _ in range(20)]
        assert all(answer.allowed for answer in answers)
        for answer in answers:
            await answer.release()
        # One timeout, then Redis is left alone for a second: not one timeout per request.
        assert time.monotonic() - started < 1.5
        assert len(failures) >= 20

    run(scenario(None, free_port()))  # nothing listens
    hung = RedisServer()
    hung.start()
    try:
        hung.pause()
        run(scenario(hung, hung.port))
    finally:
        hung.resume()
        hung.stop()


@pytest.mark.parametrize("shared", [False, True])
def test_limits_are_exact_under_concurrency(redis_server: RedisServer, shared: bool) -> None:
    async def scenario() -> None:
        namespace = f"race-{time.time_ns()}"
        holders = (
            [redis_budgets(redis_server, namespace) for _ in range(2)]
            if shared
            else [CallerBudgets(None, lease_s=60)]
        )
        limit = RateLimit(requests_per_minute=10)
        answers = await asyncio.gather(
            *(holders[n % len(holders)].admit("key:alice", limit) for n in range(40))
        )
        assert sum(answer.allowed for answer in answers) == 10

    run(scenario())
