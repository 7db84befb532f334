"""Month-end forecast and budget exhaustion: simple, stated projections from daily spend.

The month-end forecast is what has been spent this month plus, for the rest of the month, the
average daily spend of the last seven complete days (or of the month so far, when the ledger
holds less history than that). A budget's exhaustion date extends its window's average burn rate.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta
from decimal import Decimal

RATE_DAYS = 7


def days_in_month(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def daily_rate(spend_by_day: dict[str, Decimal], today: date, first_day: date | None) -> Decimal:
    """Average spend per day over the last seven complete days, or over this month so far."""
    if first_day is not None and first_day <= today - timedelta(days=RATE_DAYS):
        days = [(today - timedelta(days=i)).isoformat() for i in range(1, RATE_DAYS + 1)]
        return sum((spend_by_day.get(d, Decimal(0)) for d in days), Decimal(0)) / RATE_DAYS
    month_start = today.replace(day=1)
    start = max(month_start, first_day) if first_day else month_start
    elapsed = (today - start).days + 1
    month = sum((v for d, v in spend_by_day.items() if d >= start.isoformat()), Decimal(0))
    return month / elapsed


def month_end_forecast(month_to_date: Decimal, rate: Decimal, now: datetime) -> Decimal:
    """Spent so far plus ``rate`` per day for what is left of the month (including the rest of today)."""
    today = now.date()
    day_fraction_left = 1 - (now.hour * 3600 + now.minute * 60 + now.second) / 86_400
    days_left = days_in_month(today) - today.day + Decimal(str(round(day_fraction_left, 6)))
    return month_to_date + rate * days_left


def exhaustion(
    limit: Decimal, spent: Decimal, window_start: datetime, now: datetime, resets_at: datetime | None
) -> datetime | None:
    """When spend reaches ``limit`` at the window's average rate so far; None if not before the reset."""
    if spent >= limit:
        return now
    elapsed = (now - window_start).total_seconds()
    if spent <= 0 or elapsed <= 0:
        return None
    seconds_left = float((limit - spent) / spent) * elapsed
    when = now + timedelta(seconds=seconds_left)
    return None if resets_at is not None and when >= resets_at else when


def period_end_spend(spent: Decimal, window_start: datetime, now: datetime, resets_at: datetime) -> Decimal:
    """What the window will have spent when it resets, at its average rate so far."""
    elapsed = (now - window_start).total_seconds()
    if elapsed <= 0:
        return spent
    left = max(0.0, (resets_at - now).total_seconds())
    return spent + spent * Decimal(str(round(left / elapsed, 9)))
