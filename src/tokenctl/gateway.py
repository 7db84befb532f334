"""What the request path shares: the assembled ``Gateway`` (built once by ``app.create_app``) and one ``Call``
per request in flight. Every stage reads these; none of them imports another stage to get at them."""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from tokenctl.cache.store import Cached, ResponseCache
from tokenctl.config import Config
from tokenctl.identity.keys import KeyCache
from tokenctl.ingress.dialect import Dialect
from tokenctl.ledger.record import LedgerEntry, nanos
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.metering.cache_health import CacheHealth, Prefix, miss_cost
from tokenctl.metering.meter import ReasoningHistory, settle
from tokenctl.metering.pricing import PriceBook
from tokenctl.observe.metrics import Metrics
from tokenctl.policy.enforce import Admission, Enforcer
from tokenctl.policy.reload import reload_rules
from tokenctl.providers.upstream import Upstream, UpstreamRequest
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.router import Router
from tokenctl.translate import StreamTranslator, Translation
from tokenctl.types import Route
from tokenctl.watch.watcher import Watcher

if TYPE_CHECKING:
    from tokenctl.metering.stream import StreamMeter
    from tokenctl.observe.otel import Telemetry


@dataclass
class Gateway:
    """Everything a request needs, built once by ``app.create_app``."""

    config: Config
    keys: KeyCache
    catalog: Catalog
    upstreams: dict[str, Upstream]
    prices: PriceBook
    ledger: LedgerWriter
    http: aiohttp.ClientSession
    enforcer: Enforcer
    router: Router
    metrics: Metrics
    telemetry: Telemetry | None = None  # OpenTelemetry export, when configured
    response_cache: ResponseCache | None = None  # when ``cache.enabled``
    cache_health: CacheHealth | None = None  # prompt-cache misses per session (observability.cache_alarm_*)
    watcher: Watcher | None = None  # alerts read from the ledger, keys' usual spend per hour (alerts.*)
    reasoning: ReasoningHistory = field(default_factory=ReasoningHistory)  # for cut streams' hidden reasoning

    async def reload_rules(self, rules_db: Any) -> None:
        """Apply budgets, policies and approval rules changed in the ledger database (CLI or admin API)."""
        await reload_rules(self.config, self.enforcer, rules_db)


GATEWAY = web.AppKey("gateway", Gateway)

log = logging.getLogger("tokenctl")


_ID_PREFIX = "req_tk_" + os.urandom(6).hex()  # random per process, so ids stay unique across restarts
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


@dataclass(slots=True)
class RequestBody:
    """The client's body, raw and parsed: kept while it may still be sent (a fallback needs it), dropped once
    the provider has answered, so a 20-minute stream does not keep a 300 KB prompt alive."""

    raw: bytes
    parsed: dict[str, Any]

    def drop(self) -> None:
        self.raw, self.parsed = b"", {}


@dataclass(slots=True)
class CacheFill:
    """A cacheable request's key and the answer's bytes as they reach the client."""

    key: str
    now: float
    stream: bool = False
    content_type: str = "application/json"
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # every byte of the answer was written to the client
    stored: bool = False


