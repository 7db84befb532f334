"""Budget windows, resets, pools and slices, with an injected clock and the in-memory store."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tokenctl.errors import BudgetExceeded
from tokenctl.ledger.db import connect
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, LedgerEntry, to_row
from tokenctl.policy.budget import Budgets, to_nanos
from tokenctl.policy.period import current_window
from tokenctl.policy.rules import parse_budget, parse_period
from tokenctl.policy.seed import ledger_seeds
from tokenctl.policy.store import MemoryStore
from tokenctl.types import Cost, Principal
from tokenctl.validate import ConfigError

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
ALICE = Principal(key_id="key_a", user="alice", team="payments", project="checkout")
BOB = Principal(key_id="key_b", user="bob", team="payments", project="checkout")
CAROL = Principal(key_id="key_c", user="carol", team="payments", project="checkout")


def ts(text: str, tz: ZoneInfo = UTC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def budget(**fields: Any) -> Any:
    return parse_budget({"scope": "user", "limit_usd": 1, **fields}, "test")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- windows -------------------------------------------------------------------------------------


def test_monthly_window_is_calendar_aligned_in_the_configured_time_zone() -> None:
    # 23:30 UTC on 31 January is already 1 February in Berlin.
    now = ts("2026-01-31T23:30:00")
    utc = current_window(parse_period("monthly", "t"), now, UTC)
    berlin = current_window(parse_period("monthly", "t"), now, BERLIN)
    assert utc.start == ts("2026-01-01T00:00:00") and utc.resets_at == ts("2026-02-01T00:00:00")
    assert berlin.start == ts("2026-02-01T00:00:00", BERLIN)
    assert berlin.resets_at == ts("2026-03-01T00:00:00", BERLIN)


def test_daily_and_weekly_windows_follow_local_midnight_and_monday() -> None:
    now = ts("2026-11-25T10:00:00", BERLIN)  # a Wednesday
    daily = current_window(parse_period("daily", "t"), now, BERLIN)
    weekly = current_window(parse_period("weekly", "t"), now, BERLIN)
    assert daily.start == ts("2026-11-25T00:00:00", BERLIN) and daily.resets_at == ts("2026-11-26T00:00:00", BERLIN)
    assert weekly.start == ts("2026-11-23T00:00:00", BERLIN) and weekly.resets_at == ts("2026-11-30T00:00:00", BERLIN)


def test_daily_window_across_a_daylight_saving_change_is_23_hours_long() -> None:
    window = current_window(parse_period("daily", "t"), ts("2026-03-29T12:00:00", BERLIN), BERLIN)
    assert window.resets_at - window.start == 23 * 3600


def test_bad_periods_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match=r"test\.period"):
        parse_period("fortnightly", "test")
    assert parse_period("rolling_24h", "t").seconds == 86400


# -- resets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["org", "team", "user", "project", "key", "session"])
def test_every_scope_resets_at_its_month_boundary(scope: str) -> None:
    store = MemoryStore()
    budgets = Budgets([budget(scope=scope, name=f"{scope}-cap")], UTC, store, 900)
    month_end = ts("2026-11-30T23:59:00")

    async def go() -> None:
        a = await budgets.admit("r1", ALICE, "sess-1", to_nanos(Decimal("0.9")), month_end)
        await budgets.settle(a, to_nanos(Decimal("0.9")), 0)
        with pytest.raises(BudgetExceeded) as exc:
            await budgets.admit("r2", ALICE, "sess-1", to_nanos(Decimal("0.2")), month_end + 30)
        assert "resets at 2026-12-01T00:00" in exc.value.message
        assert await budgets.admit("r3", ALICE, "sess-1", to_nanos(Decimal("0.2")), ts("2026-12-01T00:00:01"))

    run(go())


def test_a_rolling_window_forgets_spend_bucket_by_bucket() -> None:
    store = MemoryStore()
    budgets = Budgets([budget(name="r", period="rolling_24h")], UTC, store, 900)
    t0 = ts("2026-11-23T00:00:00")

    async def go() -> None:
        a = await budgets.admit("r1", ALICE, None, to_nanos(Decimal("0.8")), t0)
        await budgets.settle(a, to_nanos(Decimal("0.8")), 0)
        with pytest.raises(BudgetExceeded):
            await budgets.admit("r2", ALICE, None, to_nanos(Decimal("0.3")), t0 + 23 * 3600)
        with pytest.raises(BudgetExceeded):  # the spend is inside this true 24-hour window
            await budgets.admit("r3", ALICE, None, to_nanos(Decimal("0.3")), t0 + 24 * 3600 - 1)
        assert await budgets.admit("r4", ALICE, None, to_nanos(Decimal("0.3")), t0 + 25 * 3600)

    run(go())


@pytest.mark.parametrize("period, seconds", [("rolling_1m", 60), ("rolling_7m", 420), ("rolling_24h", 86400)])
def test_a_rolling_window_never_covers_less_than_its_period(period: str, seconds: int) -> None:
    """60 s in 2-second buckets (60 // 24) once covered only 48 s: $0.0988 fitted in one true minute under
    a $0.05 cap. Now spend at any moment still counts for the whole period after it, wherever in its bucket
    it fell, and leaves within one period plus two buckets."""
    cap = Decimal("0.05")
    rule = budget(name="r", period=period, limit_usd=str(cap))
    for offset in (0.0, 0.4, 1.0, 1.9, 2.7):
        store = MemoryStore()
        budgets = Budgets([rule], UTC, store, 900)
        t0 = ts("2026-11-23T00:00:00") + offset

        async def go() -> None:
            a = await budgets.admit("r1", ALICE, None, to_nanos(cap), t0)
            await budgets.settle(a, to_nanos(cap), t0)
            for later in (1.0, seconds * 0.8, seconds - 0.001):  # inside the true window: no room
                with pytest.raises(BudgetExceeded):
                    await budgets.admit(f"r{later}", ALICE, None, to_nanos(Decimal("0.01")), t0 + later)
            slack = 2 * max(1, seconds // 24)
            assert await budgets.admit("after", ALICE, None, to_nanos(Decimal("0.01")), t0 + seconds + slack)

        run(go())


def test_an_expired_reservation_frees_the_budget_but_a_late_settle_still_counts() -> None:
    store = MemoryStore()
    budgets = Budgets([budget(name="cap")], UTC, store, reservation_ttl=60)
    t0 = ts("2026-11-23T10:00:00")

    async def go() -> None:
        crashed = await budgets.admit("r1", ALICE, None, to_nanos(Decimal("0.9")), t0)
        with pytest.raises(BudgetExceeded):
            await budgets.admit("r2", ALICE, None, to_nanos(Decimal("0.5")), t0 + 10)
        assert await store.open_reservations(t0 + 61) == 0
        later = await budgets.admit("r3", ALICE, None, to_nanos(Decimal("0.5")), t0 + 61)
        await budgets.settle(crashed, to_nanos(Decimal("0.4")), t0 + 61)  # the first request did finish after all
        await budgets.settle(later, to_nanos(Decimal("0.5")), 0)
        totals = await store.totals(later.claims[0].counters, t0 + 62)
        assert totals == [(to_nanos(Decimal("0.9")), 0)]

    run(go())


# -- pools ---------------------------------------------------------------------------------------


def _pooled() -> Budgets:
    rules = [
        budget(name="allowance", limit_usd=1, overflow_to="team-pool"),
        parse_budget({"name": "team-pool", "scope": "team", "limit_usd": 3, "pool": True, "member_cap_usd": 2}, "t"),
    ]
    return Budgets(rules, UTC, MemoryStore(), 900)


def test_a_user_spends_the_allowance_first_then_the_pool_within_a_slice() -> None:
    budgets = _pooled()
    now = ts("2026-11-23T10:00:00")
    dollar = to_nanos(Decimal("1"))

    async def spend(principal: Principal, rid: str) -> str | None:
        a = await budgets.admit(rid, principal, None, dollar, now)
        await budgets.settle(a, dollar, 0)
        return a.pool

    async def go() -> None:
        assert await spend(ALICE, "a1") is None  # own allowance
        assert await spend(ALICE, "a2") == "team-pool"
        assert await spend(ALICE, "a3") == "team-pool"
        with pytest.raises(BudgetExceeded) as exc:  # alice's slice of the pool ($2) is used up
            await spend(ALICE, "a4")
        assert "alice's share of pool 'team-pool'" in exc.value.message
        assert "allowance 'allowance' is used up" in exc.value.message
        assert await spend(BOB, "b1") is None
        assert await spend(BOB, "b2") == "team-pool"  # the pool's last dollar
        with pytest.raises(BudgetExceeded, match="budget 'team-pool'"):
            await spend(BOB, "b3")
        assert await spend(CAROL, "c1") is None  # carol's own allowance is untouched

    run(go())


def test_overflow_must_name_an_existing_pool() -> None:
    from tokenctl.config import parse_config

    with pytest.raises(ConfigError, match="overflow_to 'nope'"):
        parse_config({"budgets": [{"name": "a", "scope": "user", "limit_usd": 1, "overflow_to": "nope"}]})


# -- seeding from the ledger ---------------------------------------------------------------------


def _ledger_row(
    db: sqlite3.Connection, rid: str, when: float, usd: str, principal: Principal, funding: str | None = None
) -> None:
    entry = LedgerEntry(request_id=rid, started_at=when, api="anthropic.messages", status=200, principal=principal)
    entry.cost = Cost(Decimal(usd), Decimal(usd), True, "test")
    entry.funding = funding
    db.execute(INSERT_SQL, to_row(entry))


def test_counters_are_seeded_from_the_current_window_of_the_ledger_only(tmp_path: Any) -> None:
    db = connect(str(tmp_path / "l.db"))
    _ledger_row(db, "old", ts("2026-10-31T23:59:59"), "5", ALICE)
    _ledger_row(db, "new1", ts("2026-11-01T00:00:00"), "0.25", ALICE)
    _ledger_row(db, "new2", ts("2026-11-20T00:00:00"), "0.5", ALICE)
    _ledger_row(db, "pool", ts("2026-11-20T00:00:00"), "1", ALICE, funding="team-pool")
    rules = _pooled().rules
    settled, _ = ledger_seeds(db, rules, UTC, ts("2026-11-23T00:00:00"))
    assert len(COLUMNS) == len(to_row(LedgerEntry("x", 0, "a")))
    by_rule = {
        name.split(":")[0] + ":" + name.split(":")[1] + ":" + name.split(":")[3]: v for name, v in settled.items()
    }
    assert by_rule["b:allowance:alice"] == to_nanos(Decimal("0.75"))  # pool draws are not allowance spend
    assert by_rule["b:team-pool:payments"] == to_nanos(Decimal("1"))
    assert by_rule["s:team-pool:payments"] == to_nanos(Decimal("1"))  # alice's slice

    async def go() -> None:
        store = MemoryStore()
        await store.seed(settled, {}, 0)
        await store.seed({k: v * 2 for k, v in settled.items()}, {}, 0)  # a second seeding changes nothing
        budgets = Budgets(rules, UTC, store, 900)
        with pytest.raises(BudgetExceeded, match=r"spent \$1\.000000"):  # pool: $1 spent + $2.5 > $3
            await budgets.admit("r", ALICE, None, to_nanos(Decimal("2.5")), ts("2026-11-23T00:00:00"))

    run(go())
