"""Budgets that hold: reserve the worst case before sending, settle the actual cost after.

For each request, every budget whose scope covers it (its org, team, user, project, key,
session) takes part. Blocking budgets are *enforced*: the reservation succeeds only if
``settled + reserved + this request's worst case`` stays within every one of their limits, checked
and taken in one atomic store call, so no burst of concurrent requests can overspend. Downgrade
and notify budgets are only counted. A user budget with ``overflow_to`` draws on a team pool
when it is exhausted, within the member's slice of that pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenctl.errors import BudgetExceeded
from tokenctl.policy.period import Window, WindowCache, rolling_span
from tokenctl.policy.rules import BudgetRule
from tokenctl.policy.store import Claim, Refusal, SpendStore
from tokenctl.types import Principal

log = logging.getLogger("tokenctl")

NANO = Decimal("1e9")


def to_nanos(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


def to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / NANO).quantize(Decimal("0.000001"))


def member_of(scope: str, principal: Principal, session_id: str | None) -> str | None:
    """The request's member of a scope: its team name, user name, …; None if it has none."""
    if scope == "org":
        return "org"
    if scope == "key":
        return principal.key_id
    if scope == "session":
        return session_id
    return getattr(principal, scope)


def covers(rule: Any, principal: Principal, session_id: str | None) -> str | None:
    """The member a rule applies to for this request, or None when it does not apply."""
    member = member_of(rule.scope, principal, session_id)
    if member is None or (rule.match is not None and rule.match != member):
        return None
    return member


@dataclass(frozen=True, slots=True)
class Charge:
    """One budget a request is charged to: which rule, for which member, through which counters."""

    rule: BudgetRule
    member: str
    claim: Claim
    window: Window
    slice_of: str | None = None  # set on a pool member's slice counter: the pool's name


@dataclass(slots=True)
class BudgetAdmission:
    reservation_id: str
    amount: int
    charges: list[Charge] = field(default_factory=list)
    pool: str | None = None  # the pool this request draws on, if its own allowance was exhausted

    @property
    def claims(self) -> list[Claim]:
        return [c.claim for c in self.charges]


def drop_time(rule: BudgetRule, bucket: int, window: Window) -> float | None:
    """When a counter is no longer part of any window and can be forgotten."""
    if rule.period.kind == "rolling":
        return float(bucket + rolling_span(rule.period))
    return window.resets_at


def counter_name(rule: BudgetRule, member: str, bucket: int, slice_member: str | None = None) -> str:
    kind = "s" if slice_member is not None else "b"
    tail = f":{slice_member}" if slice_member is not None else ""
    return f"{kind}:{rule.name}:{rule.period.label}:{member}{tail}:{bucket}"