class Call:
    """One request in flight: its id, timers and the ledger entry being filled in."""

    __slots__ = (
        "admission",
        "body_size",
        "cache_fill",
        "cache_prefix",
        "dialect",
        "entry",
        "fallbacks",
        "finished",
        "gw",
        "meter",
        "request",
        "request_body",
        "request_id",
        "started",
        "translation",
        "translator",
        "upstream_dialect",
    )

    def __init__(self, gw: Gateway, request: web.Request, dialect: Dialect) -> None:
        self.gw = gw
        self.request = request
        self.dialect = dialect
        self.request_id = new_request_id()
        self.started = time.perf_counter()
        self.entry = LedgerEntry(request_id=self.request_id, started_at=time.time(), api=dialect.api)
        self.meter: StreamMeter | None = None
        self.body_size = 0
        self.admission: Admission | None = None
        self.fallbacks: tuple[Route, ...] = ()  # deployments to try if the first fails before answering
        self.finished = False  # metered, settled and recorded (finish() ran)
        self.request_body: RequestBody | None = None
        self.upstream_dialect = dialect  # the API the provider answers in (another one when translating)
        self.translation: Translation | None = None
        self.translator: StreamTranslator | None = None
        self.cache_fill: CacheFill | None = None  # a cacheable miss: the answer's bytes, kept once it is complete
        self.cache_prefix: Prefix | None = None  # digests of the prompt-cache prefix, for cache health

    def answer_started(self, sent: UpstreamRequest) -> None:
        """The provider answered: no fallback will send the body again, so nothing needs to hold it."""
        if self.request_body is not None:
            self.request_body.drop()
        sent.release()

    async def finish(self) -> None:
        """Meter, settle budgets and record the request, once. Runs for every outcome, client disconnects
        included; a stream calls it before its last bytes are sent, so an answered request is journaled."""
        if self.finished:
            return
        self.finished = True
        entry = self.entry
        entry.duration_ms = (time.perf_counter() - self.started) * 1000
        meter = self.meter
        estimated_output = None
        if meter is not None and not meter.output_known and (entry.partial or entry.status < 400):
            # cut short, or a server that never reports stream usage (llama.cpp): estimated and marked so
            estimated_output = meter.estimated_output_tokens()
        try:
            extract, prices = self.upstream_dialect.extract_usage, self.gw.prices
            settle(entry, extract, prices, self.body_size // 4, estimated_output, self.gw.reasoning)
        except Exception:  # metering must never lose the row
            log.exception("metering failed for request %s; recorded without cost", self.request_id)
            entry.error = (entry.error or "") + " [metering failed]"
        if self.cache_prefix is not None:
            self._judge_prompt_cache(self.cache_prefix)
        if self.admission is not None:
            try:
                await self.gw.enforcer.settle(self.admission, entry)
            except Exception:  # settling must never lose the row either
                log.exception("settling budgets failed for request %s", self.request_id)
        self.gw.ledger.record(entry)
        self.gw.metrics.request_done(entry)
        await self.fill_cache()
        if self.gw.telemetry is not None:
            try:
                self.gw.telemetry.request_done(entry, self.request.headers)
            except Exception:  # tracing must never cost a request
                log.exception("exporting the trace of request %s failed", self.request_id)

    def _judge_prompt_cache(self, prefix: Prefix) -> None:
        """Name a prompt-cache miss in the row, with what it cost; alarm once when a session keeps missing."""
        entry, health = self.entry, self.gw.cache_health
        session = entry.attribution.session_id if entry.attribution else None
        if health is None or session is None or entry.status != 200 or entry.outcome != "ok" or entry.route is None:
            return
        try:
            verdict = health.observe(prefix, entry.usage, self.gw.enforcer.clock())
            if verdict.cause is None:
                return
            entry.cache_miss = verdict.cause
            entry.cache_miss_cost = miss_cost(self.gw.prices, entry.route, entry.usage)
            if verdict.alarm is not None:
                self.gw.enforcer.cache_alarm(entry, session, verdict.alarm)
        except Exception:  # cache health must never cost a request its row
            log.exception("judging the prompt cache of request %s failed", self.request_id)

    async def fill_cache(self) -> None:
        """Keep a complete, successful answer for the response cache (never a partial or failed one), once the
        request is metered (its cost is what replays avoid) and every byte reached the client."""
        entry, cache, fill = self.entry, self.gw.response_cache, self.cache_fill
        if cache is None or fill is None or not (self.finished and fill.complete) or fill.stored:
            return
        fill.stored = True
        if entry.status != 200 or entry.outcome != "ok" or entry.partial or not fill.chunks:
            return
        if entry.cost is None or not entry.cost.priced or entry.route is None:
            return  # an answer whose cost is unknown would replay a wrong saving
        answer = Cached(
            b"".join(fill.chunks),
            fill.content_type,
            fill.stream,
            nanos(entry.cost.total) or 0,
            entry.route.upstream_model,
            fill.now,
        )
        await cache.put(fill.key, answer)
