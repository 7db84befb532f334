"""The budget store shared by replicas: the ``SpendStore`` interface on Redis, each operation one server-side
script, so it is atomic across every replica exactly as the in-process store is within one process.

Keys (under ``store.key_prefix``, default ``tokenctl:``):

- ``epoch``: set when the counters are seeded from the ledger. A Redis that restarted without its data has
  none, and every budget operation then answers ``unseeded`` instead of counting from $0: the replica that
  meets it first rebuilds the counters from the ledger (``on_lost_state``) and carries on.
- ``c:<counter>``: hash ``s`` (settled) and ``r`` (reserved), integer nano-USD; expires a while after its
  window is over.
- ``r:<reservation id>``: hash ``a`` (amount) and ``h`` (the counters it holds, JSON); ``exp``: sorted set of
  reservation ids by deadline, in Redis's own clock. A replica renews the reservations of its running
  requests, so only a dead replica's run out.
- ``d:<reservation id>``: a settlement already applied (a retried settlement is not counted twice).
- ``m:<marker>``: a notification threshold already crossed; ``t:<bucket>``: a rate-limit bucket;
  ``u:<set>``: distinct members seen in a window (sessions per first prompt, for loop rules); ``w:<name>``:
  amounts per minute (spend per hour, for loop rules).

A request costs one round trip at admission (``reserve``) and one at settlement (``settle``, which also
answers the totals for notification thresholds); renewals of all running requests go in one call per
interval. Every call is bounded by ``store.timeout_ms``: an unreachable Redis fails the request closed fast
(503 in the client's dialect), never hangs it. A settlement that cannot reach Redis is kept and applied
before the next operation that can, so no spend is lost to a network blip.

Use a standalone Redis (or a primary with replicas) with ``maxmemory-policy noeviction``: a counter evicted
under memory pressure would be spend forgotten. Amounts are exact up to 2^53 nano-USD ($9 million) per
counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tokenctl.policy.store import Claim, Refusal, Seeder, StoreUnavailable

log = logging.getLogger("tokenctl")

UNSEEDED = "unseeded"
COUNTER_GRACE_SECONDS = 3600  # a counter outlives its window by this much (status of a window just ended)
MARKER_SECONDS = 40 * 86400  # longer than any calendar window
SETTLED_MEMORY_SECONDS = 900  # how long a settlement is remembered, so its retry is not counted twice
RESEED_RETRY_SECONDS = 1.0  # after a failed rebuild, requests fail fast for this long before the next try

_PRELUDE = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function seeded()
  return redis.call('EXISTS', P .. 'epoch') == 1
end
local function release(id)
  local key = P .. 'r:' .. id
  local held = redis.call('HMGET', key, 'a', 'h')
  redis.call('ZREM', P .. 'exp', id)
  if not held[1] then return end
  redis.call('DEL', key)
  for _, head in ipairs(cjson.decode(held[2])) do
    local counter = P .. 'c:' .. head
    if redis.call('EXISTS', counter) == 1 then
      redis.call('HINCRBY', counter, 'r', '-' .. held[1])
    end
  end
end
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now_ms(), 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do release(id) end
end
local function keep_for(counter, ttl)
  if ttl == '0' then redis.call('PERSIST', counter) else redis.call('EXPIRE', counter, ttl) end
end
local function sum(first, count)
  local s, r = 0, 0
  for j = first, first + count - 1 do
    local v = redis.call('HMGET', P .. 'c:' .. ARGV[j], 's', 'r')
    s = s + (tonumber(v[1]) or 0)
    r = r + (tonumber(v[2]) or 0)
  end
  return s, r
end
-- Reserve and extend: ARGV[5] claims from ARGV[6] on (limit, counter ttl, n counters, counters). If every
-- claim has room for `amount` more, add it to each claim's first counter and answer those counters; else
-- answer nil and {claim index, settled, reserved} of the first that has none.
local function hold(amount)
  local heads, ttls, i = {}, {}, 6
  for c = 1, tonumber(ARGV[5]) do
    local limit, ttl, k = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local s, r = sum(i + 3, k)
    if limit ~= '' and s + r + tonumber(amount) > tonumber(limit) then return nil, {c - 1, s, r} end
    heads[c], ttls[c] = ARGV[i + 3], ttl
    i = i + 3 + k
  end
  for c, head in ipairs(heads) do
    local counter = P .. 'c:' .. head
    redis.call('HINCRBY', counter, 'r', amount)
    keep_for(counter, ttls[c])
  end
  return heads, nil
end
"""

