"""``budgets status``: spent, reserved, limit and reset time of every budget's current window.

Members come from the ledger (who spent in the window), the store (who has requests in flight, ledger row or
not) and each budget's fixed ``match``;
spent and reserved come from the store, so spend not yet flushed to the ledger is included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.ledger.spend import spend_by_member
from tokenctl.policy.budget import Budgets, Charge, counter_name, to_nanos, to_usd
from tokenctl.policy.period import current_window
from tokenctl.policy.rules import BudgetRule
from tokenctl.policy.seed import ledger_seeds


def budget_members(db: Database, rule: BudgetRule, tz: Any, now: float) -> list[tuple[str, str | None]]:
    """(member, slice user or None) pairs to report for a budget."""
    members: list[tuple[str, str | None]]
    if rule.match is not None:
        members = [(rule.match, None)]
    elif rule.scope == "org":
        members = [("org", None)]
    else:
        start = current_window(rule.period, now, tz).start
        kwargs = {"funding": rule.name} if rule.pool else {"not_funding": rule.overflow_to}
        members = sorted({(m, None) for m, _, _ in spend_by_member(db, rule.scope, start, **kwargs)})
    if rule.pool and rule.member_cap is not None:
        start = current_window(rule.period, now, tz).start
        slices = spend_by_member(db, rule.scope, start, funding=rule.name, slice_by_user=True)
        members += sorted({(m, u) for m, u, _ in slices if u and (rule.match is None or m == rule.match)})
    return members


async def budget_status(budgets: Budgets, db: Database, now: float) -> list[dict[str, Any]]:
    reserved = await budgets.store.reserved_counters(now)
    rows = []
    for rule in budgets.rules:
        members = budget_members(db, rule, budgets.tz, now)
        known = {m for m, u in members if u is None}
        members += [(m, None) for m in _reserving_members(budgets, rule, reserved, now) if m not in known]
        members = members or [("*", None)]  # "*": every member, none spent yet
        for member, user in members:
            charge = budgets.charge(rule, member, now, slice_member=user)
            rows.append(await status_row(budgets, charge, now))
    return rows


def _reserving_members(budgets: Budgets, rule: BudgetRule, reserved: list[str], now: float) -> list[str]:
    """Members with requests in flight in the current window, whether or not the ledger has a row for them yet."""
    found = set()
    for bucket in current_window(rule.period, now, budgets.tz).buckets:
        prefix, suffix = counter_name(rule, "\0", bucket).split("\0")
        found |= {
            name[len(prefix) : -len(suffix)]
            for name in reserved
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)
        }
    return sorted(found)


async def offline_status(budgets: Budgets, db: Database, now: float) -> list[dict[str, Any]]:
    """Status from the ledger alone (no running gateway to ask): reservations in flight are unknown."""
    settled, drops = ledger_seeds(db, budgets.rules, budgets.tz, now)
    await budgets.store.seed(settled, drops, now)
    return await budget_status(budgets, db, now)


async def status_row(budgets: Budgets, charge: Charge, now: float) -> dict[str, Any]:
    rule = charge.rule
    totals = await budgets.store.totals(charge.claim.counters, now)
    spent = sum(s for s, _ in totals)
    reserved = sum(r for _, r in totals)
    limit = rule.member_cap if charge.slice_of else rule.limit
    assert limit is not None
    resets = charge.window.resets_at
    return {
        "budget": rule.name,
        "scope": rule.scope,
        "member": charge.member if not charge.slice_of else f"{charge.member} (share of pool)",
        "period": rule.period.label,
        "action": "pool slice" if charge.slice_of else ("pool" if rule.pool else rule.action),
        "limit_usd": str(limit),
        "spent_usd": str(to_usd(spent)),
        "reserved_usd": str(to_usd(reserved)),
        "remaining_usd": str(max(to_usd(to_nanos(limit) - spent - reserved), to_usd(0))),
        "used_percent": round(100 * (spent + reserved) / to_nanos(limit), 1) if limit else 100.0,
        "resets_at": None if resets is None else datetime.fromtimestamp(resets, budgets.tz).isoformat(),
    }
