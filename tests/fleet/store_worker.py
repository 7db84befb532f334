"""A replica's budget traffic in its own process, for the fleet tests: ``python -m tests.fleet.store_worker``.

``contend URL PREFIX SEED N``: N reservations (20 at a time) of 1,000 nano-USD for users u0..u2 of team t
against the caps in ``CLAIMS``, each settled at a random actual (``SEED`` even: exactly the reservation).
Prints a JSON line: admitted count, settled sums per counter.

``hold URL PREFIX N``: holds N reservations of a running request and renews them each 0.2 s, as a live
replica does; prints ``held`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from tokenctl.policy.redis_store import RedisStore
from tokenctl.policy.store import Claim

USER_CAP = 40_000
TEAM_CAP = 100_000
AMOUNT = 1_000
TTL = 0.6


def claims(user: str) -> list[Claim]:
    return [Claim((f"user:{user}",), USER_CAP), Claim(("team:t",), TEAM_CAP), Claim(("org",), None)]


async def _no_seeds() -> object:
    return ({}, {}), time.time()


async def contend(url: str, prefix: str, seed: int, count: int) -> None:
    store = RedisStore(url, prefix=prefix, timeout=5.0)
    store.on_lost_state(_no_seeds)  # type: ignore[arg-type]
    rng = random.Random(seed)
    settled: dict[str, int] = {}
    admitted = 0
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        nonlocal admitted
        user = f"u{rng.randrange(3)}"
        rid = f"p{seed}-{i}"
        async with gate:
            now = time.time()
            refusal = await store.reserve(rid, claims(user), AMOUNT, now + 30, now)
            if refusal is not None:
                return
            admitted += 1
            await asyncio.sleep(rng.random() * 0.01)  # the request runs
            actual = AMOUNT if seed % 2 == 0 else rng.randrange(1, AMOUNT + 1)
            await store.settle(rid, claims(user), actual, time.time())
            for name in (f"user:{user}", "team:t", "org"):
                settled[name] = settled.get(name, 0) + actual

    await asyncio.gather(*(one(i) for i in range(count)))
    await store.close()
    print(json.dumps({"admitted": admitted, "settled": settled, "round_trips": store.round_trips}), flush=True)


async def hold(url: str, prefix: str, count: int) -> None:
    store = RedisStore(url, prefix=prefix, timeout=5.0)
    store.on_lost_state(_no_seeds)  # type: ignore[arg-type]
    now = time.time()
    ids = [f"held-{i}" for i in range(count)]
    for rid in ids:
        assert await store.reserve(rid, [Claim(("team:t",), TEAM_CAP)], AMOUNT, now + TTL, now) is None
    print("held", flush=True)
    while True:
        await asyncio.sleep(0.2)
        now = time.time()
        await store.renew(ids, now + TTL, now)


def main() -> None:
    mode, url, prefix, *rest = sys.argv[1:]
    if mode == "contend":
        asyncio.run(contend(url, prefix, int(rest[0]), int(rest[1])))
    else:
        asyncio.run(hold(url, prefix, int(rest[0])))


if __name__ == "__main__":
    main()
