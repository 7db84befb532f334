"""Where budget counters, reservations and rate-limit buckets live: one small interface.

Amounts are integer nano-USD, so every store (this in-memory one, a PostgreSQL or Redis one
for several replicas) adds exactly. The enforcement logic (``policy.budget``) only talks to
``SpendStore``; a shared store slots in by implementing these methods atomically:

- ``reserve``: for every claim, check ``settled + reserved + amount <= limit`` over the claim's
  counters; if all hold, add ``amount`` to the reserved part of each claim's first counter, all at
  once, else change nothing and say which claim refused.
- ``extend``: grow a reservation to a new total (a stream whose output outgrew what it reserved), with the
  same check for the difference; a retried call with the same total adds nothing.
- ``settle``: drop the reservation (if it has not expired) and add the actual amount to the
  settled part of each claim's first counter. Settling an expired reservation still counts the spend.
  It answers each claim's settled total afterwards (for notification thresholds), or None when the
  store could not be reached and the settlement is kept to be applied when it can.
- reservations expire at ``expires_at``, so a crashed request cannot hold budget forever; ``renew`` moves
  the expiry of the reservations of requests still running, so a live request's never expires.
- ``seed`` sets a counter's settled amount only if the store does not have that counter yet
  (idempotent, so N replicas seeding at once cannot multiply spend).
- ``on_lost_state`` gives a shared store the way to rebuild its counters from the ledger should it lose
  them (a Redis restart); the in-process store lives and dies with the process, so it never needs it.

``now`` is the gateway's clock (budget windows follow it); a shared store keeps reservation deadlines by
its own clock, so replicas whose clocks differ agree on when a reservation expires.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """A shared store could not be reached in time, or lost its counters and cannot rebuild them yet."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One budget's share in a reservation: the counters summed for its window, and its limit."""

    counters: tuple[str, ...]  # the first one takes new spend; the rest are earlier buckets of a rolling window
    limit: int | None  # nano-USD; None = counted, never refused
    drop_after: float | None = None  # the counter may be forgotten after this time (its window is over)


@dataclass(frozen=True, slots=True)
class Refusal:
    claim: int  # index of the claim that would go over its limit
    settled: int
    reserved: int


Seeds = tuple[dict[str, int], dict[str, float | None]]  # settled nanos and drop-after time, by counter
Seeder = Callable[[], Awaitable[tuple[Seeds, float]]]  # the seeds from the ledger, and the clock they were read at


class SpendStore(Protocol):
    async def reserve(
        self, reservation_id: str, claims: Sequence[Claim], amount: int, expires_at: float, now: float
    ) -> Refusal | None: ...

    async def extend(
        self, reservation_id: str, claims: Sequence[Claim], total: int, expires_at: float, now: float
    ) -> Refusal | None: ...

    async def settle(
        self, reservation_id: str, claims: Sequence[Claim], amount: int, now: float
    ) -> list[int] | None: ...

    async def totals(self, counters: Sequence[str], now: float) -> list[tuple[int, int]]: ...

    async def seed(self, settled: Mapping[str, int], drop_after: Mapping[str, float | None], now: float) -> None: ...

    async def first_crossing(self, marker: str) -> bool: ...

    async def take_rate(
        self, bucket: str, per_minute: int, amount: int, now: float, *, force: bool = False
    ) -> float: ...

    async def open_reservations(self, now: float) -> int: ...

    async def distinct_count(self, name: str, member: str, window: float, now: float) -> int: ...

    async def reserved_counters(self, now: float) -> list[str]: ...

    async def window_sum(self, name: str, amount: int, window_minutes: int, now: float) -> int: ...

    async def renew(self, reservation_ids: Sequence[str], expires_at: float, now: float) -> None: ...

    def on_lost_state(self, seeder: Seeder) -> None: ...

    def pending(self) -> int: ...  # settlements kept until the store can be reached

    async def ping(self) -> str | None: ...  # None when reachable, else why not

    async def close(self) -> None: ...


class _Counter:
    __slots__ = ("drop_after", "reserved", "settled")

    def __init__(self, settled: int = 0, drop_after: float | None = None) -> None:
        self.settled = settled
        self.reserved = 0
        self.drop_after = drop_after


