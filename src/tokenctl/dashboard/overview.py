"""The overview: spend today and this month, the month-end forecast, the daily trend and the top spenders."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tokenctl.dashboard.forecast import RATE_DAYS, daily_rate, month_end_forecast
from tokenctl.dashboard.queries import View, breakdown, daily, totals
from tokenctl.ledger.engine import Database

TREND_DAYS = 30


def overview(db: Database, view: View, now: datetime) -> dict[str, Any]:
    """Everything on the overview page for ``now`` (an aware datetime in the reporting timezone)."""
    today = now.date()
    month_start = today.replace(day=1)
    last_month_start = (month_start - timedelta(days=1)).replace(day=1)
    first = min(last_month_start, today - timedelta(days=TREND_DAYS - 1))
    days = daily(db, replace(view, start=first, end=today))
    spend = {d: Decimal(m["cost_usd"]) for d, m in days.items()}
    earliest = db.execute("SELECT MIN(day) FROM rollup_daily").fetchone()[0]
    rate = daily_rate(spend, today, date.fromisoformat(earliest) if earliest else None)
    month_to_date = _sum_between(spend, month_start, today)
    month_view = replace(view, start=month_start, end=today)
    month = totals(db, month_view)
    return {
        "now": now.isoformat(timespec="seconds"),
        "timezone": str(now.tzinfo),
        "today": today.isoformat(),
        "month": month_start.isoformat()[:7],
        "today_usd": str(spend.get(today.isoformat(), Decimal(0))),
        "today_requests": days.get(today.isoformat(), {}).get("requests", 0),
        "month_usd": str(month_to_date),
        "month_requests": month["requests"],
        "month_unpriced_requests": month["unpriced_requests"],
        "last_month_usd": str(_sum_between(spend, last_month_start, month_start - timedelta(days=1))),
        "daily_rate_usd": str(rate.quantize(Decimal("0.000001"))),
        "rate_basis": f"average of the last {RATE_DAYS} complete days"
        if earliest and date.fromisoformat(earliest) <= today - timedelta(days=RATE_DAYS)
        else "average per day this month",
        "forecast_usd": str(month_end_forecast(month_to_date, rate, now).quantize(Decimal("0.01"))),
        "cache_read_share": month["cache_read_share"],
        "month_saved_usd": str(
            sum(Decimal(month[k]) for k in ("cache_saved_usd", "policy_saved_usd", "routing_saved_usd"))
        ),
        "trend": [_trend_point(days, today - timedelta(days=i)) for i in reversed(range(TREND_DAYS))],
        "top_teams": _top(breakdown(db, month_view, "team", limit=5)),
        "top_models": _top(breakdown(db, month_view, "model", limit=5)),
    }


def _sum_between(spend: dict[str, Decimal], first: date, last: date) -> Decimal:
    lo, hi = first.isoformat(), last.isoformat()
    return sum((v for d, v in spend.items() if lo <= d <= hi), Decimal(0))


def _trend_point(days: dict[str, dict[str, Any]], day: date) -> dict[str, Any]:
    row = days.get(day.isoformat(), {})
    return {"day": day.isoformat(), "cost_usd": row.get("cost_usd", "0"), "requests": row.get("requests", 0)}


def _top(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "group": r["group"],
            "cost_usd": r["cost_usd"],
            "requests": r["requests"],
            "unpriced_requests": r["unpriced_requests"],
        }
        for r in rows
    ]
