"""The budget store interface, the same tests against the in-process store and the Redis one (a real server):
enforcement cannot tell which it talks to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tokenctl.policy.redis_store import RedisStore
from tokenctl.policy.store import Claim, MemoryStore, SpendStore


async def _no_seeds() -> Any:
    return ({}, {}), time.time()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_server: Any, prefix: str) -> AsyncIterator[SpendStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    shared = RedisStore(redis_server.url, prefix=prefix, timeout=1.0)
    shared.on_lost_state(_no_seeds)
    await shared.seed({}, {}, time.time())
    yield shared
    await shared.close()


async def test_refuses_atomically_when_any_claim_would_go_over(store: SpendStore) -> None:
    now = time.time()
    claims = [Claim(("a",), 100), Claim(("b",), 50), Claim(("c",), None)]
    assert await store.reserve("r1", claims, 40, now + 60, now) is None
    refusal = await store.reserve("r2", claims, 20, now + 60, now)
    assert refusal is not None and (refusal.claim, refusal.settled, refusal.reserved) == (1, 0, 40)
    assert await store.totals(["a", "b", "c"], now) == [(0, 40), (0, 40), (0, 40)]  # r2 took nothing


async def test_settle_moves_the_reservation_to_the_actual_spend_and_answers_the_totals(store: SpendStore) -> None:
    now = time.time()
    claims = [Claim(("day:2", "day:1"), 1_000), Claim(("team",), None)]
    await store.seed({"day:1": 300}, {}, now)  # an earlier bucket of a rolling window
    assert await store.reserve("r1", claims, 500, now + 60, now) is None
    refusal = await store.reserve("r2", claims, 201, now + 60, now)
    assert refusal is not None and (refusal.settled, refusal.reserved) == (300, 500)
    assert await store.settle("r1", claims, 120, now) == [420, 120]
    assert await store.totals(["day:2", "day:1", "team"], now) == [(120, 0), (300, 0), (120, 0)]
    assert await store.open_reservations(now) == 0
    assert await store.reserve("r2", claims, 580, now + 60, now) is None  # exactly to the limit
    assert await store.reserve("r3", claims, 1, now + 60, now) is not None


async def test_settling_an_expired_reservation_still_counts_the_spend(store: SpendStore) -> None:
    now = time.time()
    claims = [Claim(("x",), 1_000)]
    assert await store.reserve("gone", claims, 800, now + 0.2, now) is None
    await asyncio.sleep(0.4)
    later = time.time()
    assert await store.totals(["x"], later) == [(0, 0)]  # expired: its budget is free again
    assert await store.open_reservations(later) == 0
    await store.settle("gone", claims, 30, later)  # the request finished after all
    assert await store.totals(["x"], later) == [(30, 0)]


async def test_renewed_reservations_outlive_their_first_deadline(store: SpendStore) -> None:
    now = time.time()
    claims = [Claim(("x",), 1_000)]
    await store.reserve("live", claims, 100, now + 0.3, now)
    await store.reserve("dead", claims, 200, now + 0.3, now)
    for _ in range(4):
        await asyncio.sleep(0.15)
        t = time.time()
        await store.renew(["live"], t + 0.3, t)
    t = time.time()
    assert await store.totals(["x"], t) == [(0, 100)]
    assert sorted(await store.reserved_counters(t)) == ["x"]
    assert await store.open_reservations(t) == 1


async def test_seed_sets_only_counters_the_store_does_not_have(store: SpendStore) -> None:
    now = time.time()
    await store.seed({"a": 5, "b": 7}, {"a": now + 3600, "b": None}, now)
    await store.seed({"a": 50, "b": 70, "c": 9}, {}, now)  # a second replica seeding: adds only c
    assert await store.totals(["a", "b", "c", "d"], now) == [(5, 0), (7, 0), (9, 0), (0, 0)]


async def test_a_notification_marker_fires_once(store: SpendStore) -> None:
    assert await store.first_crossing("n:b:x:80") is True
    assert await store.first_crossing("n:b:x:80") is False
    assert await store.first_crossing("n:b:x:100") is True


async def test_rate_bucket_refills_continuously_and_forced_takes_go_negative(store: SpendStore) -> None:
    now = 1_000.0
    assert await store.take_rate("tpm:x", 600, 600, now) == 0  # full bucket
    wait = await store.take_rate("tpm:x", 600, 100, now)
    assert wait == pytest.approx(10.0)  # 10 tokens a second
    assert await store.take_rate("tpm:x", 600, 100, now + 10) == 0
    assert await store.take_rate("tpm:x", 600, 300, now + 10, force=True) == 0  # output counted after the fact
    assert await store.take_rate("tpm:x", 600, 1, now + 10) == pytest.approx(30.1)


async def test_distinct_members_are_counted_within_their_window(store: SpendStore) -> None:
    now = 5_000.0
    assert await store.distinct_count("fp:k", "s1", 60, now) == 1
    assert await store.distinct_count("fp:k", "s1", 60, now + 1) == 1  # the same member again
    assert await store.distinct_count("fp:k", "s2", 60, now + 2) == 2
    assert await store.distinct_count("fp:other", "s1", 60, now + 2) == 1
    assert await store.distinct_count("fp:k", "s3", 60, now + 61.5) == 2  # s1 fell out of the window


async def test_window_sums_are_kept_per_minute_and_forget_what_left_the_window(store: SpendStore) -> None:
    now = 60_000.0  # the start of a minute
    assert await store.window_sum("spend:k", 0, 60, now) == 0  # reading an empty window
    assert await store.window_sum("spend:k", 5, 60, now) == 5
    assert await store.window_sum("spend:k", 7, 60, now + 59) == 12  # the same minute
    assert await store.window_sum("spend:k", 1, 60, now + 60 * 30) == 13
    assert await store.window_sum("spend:other", 2, 60, now + 60 * 30) == 2
    assert await store.window_sum("spend:k", 0, 60, now + 60 * 59 + 59) == 13  # 60 minutes: still inside
    assert await store.window_sum("spend:k", 0, 60, now + 60 * 60) == 1  # the first minute left the window
    assert await store.window_sum("spend:k", 0, 60, now + 60 * 90) == 0


async def test_the_memory_store_forgets_settled_reservations_at_once() -> None:
    """Every reservation pushed an entry onto the expiry heap that settling left there until the minute's prune:
    200k requests a minute held 200k entries. The heap now stays within a constant factor of the live ones."""
    store, now = MemoryStore(), 1_000.0
    claims = [Claim(("team",), None)]
    for i in range(50_000):
        await store.reserve(f"r{i}", claims, 1, now + 900, now)
        await store.renew([f"r{i}"], now + 1_000, now)  # a renewal pushes a second entry
        await store.settle(f"r{i}", claims, 1, now)
    assert len(store._expiry) <= 1024 + 4
    assert await store.totals(["team"], now) == [(50_000, 0)]
    await store.reserve("live", claims, 3, now + 900, now)
    await store.renew(["live"], now + 2_000, now)
    for i in range(5_000):  # churn does not drop the live reservation's newest deadline
        await store.reserve(f"s{i}", claims, 1, now + 900, now)
        await store.settle(f"s{i}", claims, 1, now)
    assert await store.totals(["team"], now + 1_500) == [(55_000, 3)]  # not expired at its first deadline
    assert await store.totals(["team"], now + 2_000) == [(55_000, 0)]


async def test_a_reservation_grows_to_a_new_total_within_the_limits(store: SpendStore) -> None:
    now = time.time()
    claims = [Claim(("team",), 100), Claim(("org",), None)]
    assert await store.reserve("s1", claims, 30, now + 60, now) is None
    assert await store.reserve("s2", claims, 40, now + 60, now) is None
    assert await store.extend("s1", claims, 50, now + 60, now) is None  # +20: 90 of 100
    assert await store.extend("s1", claims, 50, now + 60, now) is None  # a retry adds nothing
    assert await store.totals(["team", "org"], now) == [(0, 90), (0, 90)]
    refusal = await store.extend("s1", claims, 61, now + 60, now)  # +11 would make 101
    assert refusal is not None and (refusal.claim, refusal.settled, refusal.reserved) == (0, 0, 90)
    assert await store.totals(["team"], now) == [(0, 90)]  # unchanged
    assert await store.settle("s1", claims, 45, now) == [45, 45]  # settling drops the whole 50
    assert await store.totals(["team"], now) == [(45, 40)]
    assert await store.extend("gone", claims, 10, now + 60, now) is None  # none held: made at the total
    assert await store.totals(["team"], now) == [(45, 50)]
