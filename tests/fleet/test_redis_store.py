"""The Redis budget store under what a fleet does to it: several processes at once, a replica SIGKILLed, Redis
unreachable, Redis restarted empty. Each against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.fleet import store_worker
from tokenctl.policy.redis_store import RedisStore
from tokenctl.policy.store import Claim, StoreUnavailable

ROOT = Path(__file__).resolve().parents[2]


def _worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.store_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )


def _store(url: str, prefix: str, **kwargs: Any) -> RedisStore:
    store = RedisStore(url, prefix=prefix, **{"timeout": 2.0, **kwargs})

    async def no_seeds() -> Any:
        return ({}, {}), time.time()

    store.on_lost_state(no_seeds)
    return store


@pytest.mark.parametrize("exact", [True, False], ids=["actual-equals-reserved", "actual-below-reserved"])
def test_three_processes_never_pass_a_shared_cap_and_the_counters_equal_what_was_settled(
    redis_server: Any, prefix: str, exact: bool
) -> None:
    """600 reservations from 3 processes against a team cap that fits 100 and user caps that fit 40 each."""
    workers = [_worker("contend", redis_server.url, prefix, str(i * 2 + (0 if exact else 1)), "200") for i in range(3)]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)

    async def counters() -> dict[str, tuple[int, int]]:
        store = _store(redis_server.url, prefix)
        names = ["user:u0", "user:u1", "user:u2", "team:t", "org"]
        totals = await store.totals(names, time.time())
        assert await store.open_reservations(time.time()) == 0
        await store.close()
        return dict(zip(names, totals))

    found = asyncio.run(counters())
    for name, (settled, reserved) in found.items():
        assert reserved == 0
        assert settled == sum(r["settled"].get(name, 0) for r in results), name  # nothing lost, nothing doubled
    assert found["team:t"][0] <= store_worker.TEAM_CAP
    assert all(found[f"user:u{i}"][0] <= store_worker.USER_CAP for i in range(3))
    admitted = sum(r["admitted"] for r in results)
    if exact:
        # Settled at what was reserved: a refusal is only right once the team has 100 x 1,000 in it.
        assert admitted == store_worker.TEAM_CAP // store_worker.AMOUNT
    else:
        assert admitted >= store_worker.TEAM_CAP // store_worker.AMOUNT
    # One round trip to reserve and one to settle each (plus the one-off seeding of a new process).
    assert sum(r["round_trips"] for r in results) <= 600 + admitted + 3 * 3


def test_a_killed_replicas_reservations_expire_and_a_live_ones_never_do(redis_server: Any, prefix: str) -> None:
    holder = _worker("hold", redis_server.url, prefix, "5")
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"

    async def scenario() -> None:
        store = _store(redis_server.url, prefix)
        now = time.time()
        claim = [Claim(("team:t",), store_worker.TEAM_CAP)]
        assert await store.reserve("mine", claim, 7, now + store_worker.TTL, now) is None
        deadline = time.monotonic() + 1.5  # 2.5 TTLs: both replicas renew
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            t = time.time()
            await store.renew(["mine"], t + store_worker.TTL, t)
        assert await store.totals(["team:t"], time.time()) == [(0, 5 * store_worker.AMOUNT + 7)]
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            t = time.time()
            await store.renew(["mine"], t + store_worker.TTL, t)
        assert await store.totals(["team:t"], time.time()) == [(0, 7)]  # the dead one's are gone, ours held
        assert await store.open_reservations(time.time()) == 1
        await store.close()

    try:
        asyncio.run(scenario())
    finally:
        holder.kill()


class _Blackhole:
    """A TCP server that accepts connections and never answers: a Redis behind a dead network path."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("where", ["closed-port", "no-answer"])