class Budgets:
    def __init__(self, rules: Sequence[BudgetRule], tz: ZoneInfo, store: SpendStore, reservation_ttl: float) -> None:
        self.tz = tz
        self.store = store
        self.reservation_ttl = reservation_ttl
        self.live: set[str] = set()  # reservations of requests still running in this process
        self._windows = WindowCache(tz)
        self.set_rules(rules)

    def set_rules(self, rules: Sequence[BudgetRule]) -> None:
        self._charges: dict[tuple[int, str, str | None, Window], Charge] = {}
        self.rules = tuple(rules)
        self.pools = {r.name: r for r in rules if r.pool}
        self._general = tuple(r for r in rules if not r.pool)

    def __bool__(self) -> bool:
        return bool(self.rules)

    # -- charges ----------------------------------------------------------------------------------

    def charges_for(self, principal: Principal, session_id: str | None, now: float) -> list[Charge]:
        out = []
        for rule in self._general:
            member = covers(rule, principal, session_id)
            if member is not None:
                out.append(self.charge(rule, member, now))
        return out

    def charge(self, rule: BudgetRule, member: str, now: float, slice_member: str | None = None) -> Charge:
        """The member's charge in the rule's current window: built once per window (charges are immutable)."""
        window = self._windows.get(rule.period, now)
        key = (id(rule), member, slice_member, window)
        known = self._charges.get(key)
        if known is None:
            if len(self._charges) > 50_000:  # old windows' and gone members' charges
                self._charges.clear()
            known = self._charges[key] = self._new_charge(rule, member, window, slice_member)
        return known

    def _new_charge(self, rule: BudgetRule, member: str, window: Window, slice_member: str | None) -> Charge:
        counters = tuple(counter_name(rule, member, b, slice_member) for b in window.buckets)
        if slice_member is not None:
            limit = rule.member_cap
        else:
            limit = rule.limit if rule.action == "block" or rule.pool else None
        claim = Claim(counters, None if limit is None else to_nanos(limit), drop_time(rule, window.buckets[0], window))
        return Charge(
            rule,
            member if slice_member is None else slice_member,
            claim,
            window,
            rule.name if slice_member is not None else None,
        )

    def pool_charges(self, pool: BudgetRule, principal: Principal, session_id: str | None, now: float) -> list[Charge]:
        member = covers(pool, principal, session_id)
        if member is None:
            return []
        charges = [self.charge(pool, member, now)]
        if pool.member_cap is not None and principal.user:
            charges.append(self.charge(pool, member, now, slice_member=principal.user))
        return charges

    # -- admission and settlement -----------------------------------------------------------------

    async def admit(
        self,
        reservation_id: str,
        principal: Principal,
        session_id: str | None,
        amount: int,
        now: float,
        charges: list[Charge] | None = None,
    ) -> BudgetAdmission | None:
        """Reserve ``amount`` against every budget covering the request; raise BudgetExceeded if one cannot take it.

        ``charges``: the request's charges if the caller already has them (``charges_for`` at the same ``now``).
        """
        if charges is None:
            charges = self.charges_for(principal, session_id, now)
        if not charges:
            return None
        expires = now + self.reservation_ttl
        refusal = await self.store.reserve(reservation_id, [c.claim for c in charges], amount, expires, now)
        if refusal is None:
            self.live.add(reservation_id)
            return BudgetAdmission(reservation_id, amount, charges)
        refused = charges[refusal.claim]
        pool = self.pools.get(refused.rule.overflow_to or "")
        if pool is not None:
            pooled = await self._draw_on_pool(
                reservation_id, charges, refused, pool, principal, session_id, amount, now
            )
            if pooled is not None:
                return pooled
        raise self._exceeded(refused, refusal, amount)

    async def _draw_on_pool(
        self,
        reservation_id: str,
        charges: list[Charge],
        exhausted: Charge,
        pool: BudgetRule,
        principal: Principal,
        session_id: str | None,
        amount: int,
        now: float,
    ) -> BudgetAdmission | None:
        pool_charges = self.pool_charges(pool, principal, session_id, now)
        if not pool_charges:
            return None
        others = [c for c in charges if c is not exhausted]
        attempt = others + pool_charges
        refusal = await self.store.reserve(
            reservation_id, [c.claim for c in attempt], amount, now + self.reservation_ttl, now
        )
        if refusal is None:
            self.live.add(reservation_id)
            return BudgetAdmission(reservation_id, amount, attempt, pool=pool.name)
        refused = attempt[refusal.claim]
        raise self._exceeded(refused, refusal, amount, allowance=exhausted)

    def _exceeded(
        self, charge: Charge, refusal: Refusal, amount: int, allowance: Charge | None = None, growing: bool = False
    ) -> BudgetExceeded:
        rule = charge.rule
        limit = to_usd(charge.claim.limit or 0)
        what = f"budget {rule.name!r} ({rule.scope} {charge.member}, {rule.period.label})"
        if charge.slice_of:
            what = f"{charge.member}'s share of pool {rule.name!r} ({rule.scope} {charge.rule.match or ''})".replace(
                " )", ")"
            )
        resets = charge.window.resets_at
        when = "never resets" if resets is None else "resets at " + _iso(resets, self.tz)
        prefix = ""
        if allowance is not None:
            prefix = f"your allowance {allowance.rule.name!r} is used up and "
        message = (
            f"tokenctl: {prefix}{what} is exhausted: spent ${to_usd(refusal.settled)} "
            f"+ ${to_usd(refusal.reserved)} reserved for requests in flight of ${limit}; this request needs "
            f"{'another' if growing else 'up to'} ${to_usd(amount)}"
            f"{' to go on, so the answer was stopped here' if growing else ''}. It {when}. "
            "Ask your administrator to raise the budget."
        )
        return BudgetExceeded(
            message,
            budget=rule.name,
            limit=limit,
            spent=to_usd(refusal.settled),
            reserved=to_usd(refusal.reserved),
            needed=to_usd(amount),
            resets_at=resets,
        )

    async def extend(self, admission: BudgetAdmission, total: int, now: float) -> None:
        """Grow the request's reservation to ``total`` (a stream's output outgrew it) on the same budgets it was
        admitted on; BudgetExceeded if one of them has no room left for the difference."""
        more = total - admission.amount
        if more <= 0:
            return
        expires = now + self.reservation_ttl
        refusal = await self.store.extend(admission.reservation_id, admission.claims, total, expires, now)
        if refusal is not None:
            raise self._exceeded(admission.charges[refusal.claim], refusal, more, growing=True)
        admission.amount = total

    async def settle(self, admission: BudgetAdmission, actual: int, now: float) -> list[int] | None:
        """Settle the actual cost; each charge's settled total afterwards (None if the store could not say)."""
        self.live.discard(admission.reservation_id)
        return await self.store.settle(admission.reservation_id, admission.claims, actual, now)

    async def keep_live_reservations(self, clock: Callable[[], float]) -> None:
        """Renew the reservations of requests still running, a third of the TTL before they would expire: a
        20-minute stream keeps its reservation whatever ``reservation_ttl_seconds`` is; only a reservation
        whose request is gone (a dead process, for a store shared by several) runs out."""
        interval = max(0.05, self.reservation_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            if not self.live:
                continue
            try:
                now = clock()
                await self.store.renew(list(self.live), now + self.reservation_ttl, now)
            except Exception:  # a store that fails now is retried at the next interval
                log.exception("renewing %d live reservations failed", len(self.live))

    async def spent_share(self, charge: Charge, now: float) -> Decimal:
        """(settled + reserved) / limit for a budget's current window."""
        totals = await self.store.totals(charge.claim.counters, now)
        used = sum(s + r for s, r in totals)
        limit = to_nanos(charge.rule.limit)
        return Decimal(used) / limit if limit else Decimal(1)

    async def crossed_thresholds(
        self, admission: BudgetAdmission, settled_totals: Sequence[int]
    ) -> list[tuple[Charge, int, int]]:
        """(charge, percent, settled nanos) for each notification threshold this request's settlement crossed
        first; ``settled_totals`` is what the store's settlement answered, one total per charge."""
        out = []
        for charge, settled in zip(admission.charges, settled_totals):
            if charge.slice_of or not charge.rule.notify_at:
                continue
            limit = to_nanos(charge.rule.limit)
            for pct in charge.rule.notify_at:
                if limit and settled * 100 >= limit * pct:
                    marker = f"n:{charge.claim.counters[0]}:{pct}"
                    if await self.store.first_crossing(marker):
                        out.append((charge, pct, settled))
        return out

    def resolve_rule(self, name: str) -> BudgetRule | None:
        return next((r for r in self.rules if r.name == name), None)


def _iso(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="minutes")
