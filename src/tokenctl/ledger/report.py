"""Spend reports from the ledger: requests, tokens by kind and cost, grouped by one dimension."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import ClassVar

from tokenctl.ledger.engine import Database

GROUPINGS = {
    "team": "team",
    "user": "user",
    "project": "project",
    "model": "model",
    "tool": "tool",
    "session": "session_id",
    "day": "substr(ts, 1, 10)",
    "key": "key_id",
    "provider": "provider",
    "funding": "COALESCE(funding, 'own budget')",  # pool draws: which pool paid
}

# The filters reports take (the dashboard's drill-down names) and their column, the same in the requests table
# and the rollups; the dashboard's queries use this map too.
FILTER_COLUMNS = {
    "team": "team",
    "user": "user",
    "project": "project",
    "model": "model",
    "tool": "tool",
    "key": "key_id",
    "provider": "provider",
}

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class ReportRow:
    group: str | None
    requests: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal
    unpriced_requests: int

    FIELDS: ClassVar[tuple[str, ...]] = (
        "group",
        "requests",
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
        "unpriced_requests",
    )

    def as_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": str(self.cost_usd),
            "unpriced_requests": self.unpriced_requests,
        }


def parse_since(value: str, now: datetime) -> str:
    """'7d', '24h', '30m', '2w', '2026-11-01' or an ISO date-time → the ledger's ISO timestamp format."""
    match = _RELATIVE.match(value.strip())
    if match:
        start = now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            start = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"--since: expected e.g. 7d, 24h or 2026-11-01, got {value!r}") from exc
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
    return start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def spend_report(
    db: Database,
    by: str,
    since: str | None = None,
    until: str | None = None,
    *,
    filters: dict[str, str] | None = None,
    start: date | None = None,
    end: date | None = None,
    now: datetime | None = None,
) -> list[ReportRow]:
    """Rows ordered by cost, highest first.

    ``since``/``until`` bound the request's start time (``until`` exclusive); ``start``/``end`` are days in
    the reporting time zone (both inclusive); ``filters`` keep only rows whose column equals the value.
    """
    if by not in GROUPINGS:
        raise ValueError(f"--by: one of {', '.join(GROUPINGS)}")
    now = now or datetime.now(UTC)
    where: list[str] = []
    params: list[object] = []
    if since:
        where.append("ts >= ?")
        params.append(parse_since(since, now))
    if until:
        where.append("ts < ?")
        params.append(parse_since(until, now))
    if start:
        where.append("day >= ?")
        params.append(start.isoformat())
    if end:
        where.append("day <= ?")
        params.append(end.isoformat())
    for name, value in (filters or {}).items():
        if name not in FILTER_COLUMNS:
            raise ValueError(f"unknown filter {name!r}: one of {', '.join(FILTER_COLUMNS)}")
        where.append(f"{FILTER_COLUMNS[name]} = ?")
        params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = f"""
        SELECT {GROUPINGS[by]} AS grp, COUNT(*), SUM(input_tokens), SUM(cache_read_tokens),
               SUM(cache_write_5m_tokens + cache_write_1h_tokens), SUM(output_tokens), SUM(reasoning_tokens),
               SUM(cost_nanousd), SUM(1 - priced)
        FROM requests {clause} GROUP BY grp ORDER BY SUM(cost_nanousd) DESC, grp
    """
    return [
        ReportRow(g, n, i or 0, cr or 0, cw or 0, o or 0, r or 0, Decimal(c or 0) / Decimal(10**9), up or 0)
        for g, n, i, cr, cw, o, r, c, up in db.execute(sql, params)
    ]


def total(rows: list[ReportRow]) -> ReportRow:
    return ReportRow(
        "TOTAL",
        sum(r.requests for r in rows),
        sum(r.input_tokens for r in rows),
        sum(r.cache_read_tokens for r in rows),
        sum(r.cache_write_tokens for r in rows),
        sum(r.output_tokens for r in rows),
        sum(r.reasoning_tokens for r in rows),
        sum((r.cost_usd for r in rows), Decimal(0)),
        sum(r.unpriced_requests for r in rows),
    )
