"""Each key's usual spend per hour, for loop rules with ``spend_per_hour_x_baseline``: the median of its active
hours (hours it spent anything) over the last 14 days, read from the ledger. A read covers the 14 days once an
hour; the reads between re-read only the last 3 hours (rows of long requests land after their start hour)."""

from __future__ import annotations

import statistics

from tokenctl.ledger.engine import Database
from tokenctl.ledger.record import iso_utc

DAYS = 14
MIN_ACTIVE_HOURS = 10  # fewer: no baseline (a new key is not judged against three data points)


class HourlySpend:
    def __init__(self, days: int = DAYS, min_hours: int = MIN_ACTIVE_HOURS) -> None:
        self.days, self.min_hours = days, min_hours
        self.by_key: dict[str, dict[str, int]] = {}  # key id -> {UTC hour "2026-12-02T15": nanos}
        self._full_read_at: float | None = None

    def refresh(self, db: Database, now: float) -> None:
        full = self._full_read_at is None or now - self._full_read_at >= 3600  # rows replayed from journals too
        since = iso_utc(now - (self.days * 86400 if full else 3 * 3600))[:13]
        rows = db.execute(
            "SELECT key_id, substr(ts, 1, 13), SUM(cost_nanousd) FROM requests WHERE ts >= ? AND key_id IS NOT NULL"
            " GROUP BY key_id, substr(ts, 1, 13)",
            (since,),
        ).fetchall()
        oldest = iso_utc(now - self.days * 86400)[:13]
        for hours in self.by_key.values():
            for hour in [h for h in hours if h >= since or h < oldest]:
                del hours[hour]
        for key, hour, nanos in rows:
            self.by_key.setdefault(str(key), {})[str(hour)] = int(nanos or 0)
        self.by_key = {k: v for k, v in self.by_key.items() if v}
        if full:
            self._full_read_at = now

    def baselines(self, now: float) -> dict[str, int]:
        """Key id -> nano-dollars in its usual active hour (the hour under way is not part of it)."""
        current = iso_utc(now)[:13]
        out = {}
        for key, hours in self.by_key.items():
            active = [n for h, n in hours.items() if h < current and n > 0]
            if len(active) >= self.min_hours:
                out[key] = int(statistics.median(active))
        return out
