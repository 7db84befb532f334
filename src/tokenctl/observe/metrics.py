"""Prometheus metrics at ``GET /metrics``: what a fleet's operators graph and alert on.

Counted as each request is recorded: requests, tokens by kind, cost, durations, upstream errors. Read at
scrape time: ledger backlog and lag, reservations open, settlements waiting for the store, budget use. Labels
are bounded: API, provider, model (at most ``MAX_MODELS`` distinct, then ``other``), status, outcome, and
budgets only where the member is fixed (org scope, or a ``match``): never a user, key or session.
"""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tokenctl.ledger.record import LedgerEntry
from tokenctl.policy.budget import to_nanos
from tokenctl.policy.store import StoreUnavailable

if TYPE_CHECKING:
    from tokenctl.ledger.writer import LedgerWriter
    from tokenctl.policy.budget import Budgets

MAX_MODELS = 200
CONTENT_TYPE = CONTENT_TYPE_LATEST
_DURATIONS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_STORE_LATENCY = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_TOKEN_KINDS = ("input", "output", "reasoning", "cache_read", "cache_write")
_UPSTREAM_FAILURES = frozenset({"upstream_error", "stream_failed"})
_APPLY_EVERY = 2_000  # requests noted before they are applied without a scrape (bounds the memory they hold)
_ZERO = Decimal(0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenctl_requests", "Requests answered", ("api", "provider", "model", "status", "outcome"), registry=r
        )
        self.tokens = Counter("tokenctl_tokens", "Tokens metered", ("provider", "model", "kind"), registry=r)
        self.cost = Counter("tokenctl_cost_usd", "Spend recorded in the ledger, USD", ("provider", "model"), registry=r)
        self.duration = Histogram(
            "tokenctl_request_duration_seconds", "Request duration", ("api",), buckets=_DURATIONS, registry=r
        )
        self.first_token = Histogram(
            "tokenctl_time_to_first_token_seconds", "Time to first token", ("api",), buckets=_DURATIONS, registry=r
        )
        self.upstream_errors = Counter(
            "tokenctl_upstream_errors", "Provider failures", ("provider", "status"), registry=r
        )
        self.store_latency = Histogram(
            "tokenctl_store_seconds", "Budget store round trip", ("op",), buckets=_STORE_LATENCY, registry=r
        )
        self.ledger_pending = Gauge("tokenctl_ledger_pending_rows", "Rows recorded, not yet written", registry=r)
        self.ledger_lag = Gauge("tokenctl_ledger_lag_seconds", "Age of the oldest unwritten row", registry=r)
        self.reservations = Gauge("tokenctl_reservations_open", "Budget reservations in flight", registry=r)
        self.store_pending = Gauge(
            "tokenctl_store_pending_settlements", "Settlements waiting for the budget store", registry=r
        )
        self.store_up = Gauge("tokenctl_store_up", "1 when the budget store answered this scrape", registry=r)
        self.budget_used = Gauge(
            "tokenctl_budget_used_ratio",
            "(settled + reserved) / limit, current window",
            ("budget", "member"),
            registry=r,
        )
        self.budget_spent = Gauge(
            "tokenctl_budget_spent_usd", "Settled spend, current window", ("budget", "member"), registry=r
        )
        self._models: set[str] = set()
        self._done: list[tuple[Any, ...]] = []
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    # -- per request ------------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the client's own lookup validates and
        locks on every call: a few microseconds on each request)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 20_000:  # labels are bounded; this only guards against a bug
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, entry: LedgerEntry) -> None:
        """Noted in plain Python and applied to the Prometheus metrics in bulk (at the latest when scraped):
        each Prometheus update takes a lock, several per request added up to ~10 us on the request path."""
        route = entry.route
        provider = route.provider.name if route is not None else "-"
        model = self._model(route.upstream_model if route is not None else "-")
        u, cost = entry.usage, entry.cost
        self._done.append(
            (
                entry.api,
                provider,
                model,
                str(entry.status),
                entry.outcome,
                entry.duration_ms,
                entry.ttft_ms,
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.reasoning_tokens,
                    u.cache_read_tokens,
                    u.cache_write_5m_tokens + u.cache_write_1h_tokens,
                ),
                cost.total if cost is not None else None,
            )
        )
        if len(self._done) >= _APPLY_EVERY:
            self.apply()

    def apply(self) -> None:
        """Add the requests noted since the last call to the Prometheus metrics: one update per label set."""
        done, self._done = self._done, []
        counts: Counter_[tuple[str, ...]] = Counter_()
        tokens: Counter_[tuple[str, ...]] = Counter_()
        errors: Counter_[tuple[str, ...]] = Counter_()
        costs: dict[tuple[str, str], Decimal] = {}
        for api, provider, model, status, outcome, duration_ms, ttft_ms, token_counts, cost in done:
            counts[(api, provider, model, status, outcome)] += 1
            self._child(self.duration, api).observe(duration_ms / 1000)
            if ttft_ms is not None:
                self._child(self.first_token, api).observe(ttft_ms / 1000)
            if outcome in _UPSTREAM_FAILURES:
                errors[(provider, status)] += 1
            for kind, count in zip(_TOKEN_KINDS, token_counts):
                if count:
                    tokens[(provider, model, kind)] += count
            if cost:
                costs[(provider, model)] = costs.get((provider, model), _ZERO) + cost
        for metric, totals in ((self.requests, counts), (self.upstream_errors, errors), (self.tokens, tokens)):
            for labels, n in totals.items():
                self._child(metric, *labels).inc(n)
        for labels, total in costs.items():
            self._child(self.cost, *labels).inc(float(total))

    def store_call(self, op: str, seconds: float) -> None:
        self._child(self.store_latency, op).observe(seconds)

    def _model(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(model)
        return model

    # -- at scrape time ---------------------------------------------------------------------------

    async def render(self, ledger: LedgerWriter, budgets: Budgets, now: float) -> bytes:
        self.apply()
        self.ledger_pending.set(ledger.pending)
        self.ledger_lag.set(ledger.lag_seconds())
        self.store_pending.set(budgets.store.pending())
        try:
            self.reservations.set(await budgets.store.open_reservations(now))
            await self._budgets(budgets, now)
            self.store_up.set(1)
        except StoreUnavailable:  # scraped all the same: the outage is what the operator needs to see
            self.store_up.set(0)
        return generate_latest(self.registry)

    async def _budgets(self, budgets: Budgets, now: float) -> None:
        self.budget_used.clear()
        self.budget_spent.clear()
        for rule in budgets.rules:
            member = "org" if rule.scope == "org" else rule.match
            if member is None:
                continue  # one series per user or team would be unbounded: see budgets status instead
            charge = budgets.charge(rule, member, now)
            totals: Sequence[tuple[int, int]] = await budgets.store.totals(charge.claim.counters, now)
            settled = sum(s for s, _ in totals)
            used = settled + sum(r for _, r in totals)
            limit = to_nanos(rule.limit)
            self.budget_spent.labels(rule.name, member).set(float(Decimal(settled) / Decimal(10**9)))
            self.budget_used.labels(rule.name, member).set(used / limit if limit else 0.0)
