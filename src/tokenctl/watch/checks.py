"""What the watcher looks for in the ledger; each check answers the alerts it finds (deduplication is the
watcher's). Read from the rollups where they hold what is needed, else from one day of request rows by the
``ts`` index. Evidence only: amounts, token counts, shares, causes, session ids; never prompt text."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from tokenctl.dashboard.anomalies import find_anomalies
from tokenctl.ledger.engine import Database
from tokenctl.types import Usage
from tokenctl.watch.settings import AlertsConfig

ALERT_ACTIONS = ("spend_anomaly", "cache_share", "cache_write_spend")
_LABELS = {
    "spend_anomaly": "spend anomaly",
    "cache_share": "prompt cache gone cold",
    "cache_write_spend": "cache-write spend",
}
# What to do about each cause of a prompt-cache miss (metering/cache_health.py names them).
ADVICE = {
    "the cache lifetime ran out": "sessions pause longer than the cache lives: 1-hour cache writes "
    '(cache_control {"type": "ephemeral", "ttl": "1h"}) keep the prefix across gaps up to an hour',
    "the system prompt changed": "something in the system prompt changes every turn (a date, an id): keep it "
    "stable or move it after the last cache breakpoint",
    "the tools changed": "the tool list changes between turns: keep tools and their order stable in a session",
    "no cache_control": "the client sets no cache breakpoints: add cache_control to the system prompt and the "
    "latest turn",
    "an earlier message changed": "the client rewrites earlier turns: append to the history instead",
    "the model changed": "the session switches models: each model has its own cache",
}
Price = Callable[[str, str, Usage], Decimal | None]  # (provider name, model, usage) -> USD, None if unpriced


@dataclass(frozen=True, slots=True)
class Alert:
    action: str  # one of ALERT_ACTIONS (the audit log's action)
    subject: str  # "team web", "user bob", "key k_1a2b"
    day: str  # the reporting day it is about
    detail: str  # the evidence

    @property
    def marker(self) -> str:
        """One alert per action, member and day, across restarts (audit log) and replicas (budget store)."""
        return f"alert:{self.action}:{self.subject}:{self.day}"

    @property
    def text(self) -> str:
        return f"tokenctl: {_LABELS[self.action]} for {self.subject} on {self.day}: {self.detail}"


def spend_anomalies(db: Database, today: date, settings: AlertsConfig) -> list[Alert]:
    """Today's and yesterday's anomalous days per user and team, with the sessions that caused them."""
    found = find_anomalies(db, today, recent=2, k=settings.anomaly_k, min_usd=settings.anomaly_min_usd)
    return [
        Alert(
            "spend_anomaly",
            f"{a['kind']} {a['member']}",
            a["day"],
            f"spent ${Decimal(a['spend_usd']):.2f}, {a['times_usual'] or 'far above'}x its usual "
            f"${Decimal(a['usual_usd']):.2f} for that weekday (threshold ${Decimal(a['threshold_usd']):.2f}); "
            f"top sessions: {a['top_sessions'] or 'none recorded'}",
        )
        for a in found
    ]


def cache_share_drops(db: Database, today: date, since_ts: str, settings: AlertsConfig) -> list[Alert]:
    """Keys and teams reading a much smaller share of their prompt tokens from the cache today than usual (the
    median share of their days with as much traffic in the last 14)."""
    if settings.cache_share_drop <= 0:
        return []
    floor = settings.cache_min_prompt_tokens
    alerts = []
    for (kind, member), days in _prompt_tokens(db, today - timedelta(days=14), today).items():
        prompt, read = days.pop(today.isoformat(), (0, 0))
        usual_days = [r / p for p, r in days.values() if p >= max(floor, 1)]
        if prompt < max(floor, 1) or len(usual_days) < 3:
            continue
        usual, share = statistics.median(usual_days), read / prompt
        if usual <= 0 or share >= settings.cache_share_drop * usual:
            continue
        alerts.append(
            Alert(
                "cache_share",
                f"{kind} {member}",
                today.isoformat(),
                f"read {share:.0%} of its {prompt:,} prompt tokens from the cache today against a usual "
                f"{usual:.0%} (median of {len(usual_days)} days); " + _causes(db, kind, member, since_ts),
            )
        )
    return alerts


def cache_write_spend(db: Database, today: date, since_ts: str, settings: AlertsConfig, price: Price) -> list[Alert]:
    """Keys and teams whose cache writes cost more than ``cache_write_usd_per_day`` today."""
    limit = settings.cache_write_usd_per_day
    if limit <= 0:
        return []
    rows = db.execute(
        "SELECT key_id, team, provider, model, SUM(cache_write_5m_tokens), SUM(cache_write_1h_tokens) FROM requests"
        " WHERE ts >= ? AND (cache_write_5m_tokens > 0 OR cache_write_1h_tokens > 0)"
        " GROUP BY key_id, team, provider, model",
        (since_ts,),
    ).fetchall()
    spent: dict[tuple[str, str], list[Decimal | int]] = {}
    for key, team, provider, model, five, hour in rows:
        usd = _write_cost(price, str(provider), str(model), int(five), int(hour))
        for kind, member in (("key", key), ("team", team)):
            if member and usd is not None:
                cell = spent.setdefault((kind, member), [Decimal(0), 0])
                cell[0] += usd
                cell[1] += int(five) + int(hour)
    return [
        Alert(
            "cache_write_spend",
            f"{kind} {member}",
            today.isoformat(),
            f"cache writes cost ${usd:.2f} today (threshold ${limit}), {tokens:,} tokens written; "
            + _causes(db, kind, member, since_ts),
        )
        for (kind, member), (usd, tokens) in spent.items()
        if usd > limit
    ]


_RATE_TOKENS = 10_000  # priced per this many tokens: below every long-context price tier


def _write_cost(price: Price, provider: str, model: str, five: int, hour: int) -> Decimal | None:
    """What the writes cost at the model's base rates (summed tokens of many requests would otherwise cross a
    long-context price tier none of them crossed; a single request over it is counted at the base rate too)."""
    rate_5m = price(provider, model, Usage(cache_write_5m_tokens=_RATE_TOKENS))
    rate_1h = price(provider, model, Usage(cache_write_1h_tokens=_RATE_TOKENS))
    if rate_5m is None or rate_1h is None:
        return None
    return (rate_5m * five + rate_1h * hour) / _RATE_TOKENS


def _prompt_tokens(db: Database, start: date, end: date) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    """(kind, member) -> day -> (prompt tokens, of them read from the cache), for keys and teams."""
    rows = db.execute(
        "SELECT day, key_id, team, SUM(input_tokens), SUM(cache_read_tokens), SUM(cache_write_tokens)"
        " FROM rollup_daily WHERE day >= ? AND day <= ? GROUP BY day, key_id, team",
        (start.isoformat(), end.isoformat()),
    ).fetchall()
    out: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for day, key, team, fresh, read, written in rows:
        prompt = int(fresh or 0) + int(read or 0) + int(written or 0)
        for kind, member in (("key", key), ("team", team)):
            if member:
                cell = out.setdefault((kind, member), {})
                before = cell.get(day, (0, 0))
                cell[day] = (before[0] + prompt, before[1] + int(read or 0))
    return out


def _causes(db: Database, kind: str, member: str, since_ts: str) -> str:
    """The member's prompt-cache misses today by cause (cache health names them), the money they lost, and what
    to do about the commonest."""
    column = "key_id" if kind == "key" else kind
    rows = db.execute(
        f"SELECT cache_miss, cache_miss_nanousd FROM requests WHERE {column} = ? AND ts >= ?"
        " AND cache_miss IS NOT NULL LIMIT 20000",
        (member, since_ts),
    ).fetchall()
    if not rows:
        return "no misses named today (observability.cache_alarm_misses names the cause of each miss)"
    counts = Counter(str(text).split(" (")[0] for text, _ in rows)
    lost = Decimal(sum(int(n or 0) for _, n in rows)) / 1_000_000_000
    named = ", ".join(f"{cause} ({n} turns)" for cause, n in counts.most_common(3))
    top = counts.most_common(1)[0][0]
    advice = next((a for cause, a in ADVICE.items() if top.startswith(cause)), None)
    return f"misses: {named}; lost to misses ${lost:.2f}" + (f". Advice: {advice}" if advice else "")