def test_an_unreachable_redis_fails_fast_within_the_timeout(where: str) -> None:
    hole = _Blackhole() if where == "no-answer" else None
    port = hole.port if hole else free_port()

    async def scenario() -> list[float]:
        store = _store(f"redis://127.0.0.1:{port}/0", "x:", timeout=0.2)
        took = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}"):
                now = time.time()
                await store.reserve("r", [Claim(("c",), 10)], 1, now + 5, now)
            took.append(time.monotonic() - start)
        assert await store.ping() is not None
        await store.close()
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        if hole:
            hole.close()
    assert max(took) < 0.2 * 2 + 0.3  # seeding and the call, each bounded by the timeout


def test_a_settlement_kept_through_a_blip_is_applied_once_redis_answers_again(redis_server: Any, prefix: str) -> None:
    claims = [Claim(("team:t",), 10_000)]

    async def scenario() -> None:
        store = _store(redis_server.url, prefix)
        now = time.time()
        assert await store.reserve("r1", claims, 500, now + 60, now) is None
        real_url = store.redis
        store.redis = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2).redis  # the network drops
        store._scripts = {n: store.redis.register_script(s.script) for n, s in store._scripts.items()}
        assert await store.settle("r1", claims, 321, time.time()) is None  # kept, not lost
        assert store.pending() == 1
        store.redis = real_url  # the network is back
        store._scripts = {n: real_url.register_script(s.script) for n, s in store._scripts.items()}
        assert await store.totals(["team:t"], time.time()) == [(321, 0)]
        assert store.pending() == 0
        # A settlement retried after its answer was lost is not counted twice.
        assert await store.settle("r1", claims, 321, time.time()) == [321]
        await store.close()

    asyncio.run(scenario())


def test_a_restarted_empty_redis_is_rebuilt_from_the_ledger_not_counted_from_zero(
    redis_server: Any, prefix: str
) -> None:
    claims = [Claim(("team:t",), 10_000)]
    ledger: dict[str, int] = {}  # what the ledger holds: every settled request, by counter

    async def from_ledger() -> Any:
        return (dict(ledger), {}), time.time()

    async def scenario() -> None:
        store = RedisStore(redis_server.url, prefix=prefix, timeout=1.0, reseed_wait=0.05)
        store.on_lost_state(from_ledger)
        await store.seed({}, {}, time.time())
        now = time.time()
        assert await store.reserve("r1", claims, 4_000, now + 60, now) is None
        assert await store.settle("r1", claims, 4_000, now) == [4_000]
        ledger["team:t"] = 4_000  # its row reached the ledger
        assert await store.reserve("r2", claims, 5_000, now + 60, now) is None  # in flight across the restart
        redis_server.kill()
        assert await store.settle("r2", claims, 2_000, time.time()) is None  # Redis down: kept
        with pytest.raises(StoreUnavailable):
            await store.reserve("r3", claims, 100, now + 60, now)  # fails closed, fast
        ledger["team:t"] += 2_000  # r2's row is written to the ledger whatever Redis does
        redis_server.start()  # back, empty
        t = time.time()
        # The first call finds no epoch, rebuilds from the ledger; the kept settlement is stale (the ledger has it).
        assert await store.totals(["team:t"], t) == [(6_000, 0)]
        assert store.pending() == 0
        refusal = await store.reserve("r4", claims, 4_001, t + 60, t)
        assert refusal is not None and refusal.settled == 6_000  # counted from the ledger, not from $0
        assert await store.reserve("r4", claims, 4_000, t + 60, t) is None
        await store.close()

    asyncio.run(scenario())


def test_seeding_from_many_replicas_at_once_does_not_multiply_spend(redis_server: Any, prefix: str) -> None:
    async def scenario() -> None:
        stores = [_store(redis_server.url, prefix) for _ in range(8)]
        now = time.time()
        await asyncio.gather(*(s.seed({"team:t": 2_500}, {"team:t": now + 3600}, now) for s in stores))
        assert await stores[0].totals(["team:t"], now) == [(2_500, 0)]
        assert len({s.epoch for s in stores}) == 1
        for s in stores:
            await s.close()

    asyncio.run(scenario())
