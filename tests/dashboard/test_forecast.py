"""Month-end forecast and budget exhaustion dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from tokenctl.dashboard.forecast import daily_rate, exhaustion, month_end_forecast


def test_rate_is_the_last_seven_complete_days_when_there_is_history() -> None:
    today = date(2026, 11, 20)
    spend = {(today - timedelta(days=i)).isoformat(): Decimal(i) for i in range(0, 30)}  # today = 0, yesterday 1…
    assert daily_rate(spend, today, date(2026, 10, 1)) == Decimal(1 + 2 + 3 + 4 + 5 + 6 + 7) / 7


def test_rate_falls_back_to_the_month_so_far_on_a_young_ledger() -> None:
    today = date(2026, 11, 4)
    spend = {"2026-11-03": Decimal(10), "2026-11-04": Decimal(2)}
    assert daily_rate(spend, today, date(2026, 11, 3)) == Decimal(6)  # two days since the first row


def test_forecast_adds_the_rate_for_the_rest_of_the_month() -> None:
    noon = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 10 days left plus half of today
    assert month_end_forecast(Decimal(100), Decimal(10), noon) == Decimal("205.0")


def test_exhaustion_extends_the_window_pace() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime(2026, 11, 11, tzinfo=UTC)  # $40 in 10 days: $4/day, $60 left -> 15 more days
    assert exhaustion(Decimal(100), Decimal(40), start, now, datetime(2026, 12, 1, tzinfo=UTC)) == datetime(
        2026, 11, 26, tzinfo=UTC
    )
    assert exhaustion(Decimal(100), Decimal(20), start, now, datetime(2026, 12, 1, tzinfo=UTC)) is None
    assert exhaustion(Decimal(100), Decimal(100), start, now, None) == now
