"""The dashboard's budget board: every budget member's status, daily burn-down and projected exhaustion date.

Members come from the daily rollup (who spent since the window began) plus each budget's fixed
``match``; spent and reserved come from the live budget store, as ``tokenctl budgets status`` shows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from tokenctl.dashboard.forecast import exhaustion, period_end_spend
from tokenctl.dashboard.queries import View, usd
from tokenctl.ledger.engine import Database
from tokenctl.policy.budget import Budgets
from tokenctl.policy.period import current_window
from tokenctl.policy.rules import BudgetRule
from tokenctl.policy.status import status_row

# Rollup column holding each budget scope's member (sessions are not in the daily rollup).
_SCOPE_COLUMNS = {"team": "team", "user": "user", "project": "project", "key": "key_id"}
MAX_ROWS = 1000


RunInDb = Callable[[Callable[[Database], Any]], Awaitable[Any]]


async def budget_board(budgets: Budgets, run: RunInDb, view: View, now: float) -> list[dict[str, Any]]:
    """Status rows, fullest first, each with its burn-down, exhaustion date and forecast for the window's end.

    ``run`` executes a function with a ledger connection in a worker thread; the store is read here.
    """
    members = await run(
        lambda db: [(rule, m, u) for rule in budgets.rules for m, u in _members(db, rule, budgets, view, now)]
    )
    rows: list[dict[str, Any]] = []
    for rule, member, user in members:
        row = await status_row(budgets, budgets.charge(rule, member, now, slice_member=user), now)
        rows.append({**row, "_key": (rule, member, user)})
    rows.sort(key=lambda r: -r["used_percent"])
    rows = rows[:MAX_ROWS]

    projected = [r for r in rows if r["_key"][2] is None and not r["_key"][0].pool]
    await run(lambda db: _add_projections(db, budgets, projected, now))
    for row in rows:
        del row["_key"]
    return rows


def _members(db: Database, rule: BudgetRule, budgets: Budgets, view: View, now: float) -> list[tuple[str, str | None]]:
    if rule.scope == "org":
        return [] if view.team is not None else [("org", None)]
    column = _SCOPE_COLUMNS.get(rule.scope)
    if column is None:  # session budgets: too many members to list; shown when pinned to one session
        return [(rule.match, None)] if rule.match and view.team is None else []
    start_day = _window_start(rule, budgets, now).date().isoformat()
    members: list[tuple[str, str | None]]
    if rule.match is not None:
        visible = view.team is None or _in_team(db, column, rule.match, view.team)
        members = [(rule.match, None)] if visible else []
    else:
        table = {"team": "rollup_team_daily", "user": "rollup_user_daily"}.get(column, "rollup_daily")
        sql = f"SELECT DISTINCT {column} FROM {table} WHERE day >= ? AND {column} != ''"
        params: list[Any] = [start_day]
        if view.team is not None:
            sql += " AND team = ?"
            params.append(view.team)
        members = [(m, None) for (m,) in db.execute(sql, params)]
    if rule.pool and rule.member_cap is not None and rule.scope == "team":
        for team, _ in list(members):
            users = db.execute(
                "SELECT DISTINCT user FROM rollup_daily WHERE day >= ? AND team = ? AND user != ''", (start_day, team)
            ).fetchall()
            members += [(team, u) for (u,) in users]
    return members


def _in_team(db: Database, column: str, member: str, team: str) -> bool:
    if column == "team":
        return member == team
    found = db.execute(f"SELECT 1 FROM rollup_daily WHERE {column} = ? AND team = ? LIMIT 1", (member, team))
    return found.fetchone() is not None


def _window_start(rule: BudgetRule, budgets: Budgets, now: float) -> datetime:
    return datetime.fromtimestamp(current_window(rule.period, now, budgets.tz).start, budgets.tz)


def _add_projections(db: Database, budgets: Budgets, rows: list[dict[str, Any]], now: float) -> None:
    """Burn-down (cumulative spend per day) and exhaustion date, one query per budget for all its members."""
    by_rule: dict[BudgetRule, list[dict[str, Any]]] = {}
    for row in rows:
        by_rule.setdefault(row["_key"][0], []).append(row)
    for rule, members in by_rule.items():
        curves = _daily_spend(db, budgets, rule, [r["_key"][1] for r in members], now)
        for row in members:
            _project(
                row,
                rule,
                curves.get(row["_key"][1], []),
                _window_start(rule, budgets, now),
                datetime.fromtimestamp(now, budgets.tz),
            )


def _daily_spend(
    db: Database, budgets: Budgets, rule: BudgetRule, members: list[str], now: float
) -> dict[str, list[tuple[str, int]]]:
    if rule.period.kind == "lifetime":
        return {}
    start_day = _window_start(rule, budgets, now).date().isoformat()
    column = "'org'" if rule.scope == "org" else _SCOPE_COLUMNS[rule.scope]
    table = {"org": "rollup_team_daily", "team": "rollup_team_daily", "user": "rollup_user_daily"}.get(
        rule.scope, "rollup_daily"
    )
    sql = f"SELECT {column}, day, SUM(cost_nanousd) FROM {table} WHERE day >= ?"
    params: list[Any] = [start_day]
    if rule.scope != "org":
        sql += f" AND {column} IN ({', '.join('?' * len(members))})"
        params += members
    curves: dict[str, list[tuple[str, int]]] = {}
    for member, day, nanos in db.execute(sql + " GROUP BY 1, 2 ORDER BY 1, 2", params):
        curves.setdefault(member, []).append((day, nanos or 0))
    return curves


def _project(
    row: dict[str, Any], rule: BudgetRule, spend: list[tuple[str, int]], start: datetime, now: datetime
) -> None:
    row["forecast"] = None
    if rule.period.kind == "lifetime":
        row["projected_exhaustion"] = None
        return
    running, points = 0, []
    for day, nanos in spend:
        running += nanos
        points.append({"day": day, "cumulative_usd": usd(running)})
    row["burn_down"] = points
    resets = datetime.fromisoformat(row["resets_at"]) if row["resets_at"] else None
    spent = Decimal(row["spent_usd"]) + Decimal(row["reserved_usd"])
    limit = Decimal(row["limit_usd"])
    when = exhaustion(limit, spent, start, now, resets)
    row["projected_exhaustion"] = None if when is None else when.isoformat(timespec="minutes")
    if resets is not None and rule.period.kind != "rolling":
        row["forecast"] = _forecast(limit, period_end_spend(spent, start, now, resets), when)


def _forecast(limit: Decimal, at_reset: Decimal, when: datetime | None) -> dict[str, Any]:
    """How the window ends at its rate so far: a CFO's sentence and its figures."""
    over = at_reset - limit
    cents = Decimal("0.01")
    if over > 0 and when is not None:
        text = f"on track to exceed by ${over.quantize(cents):,} around {when.strftime('%b %-d')}"
    else:
        text = f"on track: ${at_reset.quantize(cents):,} of ${limit:,} at reset"
    return {
        "at_reset_usd": str(at_reset.quantize(Decimal("0.000001"))),
        "over_usd": str(max(over, Decimal(0))),
        "text": text,
    }
