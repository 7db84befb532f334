"""One ledger row per request, and its conversion to the ``requests`` table's columns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

import orjson

from tokenctl.text import storable, storable_json
from tokenctl.types import Attribution, Cost, Principal, Route, Usage

_NANO = Decimal("1e9")


@dataclass(slots=True)
class LedgerEntry:
    """Everything known about one request when it ends. Built on the request path, written by the writer thread."""

    request_id: str
    started_at: float  # unix seconds
    api: str
    stream: bool = False
    duration_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 0
    outcome: str = "ok"
    partial: bool = False
    error: str | None = None
    principal: Principal | None = None
    attribution: Attribution | None = None
    route: Route | None = None
    requested_model: str | None = None
    response_model: str | None = None
    upstream_request_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Cost | None = None
    price_version: str | None = None
    anthropic_beta: str | None = None
    raw_usage: Any = None
    reserved_usd: Decimal | None = None  # what budgets reserved for the request before sending it
    funding: str | None = None  # the pool drawn on, when the user's own allowance was used up
    policy: list[str] | None = None  # policy decisions: downgrades, rewrites, clamps, approvals
    approval_id: str | None = None
    original_route: Route | None = None  # the route before a policy or the router changed the model
    saving_source: str | None = None  # "policy" or "routing": who changed the model
    uncached_cost: Decimal | None = None  # the same usage without prompt caching (only when caching was used)
    counterfactual_cost: Decimal | None = None  # the same usage on the originally routed model
    service_tier: str | None = None  # the tier the provider served it at (OpenAI priority, flex): priced so
    route_tier: str | None = None  # the routing tier chosen (in a dry run: the one it would have chosen)
    would_route: Route | None = None  # a dry run: the deployment routing would have sent the request to
    would_cost: Decimal | None = None  # a dry run: the same usage on that deployment
    route_escalation: str | None = None  # why the session moved to the escalation tier on this request
    route_score: float | None = None
    route_features: tuple[int, ...] = ()
    response_cache: str | None = None  # hit | miss | bypass, when the response cache looked at the request
    cache_avoided: int | None = None  # a hit: nano-dollars the cached answer cost when it was made
    cache_miss: str | None = None  # why this turn wrote the prompt cache instead of reading it
    cache_miss_cost: Decimal | None = None  # what the written tokens cost above reading them


COLUMNS = (
    "request_id",
    "ts",
    "duration_ms",
    "ttft_ms",
    "api",
    "stream",
    "status",
    "outcome",
    "partial",
    "error",
    "key_id",
    "user",
    "team",
    "project",
    "tool",
    "tool_version",
    "session_id",
    "device_id",
    "tags",
    "provider",
    "requested_model",
    "model",
    "response_model",
    "upstream_request_id",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_nanousd",
    "list_cost_usd",
    "cost_source",
    "cost_is_estimate",
    "priced",
    "price_version",
    "anthropic_beta",
    "raw_usage",
    "reserved_usd",
    "funding",
    "policy",
    "approval_id",
    "day",
    "uncached_nanousd",
    "counterfactual_nanousd",
    "saving_source",
    "route_tier",
    "route_dry_run",
    "would_model",
    "would_nanousd",
    "route_escalation",
    "route_score",
    "route_features",
    "response_cache",
    "cache_avoided_nanousd",
    "cache_miss",
    "cache_miss_nanousd",
)

INSERT_SQL = (
    f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (request_id) DO NOTHING"
)


def iso_utc(ts: float) -> str:
    """``2026-11-20T15:00:00.123Z``: milliseconds cut, as ``datetime`` rounds the microseconds (half to even)."""
    whole = int(ts // 1)
    micros = round((ts - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    second, prefix = _last_second
    if second != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _set_last_second(whole, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"


_last_second: tuple[int, str] = (-1, "")  # requests arriving in the same second share the formatting


def _set_last_second(second: int, prefix: str) -> None:
    global _last_second
    _last_second = (second, prefix)


_QUARTER = 900  # every time zone's offset, and so every local midnight, falls on a quarter hour
_day_cache: dict[tuple[tzinfo, int], str] = {}


def local_day(ts: float, tz: tzinfo) -> str:
    """The date a request counts on in reports: its start in the reporting timezone."""
    quarter = int(ts // _QUARTER)
    key = (tz, quarter)
    day = _day_cache.get(key)
    if day is None:
        if len(_day_cache) > 4096:
            _day_cache.clear()
        day = _day_cache[key] = datetime.fromtimestamp(quarter * _QUARTER, tz).date().isoformat()
    return day


def nanos(amount: Decimal | None) -> int | None:
    return None if amount is None else int((amount * _NANO).to_integral_value())


def to_row(e: LedgerEntry, tz: tzinfo = UTC) -> tuple[Any, ...]:
    """The column values, in ``COLUMNS`` order; only primitives (so rows can be spilled as JSON)."""
    p, a, r, u, c = e.principal, e.attribution, e.route, e.usage, e.cost
    cost = c.total if c else Decimal(0)
    return (
        e.request_id,
        iso_utc(e.started_at),
        round(e.duration_ms, 3),
        None if e.ttft_ms is None else round(e.ttft_ms, 3),
        e.api,
        int(e.stream),
        e.status,
        e.outcome,
        int(e.partial),
        e.error,
        p.key_id if p else None,
        p.user if p else None,
        p.team if p else None,
        p.project if p else None,
        a.tool if a else None,
        a.tool_version if a else None,
        a.session_id if a else None,
        a.device_id if a else None,
        _json_text(a.tags) if a and a.tags else None,
        r.provider.name if r else None,
        e.requested_model,
        r.upstream_model if r else None,
        e.response_model,
        e.upstream_request_id,
        u.input_tokens,
        u.cache_read_tokens,
        u.cache_write_5m_tokens,
        u.cache_write_1h_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        str(cost),
        nanos(cost),
        str(c.list_total if c else Decimal(0)),
        c.source if c else None,
        int(bool(c and c.is_estimate)),
        int(c.priced if c else True),
        e.price_version,
        e.anthropic_beta,
        None if e.raw_usage is None else _json_text(e.raw_usage),
        None if e.reserved_usd is None else str(e.reserved_usd),
        e.funding,
        "; ".join(e.policy) if e.policy else None,
        e.approval_id,
        local_day(e.started_at, tz),
        nanos(e.uncached_cost),
        nanos(e.counterfactual_cost),
        e.saving_source,
        e.route_tier,
        int(e.would_route is not None),
        e.would_route.upstream_model if e.would_route else None,
        nanos(e.would_cost),
        e.route_escalation,
        None if e.route_score is None else round(e.route_score, 5),
        ",".join(map(str, e.route_features)) if e.route_features else None,
        e.response_cache,
        e.cache_avoided,
        e.cache_miss,
        nanos(e.cache_miss_cost),
    )


_ERROR_COLUMN = COLUMNS.index("error")
REPAIRED = " [ledger: invalid text or numbers in this row were replaced]"


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # lone surrogates, integers beyond 64 bits, objects orjson does not know
        return orjson.dumps(storable_json(value)).decode()


def repair_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row every column of which SQLite and the journal can store, flagged in ``error`` when anything changed."""
    fixed = tuple(_storable_value(v) for v in row)
    if fixed != row and len(fixed) == len(COLUMNS):
        error = fixed[_ERROR_COLUMN]
        fixed = (*fixed[:_ERROR_COLUMN], (error or "") + REPAIRED, *fixed[_ERROR_COLUMN + 1 :])
    return fixed


def _storable_value(value: Any) -> Any:
    if value is None or isinstance(value, (float, bool)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str):
        return storable(value)
    return storable(str(value))
