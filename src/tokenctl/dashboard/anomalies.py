"""Spend anomalies: a user's or team's day far above its own usual days.

The baseline of a day is the median and the median absolute deviation (MAD) of the member's spend on the
same weekday in the previous weeks (at least 3 of them), else on all its previous days in the window (at
least 7). A day is an anomaly when it is above ``median + k × 1.4826 × MAD`` (k = 3.5 by default; the
factor makes MAD comparable to a standard deviation), above 1.5 × the median and above ``min_usd``; days
with no spend count as $0.
Each anomaly lists the day's most expensive sessions of that member, the ones that caused it.
"""

from __future__ import annotations

import statistics
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from tokenctl.ledger.engine import Database

_NANO = Decimal(1_000_000_000)
_MIN_RATIO = 1.5  # and at least 1.5 × the usual day: a member whose days never vary (MAD 0) is not flagged for +1 %


def baseline(history: list[int]) -> tuple[float, float]:
    """(median, MAD) of a list of daily amounts."""
    middle = statistics.median(history)
    return middle, statistics.median(abs(x - middle) for x in history)


def is_anomaly(amount: int, history: list[int], k: float, floor_nanos: int) -> tuple[bool, float]:
    """(anomalous?, the threshold it was compared with)."""
    middle, mad = baseline(history)
    threshold = max(middle + k * 1.4826 * mad, _MIN_RATIO * middle, float(floor_nanos))
    return amount > threshold and amount > middle, threshold


def find_anomalies(
    db: Database, today: date, *, days: int = 56, recent: int = 7, k: float = 3.5, min_usd: Decimal = Decimal(5)
) -> list[dict[str, Any]]:
    """Anomalous days among the last ``recent`` days, per user and per team, most expensive first."""
    start = today - timedelta(days=days - 1)
    found: list[dict[str, Any]] = []
    for kind, column in (("team", "team"), ("user", "user")):
        series = _daily(db, column, start, today)
        for member, by_day in series.items():
            for offset in range(recent):
                day = today - timedelta(days=offset)
                history = _history(by_day, day, start)
                if history is None:
                    continue
                amount = by_day.get(day, 0)
                anomalous, threshold = is_anomaly(amount, history, k, int(min_usd * _NANO))
                if anomalous:
                    found.append(_anomaly(db, kind, member, day, amount, history, threshold))
    return sorted(found, key=lambda a: -Decimal(a["spend_usd"]))


def _daily(db: Database, column: str, start: date, end: date) -> dict[str, dict[date, int]]:
    rows = db.execute(
        f"SELECT {column}, day, SUM(cost_nanousd) FROM rollup_user_daily WHERE day >= ? AND day <= ?"
        f" AND {column} <> '' GROUP BY {column}, day",
        (start.isoformat(), end.isoformat()),
    )
    series: dict[str, dict[date, int]] = {}
    for member, day, cost in rows:
        series.setdefault(member, {})[date.fromisoformat(day)] = int(cost or 0)
    return series


def _history(by_day: dict[date, int], day: date, start: date) -> list[int] | None:
    """The amounts the day is compared with: the same weekday in earlier weeks, else every earlier day."""
    weekdays = []
    earlier = day - timedelta(days=7)
    while earlier >= start:
        weekdays.append(by_day.get(earlier, 0))
        earlier -= timedelta(days=7)
    if len(weekdays) >= 3:
        return weekdays
    every = [by_day.get(start + timedelta(days=i), 0) for i in range((day - start).days)]
    return every if len(every) >= 7 else None


def _anomaly(
    db: Database, kind: str, member: str, day: date, amount: int, history: list[int], threshold: float
) -> dict[str, Any]:
    middle, _ = baseline(history)
    top = db.execute(
        f"SELECT session_id, cost_nanousd, requests FROM rollup_sessions WHERE {kind} = ?"
        " AND first_day <= ? AND last_day >= ? ORDER BY cost_nanousd DESC LIMIT 3",
        (member, day.isoformat(), day.isoformat()),
    ).fetchall()
    return {
        "kind": kind,
        "member": member,
        "day": day.isoformat(),
        "spend_usd": str(Decimal(amount) / _NANO),
        "usual_usd": str((Decimal(middle) / _NANO).quantize(Decimal("0.000001"))),
        "threshold_usd": str((Decimal(threshold) / _NANO).quantize(Decimal("0.000001"))),
        "times_usual": round(amount / middle, 1) if middle else None,
        "top_sessions": ", ".join(f"{s} (${Decimal(c) / _NANO:.2f}, {n} requests)" for s, c, n in top),
    }