# ARGV: prefix, id, amount, ttl_ms, n claims, then per claim: limit ('' = none), counter ttl, n counters, counters.
# Answers {epoch} when reserved, {epoch, claim index, settled, reserved} when refused, or 'unseeded'.
_RESERVE = """
if not seeded() then return 'unseeded' end
sweep()
local epoch = redis.call('GET', P .. 'epoch')
local id, amount = ARGV[2], ARGV[3]
if redis.call('EXISTS', P .. 'r:' .. id) == 1 then return {epoch} end
local heads, refused = hold(amount)
if refused then return {epoch, refused[1], refused[2], refused[3]} end
redis.call('HSET', P .. 'r:' .. id, 'a', amount, 'h', cjson.encode(heads))
redis.call('DEL', P .. 'd:' .. id)  -- a new reservation under this id (a fallback's) settles anew
redis.call('ZADD', P .. 'exp', now_ms() + tonumber(ARGV[4]), id)
return {epoch}
"""

# ARGV as _RESERVE, with the reservation's new total as the amount. Checks and adds only the difference to what
# it holds (a retry adds nothing); a reservation that expired is made again at the total.
_EXTEND = """
if not seeded() then return 'unseeded' end
sweep()
local epoch = redis.call('GET', P .. 'epoch')
local id, total = ARGV[2], tonumber(ARGV[3])
local key = P .. 'r:' .. id
local held = tonumber(redis.call('HGET', key, 'a') or '0')
local more = total - held
if more <= 0 then return {epoch} end
local heads, refused = hold(more)
if refused then return {epoch, refused[1], refused[2], refused[3]} end
redis.call('HSET', key, 'a', total, 'h', cjson.encode(heads))
if held == 0 then
  redis.call('DEL', P .. 'd:' .. id)
  redis.call('ZADD', P .. 'exp', now_ms() + tonumber(ARGV[4]), id)
end
return {epoch}
"""

# ARGV: prefix, id, amount, epoch ('' = a live settlement, applied to whatever epoch is current), n claims,
# then per claim: counter ttl, n counters, counters. Answers {epoch, each claim's settled total}, 'unseeded' or
# 'stale' (a kept settlement from before the counters were rebuilt: the ledger already counts it).
_SETTLE = """
if not seeded() then return 'unseeded' end
local epoch = redis.call('GET', P .. 'epoch')
if ARGV[4] ~= '' and epoch ~= ARGV[4] then return 'stale' end
local id, amount = ARGV[2], ARGV[3]
local fresh = redis.call('SET', P .. 'd:' .. id, '1', 'NX', 'EX', SETTLED_MEMORY)
release(id)
local totals, i = {epoch}, 6
for c = 1, tonumber(ARGV[5]) do
  local ttl, k = ARGV[i], tonumber(ARGV[i + 1])
  local counter = P .. 'c:' .. ARGV[i + 2]
  if fresh then
    redis.call('HINCRBY', counter, 's', amount)
    keep_for(counter, ttl)
  end
  local s, _ = sum(i + 2, k)
  totals[c + 1] = s
  i = i + 2 + k
end
return totals
""".replace("SETTLED_MEMORY", str(SETTLED_MEMORY_SECONDS))

# ARGV: prefix, counters. Answers settled, reserved for each.
_TOTALS = """
if not seeded() then return 'unseeded' end
sweep()
local out = {}
for j = 2, #ARGV do
  local v = redis.call('HMGET', P .. 'c:' .. ARGV[j], 's', 'r')
  out[#out + 1] = tonumber(v[1]) or 0
  out[#out + 1] = tonumber(v[2]) or 0
end
return out
"""

# ARGV: prefix, new epoch, then name, amount, ttl triples. Sets absent counters; answers the epoch in force.
_SEED = """
for j = 3, #ARGV, 3 do
  local counter = P .. 'c:' .. ARGV[j]
  if redis.call('EXISTS', counter) == 0 then
    redis.call('HSET', counter, 's', ARGV[j + 1], 'r', 0)
    keep_for(counter, ARGV[j + 2])
  end
end
redis.call('SET', P .. 'epoch', ARGV[2], 'NX')
return redis.call('GET', P .. 'epoch')
"""

