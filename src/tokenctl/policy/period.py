"""Budget windows, derived from a timestamp alone (no reset job that could be skipped).

Calendar periods start at local midnight in the configured time zone: ``daily`` each day,
``weekly`` on Mondays, ``monthly`` on the 1st. A rolling window is kept as buckets of period /
``ROLLING_BUCKETS`` seconds, and always covers *at least* its whole period: one bucket more than the
period needs, so the oldest spend still inside the true window is never dropped early (the bucket it is in
counts whole). A budget therefore holds over every true window of its length; spend leaves it between one
period and one period plus two buckets (1/12 of the period) after it was made. ``lifetime`` never resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tokenctl.policy.rules import Period

ROLLING_BUCKETS = 24


@dataclass(frozen=True, slots=True)
class Window:
    """The counters that make up a budget's current window: ``buckets[0]`` takes new spend."""

    buckets: tuple[int, ...]  # bucket start times (unix seconds); one for calendar periods
    start: float
    resets_at: float | None  # when the current window ends (rolling: when the oldest bucket drops out)


def current_window(period: Period, now: float, tz: ZoneInfo) -> Window:
    if period.kind == "lifetime":
        return Window((0,), 0.0, None)
    if period.kind == "rolling":
        size = rolling_bucket_seconds(period)
        newest = int(now // size) * size
        buckets = tuple(newest - i * size for i in range(rolling_bucket_count(period)))
        return Window(buckets, float(buckets[-1]), float(newest + size))  # then the oldest bucket drops out
    start, end = _calendar_bounds(period.kind, now, tz)
    return Window((int(start),), start, end)


class WindowCache:
    """``current_window`` computed once per window rather than per request (it converts times through the zone).

    A calendar window stays valid until it resets; a rolling one until its newest bucket changes.
    """

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._windows: dict[Period, tuple[float, float, Window]] = {}

    def get(self, period: Period, now: float) -> Window:
        cached = self._windows.get(period)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        window = current_window(period, now, self.tz)
        self._windows[period] = (*_validity(period, window), window)
        return window


def _validity(period: Period, window: Window) -> tuple[float, float]:
    if period.kind == "lifetime":
        return float("-inf"), float("inf")
    if period.kind == "rolling":
        newest = window.buckets[0]
        return float(newest), float(newest + rolling_bucket_seconds(period))
    assert window.resets_at is not None
    return window.start, window.resets_at


def rolling_bucket_seconds(period: Period) -> int:
    return max(1, period.seconds // ROLLING_BUCKETS)


def rolling_bucket_count(period: Period) -> int:
    """Buckets that together cover the whole period whatever the time within the newest one (and whether or
    not the period divides into whole buckets: 60 s in 2 s buckets needs 31, not 24)."""
    size = rolling_bucket_seconds(period)
    return -(-period.seconds // size) + 1


def rolling_span(period: Period) -> int:
    """How long after its bucket started a rolling counter is still part of the window."""
    return rolling_bucket_count(period) * rolling_bucket_seconds(period)


def _calendar_bounds(kind: str, now: float, tz: ZoneInfo) -> tuple[float, float]:
    local = datetime.fromtimestamp(now, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        start, end = midnight, _local_midnight(midnight.date() + timedelta(days=1), tz)
    elif kind == "weekly":
        monday = midnight.date() - timedelta(days=midnight.weekday())
        start, end = _local_midnight(monday, tz), _local_midnight(monday + timedelta(days=7), tz)
    else:  # monthly
        first = midnight.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        start, end = _local_midnight(first, tz), _local_midnight(following, tz)
    return start.timestamp(), end.timestamp()


def _local_midnight(day: object, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)  # type: ignore[attr-defined]