class MemoryStore:
    """The single-process store: plain dicts, atomic because the event loop runs one coroutine at a time."""

    PRUNE_EVERY_SECONDS = 60.0

    def __init__(self) -> None:
        self._counters: dict[str, _Counter] = {}
        self._reservations: dict[str, tuple[tuple[str, ...], int]] = {}  # id -> (first counters, amount)
        self._expiry: list[tuple[float, str]] = []
        self._deadline: dict[str, float] = {}  # reservation id -> when it expires (latest renewal)
        self._markers: set[str] = set()
        self._rates: dict[str, tuple[float, float]] = {}  # bucket -> (tokens, last refill time)
        self._sets: dict[str, dict[str, float]] = {}  # distinct members seen, with when they were last seen
        self._windows: dict[str, dict[int, int]] = {}  # name -> {minute: amount} (spend per hour of loop rules)
        self._next_prune = 0.0

    async def reserve(
        self, reservation_id: str, claims: Sequence[Claim], amount: int, expires_at: float, now: float
    ) -> Refusal | None:
        self._expire(now)
        refusal = self._refusal(claims, amount)
        if refusal is not None:
            return refusal
        self._hold(reservation_id, claims, amount, amount)
        self._deadline[reservation_id] = expires_at
        heapq.heappush(self._expiry, (expires_at, reservation_id))
        if len(self._expiry) > 4 * len(self._reservations) + 1024:
            self._compact_expiry()
        return None

    async def extend(
        self, reservation_id: str, claims: Sequence[Claim], total: int, expires_at: float, now: float
    ) -> Refusal | None:
        """Grow the reservation to ``total`` if every claim has room for the difference (one that expired is
        made again at ``total``)."""
        self._expire(now)
        held = self._reservations.get(reservation_id)
        more = total - (held[1] if held is not None else 0)
        if more <= 0:
            return None
        refusal = self._refusal(claims, more)
        if refusal is not None:
            return refusal
        self._hold(reservation_id, claims, more, total)
        if held is None:
            self._deadline[reservation_id] = expires_at
            heapq.heappush(self._expiry, (expires_at, reservation_id))
        return None

    async def renew(self, reservation_ids: Sequence[str], expires_at: float, now: float) -> None:
        for reservation_id in reservation_ids:
            if reservation_id in self._reservations:
                self._deadline[reservation_id] = expires_at
                heapq.heappush(self._expiry, (expires_at, reservation_id))

    async def settle(self, reservation_id: str, claims: Sequence[Claim], amount: int, now: float) -> list[int]:
        self._release(reservation_id)
        for claim in claims:
            self._counter(claim.counters[0], claim.drop_after).settled += amount
        return [self._sum(claim.counters)[0] for claim in claims]

    async def totals(self, counters: Sequence[str], now: float) -> list[tuple[int, int]]:
        self._expire(now)
        out = []
        for name in counters:
            c = self._counters.get(name)
            out.append((c.settled, c.reserved) if c else (0, 0))
        return out

    async def seed(self, settled: Mapping[str, int], drop_after: Mapping[str, float | None], now: float) -> None:
        for name, amount in settled.items():
            if name not in self._counters:
                self._counters[name] = _Counter(amount, drop_after.get(name))

    async def first_crossing(self, marker: str) -> bool:
        if marker in self._markers:
            return False
        self._markers.add(marker)
        return True

    async def take_rate(self, bucket: str, per_minute: int, amount: int, now: float, *, force: bool = False) -> float:
        """Token bucket holding at most ``per_minute``, refilled continuously. Returns seconds to wait (0 = taken)."""
        rate = per_minute / 60.0
        tokens, last = self._rates.get(bucket, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * rate)
        needed = min(amount, per_minute)  # one request larger than the limit passes when the bucket is full
        if force or tokens >= needed:
            self._rates[bucket] = (tokens - amount, now)
            return 0.0
        self._rates[bucket] = (tokens, now)
        return (needed - tokens) / rate

    async def distinct_count(self, name: str, member: str, window: float, now: float) -> int:
        """Add ``member`` to the set ``name`` and answer how many distinct members it had within ``window``."""
        seen = self._sets.setdefault(name, {})
        seen[member] = now
        for old in [m for m, at in seen.items() if at <= now - window]:
            del seen[old]
        return len(seen)

    async def window_sum(self, name: str, amount: int, window_minutes: int, now: float) -> int:
        """Add ``amount`` at ``now`` (0 to only read) to a sum kept per minute, and answer the sum of the current
        minute and the ``window_minutes - 1`` before it."""
        minute = int(now // 60)
        minutes = self._windows.setdefault(name, {})
        if amount:
            minutes[minute] = minutes.get(minute, 0) + amount
        for old in [m for m in minutes if m <= minute - window_minutes]:
            del minutes[old]
        return sum(minutes.values())

    async def open_reservations(self, now: float) -> int:
        self._expire(now)
        return len(self._reservations)

    async def reserved_counters(self, now: float) -> list[str]:
        """Counters holding reservations of requests in flight (status shows their members too)."""
        self._expire(now)
        return [name for name, c in self._counters.items() if c.reserved]

    def on_lost_state(self, seeder: Seeder) -> None:
        """Nothing to do: these counters cannot be lost while the process that uses them lives."""

    def pending(self) -> int:
        return 0

    async def ping(self) -> str | None:
        return None

    async def close(self) -> None:
        return None

    # -- internals --------------------------------------------------------------------------------

    def _refusal(self, claims: Sequence[Claim], amount: int) -> Refusal | None:
        """The first claim that has no room for ``amount`` more, or None when all do."""
        for index, claim in enumerate(claims):
            if claim.limit is None:
                continue
            settled, reserved = self._sum(claim.counters)
            if settled + reserved + amount > claim.limit:
                return Refusal(index, settled, reserved)
        return None

    def _hold(self, reservation_id: str, claims: Sequence[Claim], more: int, total: int) -> None:
        """Add ``more`` to the reserved part of each claim's first counter; the reservation holds ``total``."""
        for claim in claims:
            self._counter(claim.counters[0], claim.drop_after).reserved += more
        self._reservations[reservation_id] = (tuple(claim.counters[0] for claim in claims), total)

    def _sum(self, counters: tuple[str, ...]) -> tuple[int, int]:
        settled = reserved = 0
        for name in counters:
            c = self._counters.get(name)
            if c is not None:
                settled += c.settled
                reserved += c.reserved
        return settled, reserved

    def _counter(self, name: str, drop_after: float | None) -> _Counter:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = _Counter(0, drop_after)
        return c

    def _release(self, reservation_id: str) -> None:
        self._deadline.pop(reservation_id, None)
        held = self._reservations.pop(reservation_id, None)
        if held is None:
            return
        heads, amount = held
        for name in heads:
            c = self._counters.get(name)
            if c is not None:
                c.reserved -= amount

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            due, reservation_id = heapq.heappop(self._expiry)
            if self._deadline.get(reservation_id, due) <= due:  # not renewed since this entry was pushed
                self._release(reservation_id)
        if now >= self._next_prune:
            self._next_prune = now + self.PRUNE_EVERY_SECONDS
            self._prune(now)

    def _prune(self, now: float) -> None:
        over = [
            n for n, c in self._counters.items() if c.drop_after is not None and c.drop_after < now and not c.reserved
        ]
        for name in over:
            del self._counters[name]
        if len(self._markers) > 100_000:
            self._markers.clear()  # worst case: a threshold notification repeats once
        for name in [n for n, seen in self._sets.items() if not seen or max(seen.values()) < now - 86400]:
            del self._sets[name]  # nothing seen for a day: longer than any window worth keeping
        for name in [n for n, minutes in self._windows.items() if not minutes or max(minutes) < now // 60 - 1440]:
            del self._windows[name]  # nothing added for a day: longer than any window a rule asks for
        stale = [b for b, (_, last) in self._rates.items() if now - last > 120]
        for bucket in stale:
            del self._rates[bucket]
        if len(self._expiry) > 4 * max(16, len(self._reservations)):
            self._compact_expiry()

    def _compact_expiry(self) -> None:
        """Drop the heap entries of settled reservations and of renewals superseded by a later one: called when
        they outnumber the live reservations 4 to 1, so the heap stays within a constant factor of them
        (amortised O(1) per reservation) instead of growing with every request until the next prune."""
        self._expiry = [(t, r) for t, r in self._expiry if self._deadline.get(r) == t]
        heapq.heapify(self._expiry)