# ARGV: prefix, ttl_ms, ids
_RENEW = """
local deadline = now_ms() + tonumber(ARGV[2])
for j = 3, #ARGV do redis.call('ZADD', P .. 'exp', 'XX', deadline, ARGV[j]) end
return 0
"""

_OPEN = """
sweep()
return redis.call('ZCARD', P .. 'exp')
"""

# ARGV: prefix, at most this many reservations looked at
_RESERVED_COUNTERS = """
sweep()
local seen, out = {}, {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'exp', 0, tonumber(ARGV[2]) - 1)) do
  local heads = redis.call('HGET', P .. 'r:' .. id, 'h')
  if heads then
    for _, head in ipairs(cjson.decode(heads)) do
      if not seen[head] then seen[head] = true; out[#out + 1] = head end
    end
  end
end
return out
"""

# ARGV: prefix, set name, member, window seconds, now. Answers the distinct members seen within the window.
_DISTINCT = """
local key = P .. 'u:' .. ARGV[2]
local now, window = tonumber(ARGV[5]), tonumber(ARGV[4])
redis.call('ZADD', key, now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
redis.call('EXPIRE', key, math.ceil(window) + 60)
return redis.call('ZCARD', key)
"""

# ARGV: prefix, name, amount, window minutes, now. Adds the amount to the current minute's field and answers the
# sum of the fields within the window (older ones are deleted).
_WINDOW_SUM = """
local key = P .. 'w:' .. ARGV[2]
local amount, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local minute = math.floor(tonumber(ARGV[5]) / 60)
if amount > 0 then redis.call('HINCRBY', key, tostring(minute), amount) end
local total = 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  if tonumber(fields[i]) <= minute - window then redis.call('HDEL', key, fields[i])
  else total = total + tonumber(fields[i + 1]) end
end
if amount > 0 then redis.call('EXPIRE', key, window * 60 + 60) end
return tostring(total)
"""

# ARGV: prefix, bucket, per_minute, amount, now, force. Answers the seconds to wait ('0' = taken).
_TAKE_RATE = """
local key = P .. 't:' .. ARGV[2]
local per, amount, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rate = per / 60.0
local v = redis.call('HMGET', key, 'k', 't')
local tokens, last = tonumber(v[1]) or per, tonumber(v[2]) or now
tokens = math.min(per, tokens + math.max(0, now - last) * rate)
local needed = math.min(amount, per)
local wait = 0
if ARGV[6] == '1' or tokens >= needed then tokens = tokens - amount else wait = (needed - tokens) / rate end
redis.call('HSET', key, 'k', string.format('%.6f', tokens), 't', string.format('%.6f', now))
redis.call('EXPIRE', key, 180)
return string.format('%.6f', wait)
"""


@dataclass(slots=True)
class _PendingSettlement:
    epoch: str  # the epoch it was made in
    args: list[Any]  # the settle script's ARGV, that epoch among them


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        prefix: str = "tokenctl:",
        reseed_wait: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.prefix = prefix
        self.reseed_wait = reseed_wait  # before rebuilding: lets replicas' ledger writers catch up
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,  # more requests than that wait their turn (within the timeout)
            timeout=None,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # A connection Redis dropped (it restarted) is replaced at once and the call sent again, so no request
            # fails for a stale pooled connection; a timeout is not retried (that would double the wait). Reserve,
            # settle, renew and seed are idempotent, so a call sent twice counts once (a rate bucket charged twice
            # errs on the strict side).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
        )
        self.redis = Redis(connection_pool=pool)
        self._scripts = {
            name: self.redis.register_script(_PRELUDE + body)
            for name, body in (
                ("reserve", _RESERVE),
                ("extend", _EXTEND),
                ("settle", _SETTLE),
                ("totals", _TOTALS),
                ("seed", _SEED),
                ("renew", _RENEW),
                ("open", _OPEN),
                ("reserved_counters", _RESERVED_COUNTERS),
                ("take_rate", _TAKE_RATE),
                ("distinct", _DISTINCT),
                ("window_sum", _WINDOW_SUM),
            )
        }
        self.epoch: str | None = None  # the epoch this replica last seeded or saw
        self._seeder: Seeder | None = None
        self._reseed_lock = asyncio.Lock()
        self._reseed_failed_at = -math.inf
        self._reseed_error = ""
        self._pending: list[_PendingSettlement] = []
        self._pending_lock = asyncio.Lock()
        self.round_trips = 0  # calls sent to Redis (bench and tests count them)
        self.observe: Callable[[str, float], None] = lambda op, seconds: None  # each call's latency (metrics)

    # -- the interface ----------------------------------------------------------------------------

    async def reserve(
        self, reservation_id: str, claims: Sequence[Claim], amount: int, expires_at: float, now: float
    ) -> Refusal | None:
        return await self._reserve_op("reserve", reservation_id, claims, amount, expires_at, now)

    async def extend(
        self, reservation_id: str, claims: Sequence[Claim], total: int, expires_at: float, now: float
    ) -> Refusal | None:
        return await self._reserve_op("extend", reservation_id, claims, total, expires_at, now)

    async def _reserve_op(
        self, script: str, reservation_id: str, claims: Sequence[Claim], amount: int, expires_at: float, now: float
    ) -> Refusal | None:
        await self._apply_pending()
        args: list[Any] = [reservation_id, amount, _ms(expires_at - now), len(claims)]
        for claim in claims:
            limit = "" if claim.limit is None else claim.limit
            args += [limit, _counter_ttl(claim, now), len(claim.counters), *claim.counters]
        try:
            answer = await self._seeded(script, args)
        except StoreUnavailable:
            # It may have been applied before the answer was lost: release it when Redis is back.
            self._keep(reservation_id, claims, 0, now)
            raise
        self.epoch = answer[0]
        if len(answer) == 1:
            return None
        index, settled, reserved = (int(v) for v in answer[1:])
        return Refusal(index, settled, reserved)

    async def settle(self, reservation_id: str, claims: Sequence[Claim], amount: int, now: float) -> list[int] | None:
        args = self._settle_args(reservation_id, claims, amount, now, epoch="")
        try:
            await self._apply_pending()
            answer = await self._seeded("settle", args)
        except StoreUnavailable:
            log.warning("budget store unreachable: settlement of %s kept to apply when it is back", reservation_id)
            self._keep(reservation_id, claims, amount, now)
            return None
        self.epoch = answer[0]
        return [int(v) for v in answer[1:]]

    async def totals(self, counters: Sequence[str], now: float) -> list[tuple[int, int]]:
        await self._apply_pending()
        flat = await self._seeded("totals", list(counters))
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def seed(self, settled: Mapping[str, int], drop_after: Mapping[str, float | None], now: float) -> None:
        args: list[Any] = [secrets.token_hex(8)]
        for name, amount in settled.items():
            args += [name, amount, _ttl(drop_after.get(name), now)]
        self.epoch = await self._call("seed", args)

    async def first_crossing(self, marker: str) -> bool:
        key = self.prefix + "m:" + marker
        return bool(await self._bounded(self.redis.set(key, "1", nx=True, ex=MARKER_SECONDS)))

    async def take_rate(self, bucket: str, per_minute: int, amount: int, now: float, *, force: bool = False) -> float:
        answer = await self._call("take_rate", [bucket, per_minute, amount, f"{now:.6f}", "1" if force else "0"])
        return float(answer)

    async def open_reservations(self, now: float) -> int:
        return int(await self._call("open", []))

    async def distinct_count(self, name: str, member: str, window: float, now: float) -> int:
        return int(await self._call("distinct", [name, member, f"{window:.3f}", f"{now:.6f}"]))

    async def window_sum(self, name: str, amount: int, window_minutes: int, now: float) -> int:
        return int(await self._call("window_sum", [name, amount, window_minutes, f"{now:.6f}"]))

    async def reserved_counters(self, now: float) -> list[str]:
        return list(await self._call("reserved_counters", [10_000]))

    async def renew(self, reservation_ids: Sequence[str], expires_at: float, now: float) -> None:
        ttl = _ms(expires_at - now)
        for start in range(0, len(reservation_ids), 5_000):
            await self._call("renew", [ttl, *reservation_ids[start : start + 5_000]])

    def on_lost_state(self, seeder: Seeder) -> None:
        self._seeder = seeder

    async def ping(self) -> str | None:
        try:
            await self._bounded(self.redis.ping())
        except StoreUnavailable as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def pending(self) -> int:
        """Settlements waiting for Redis to be reachable again."""
        return len(self._pending)

    # -- calls ------------------------------------------------------------------------------------

    async def _bounded(self, awaitable: Any, op: str = "other") -> Any:
        self.round_trips += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await awaitable
            self.observe(op, time.perf_counter() - started)
            return answer
        except TimeoutError as exc:
            raise StoreUnavailable(f"Redis at {_where(self.url)} did not answer within {self.timeout:g} s") from exc
        except (OSError, RedisConnectionError) as exc:
            raise StoreUnavailable(f"Redis at {_where(self.url)} is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StoreUnavailable(f"Redis at {_where(self.url)} failed: {exc}") from exc

    async def _call(self, script: str, args: list[Any]) -> Any:
        return await self._bounded(self._scripts[script](keys=[], args=[self.prefix, *args]), script)

    async def _seeded(self, script: str, args: list[Any]) -> Any:
        """A call that needs the counters: if Redis has lost them, rebuild them from the ledger and call again.
        A replica that could not seed at start (Redis was down) seeds before its first such call."""
        if self.epoch is None:
            await self._reseed(lost=False)
        answer = await self._call(script, args)
        if answer == UNSEEDED:
            await self._reseed()
            answer = await self._call(script, args)
            if answer == UNSEEDED:
                raise StoreUnavailable("the budget counters in Redis were lost again while being rebuilt")
        return answer

    async def _reseed(self, lost: bool = True) -> None:
        async with self._reseed_lock:
            if lost and await self._bounded(self.redis.exists(self.prefix + "epoch")):
                return  # another replica (or another request here) rebuilt them meanwhile
            if not lost and self.epoch is not None:
                return
            if self._seeder is None:
                raise StoreUnavailable(
                    "the budget counters in Redis are lost and no ledger is attached to rebuild them"
                )
            if time.monotonic() - self._reseed_failed_at < RESEED_RETRY_SECONDS:
                raise StoreUnavailable(f"the budget counters could not be seeded from the ledger: {self._reseed_error}")
            if lost:
                log.warning("budget counters missing in Redis (restarted?): rebuilding them from the ledger")
            try:
                if lost:
                    await asyncio.sleep(self.reseed_wait)
                (settled, drops), now = await self._seeder()
                await self.seed(settled, drops, now)
                self._pending = [p for p in self._pending if p.epoch == self.epoch]  # the rest: in the ledger
            except Exception as exc:
                self._reseed_failed_at = time.monotonic()
                self._reseed_error = str(exc)
                raise
            log.warning("budget counters seeded from the ledger: %d counters", len(settled))

    # -- settlements kept while Redis is unreachable ----------------------------------------------

    def _settle_args(
        self, reservation_id: str, claims: Sequence[Claim], amount: int, now: float, *, epoch: str
    ) -> list[Any]:
        args: list[Any] = [reservation_id, amount, epoch, len(claims)]
        for claim in claims:
            args += [_counter_ttl(claim, now), len(claim.counters), *claim.counters]
        return args

    def _keep(self, reservation_id: str, claims: Sequence[Claim], amount: int, now: float) -> None:
        """Applied later only in the epoch it was made in: if Redis lost its counters meanwhile, they are rebuilt
        from the ledger, which has this request's row by then."""
        if self.epoch is None:
            return  # never seeded: the rebuild from the ledger will count it
        self._pending.append(
            _PendingSettlement(self.epoch, self._settle_args(reservation_id, claims, amount, now, epoch=self.epoch))
        )

    async def _apply_pending(self) -> None:
        """Kept settlements first, in order, so counters are whole before anything reads or reserves against them."""
        if not self._pending:
            return
        async with self._pending_lock:
            while self._pending:
                answer = await self._call("settle", self._pending[0].args)
                if answer == UNSEEDED:
                    return  # the counters are gone: the rebuild from the ledger counts these
                self._pending.pop(0)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _ttl(drop_after: float | None, now: float) -> int:
    """Seconds a counter is kept: until its window is over, plus a grace; 0 = for good (a budget that never resets)."""
    if drop_after is None:
        return 0
    return max(60, int(drop_after - now) + COUNTER_GRACE_SECONDS)


def _counter_ttl(claim: Claim, now: float) -> int:
    return _ttl(claim.drop_after, now)


def _where(url: str) -> str:
    """The URL without its password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url
