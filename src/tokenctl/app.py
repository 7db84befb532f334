"""The composition root: ``create_app(config)`` builds every part of the gateway, here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from tokenctl.cache.store import MemoryResponseCache, RedisResponseCache, ResponseCache
from tokenctl.config import Config
from tokenctl.dashboard.views import DASHBOARD, Dashboard
from tokenctl.dashboard.views import routes as dashboard_routes
from tokenctl.gateway import GATEWAY, Gateway
from tokenctl.identity.keys import KeyCache
from tokenctl.ingress.admin import admin_dispatch, metrics_endpoint
from tokenctl.ingress.http import body_limit_errors, dispatch
from tokenctl.ledger.db import connect
from tokenctl.ledger.engine import Database
from tokenctl.ledger.loop_resumes import resumes
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.metering.cache_health import CacheHealth
from tokenctl.metering.pricing import PriceBook
from tokenctl.observe.metrics import Metrics
from tokenctl.policy.approval import ApprovalDesk
from tokenctl.policy.enforce import Enforcer
from tokenctl.policy.manage import combined_rules, last_change
from tokenctl.policy.notify import Notifier
from tokenctl.policy.redis_store import RedisStore
from tokenctl.policy.reload import ledger_seeder, seed_budgets
from tokenctl.policy.store import MemoryStore, SpendStore
from tokenctl.providers.upstream import Upstream
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.classifier import Classifier
from tokenctl.routing.router import Router
from tokenctl.watch.watcher import Watcher

if TYPE_CHECKING:
    from tokenctl.observe.otel import Telemetry

log = logging.getLogger("tokenctl")

CONFIG = web.AppKey("config", Config)


def runner_settings(config: Config) -> dict[str, Any]:
    """How the HTTP server treats connections: an idle keep-alive connection, or one that has not sent a
    complete request head, is closed after ``server.idle_timeout_seconds``."""
    return {
        "access_log": None,
        "keepalive_timeout": config.idle_timeout_seconds,
        "shutdown_timeout": config.shutdown_grace_seconds,
    }


def create_app(
    config: Config, *, store: SpendStore | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """An aiohttp application serving the gateway; its parts start and stop with the app.

    ``store`` holds budget counters and reservations (in memory by default); ``clock`` is injectable
    so tests can move budget windows.
    """
    # Checked now, so a bad price file stops start-up with a clear message instead of failing later.
    policy = config.enforcement.unpriced_models
    prices = PriceBook.from_file(config.price_overrides_path, None if policy in ("refuse", "allow") else policy)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[body_limit_errors])
    app[CONFIG] = config
    app.router.add_route("*", "/admin/{tail:.*}", admin_dispatch)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_routes(dashboard_routes())
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.cleanup_ctx.append(lambda a: _gateway_lifecycle(a, prices, store or spend_store(config), clock))
    return app


def spend_store(config: Config) -> SpendStore:
    """Budget counters in this process, or in the Redis every replica shares (``store.redis_url``)."""
    settings = config.store
    if settings.redis_url is None:
        return MemoryStore()
    return RedisStore(
        settings.redis_url,
        timeout=settings.timeout_ms / 1000,
        prefix=settings.key_prefix,
        reseed_wait=settings.reseed_wait_seconds,
        max_connections=settings.max_connections,
    )


async def _gateway_lifecycle(
    app: web.Application, prices: PriceBook, store: SpendStore, clock: Callable[[], float]
) -> AsyncIterator[None]:
    config = app[CONFIG]
    ledger = LedgerWriter(
        config.ledger_path,
        queue_max=config.ledger_queue_max,
        batch_max=config.ledger_batch_max,
        tz=ZoneInfo(config.enforcement.timezone),
        fsync=config.ledger_fsync,
        interval_seconds=config.ledger_write_interval_seconds,
        max_lag_seconds=config.ledger_max_lag_seconds,
        max_lag_rows=config.ledger_max_lag_rows,
        journal_path=config.ledger_journal_path,
    )
    ledger.start(wait_for_lock_seconds=config.shutdown_grace_seconds + 5)
    keys_db = connect(config.ledger_path)
    keys = KeyCache(keys_db, config.key_refresh_seconds)
    keys.refresh()
    tags_header = frozenset({config.tags_header})
    upstreams = {p.name: Upstream(p, drop_headers=tags_header) for p in config.providers}
    for p in config.providers:
        if p.api_key_env and not p.api_key():
            log.warning("provider %r: %s is not set; its requests will fail until it is", p.name, p.api_key_env)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    http = aiohttp.ClientSession(connector=connector, auto_decompress=True)
    catalog = Catalog(config)
    rules_db = connect(config.ledger_path)
    desk = ApprovalDesk(config.ledger_path)
    notifier = Notifier(http, config.enforcement.webhook_timeout_seconds)
    enforcer = Enforcer(
        config,
        combined_rules(config, rules_db),
        catalog,
        prices,
        store,
        desk,
        notifier,
        ledger.record,
        clock,
        ledger_health=ledger.health,
    )
    store.on_lost_state(ledger_seeder(enforcer, rules_db, ledger))
    await seed_budgets(enforcer, rules_db)
    enforcer.loop_resumes = resumes(rules_db)
    metrics = Metrics()
    if isinstance(store, RedisStore):
        store.observe = metrics.store_call
    gateway = Gateway(
        config,
        keys,
        catalog,
        upstreams,
        prices,
        ledger,
        http,
        enforcer,
        _router(config, catalog, prices),
        metrics,
        _telemetry(config),
        _response_cache(config, clock),
        _cache_health(config),
        Watcher(config, enforcer, prices, notifier, ledger.record),
    )
    app[GATEWAY] = gateway
    app[DASHBOARD] = dashboard = Dashboard(gateway)
    background = [
        asyncio.create_task(_refresh(gateway, rules_db, config.key_refresh_seconds)),
        asyncio.create_task(enforcer.budgets.keep_live_reservations(enforcer.clock)),
    ]
    if config.alerts.check_minutes > 0 and gateway.watcher is not None:
        background.append(asyncio.create_task(gateway.watcher.run()))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await notifier.drain()
        if gateway.telemetry is not None:
            await asyncio.get_running_loop().run_in_executor(None, gateway.telemetry.shutdown)
        await http.close()
        ledger.close(timeout=config.shutdown_grace_seconds)
        await store.close()
        if gateway.response_cache is not None:
            await gateway.response_cache.close()
        if gateway.watcher is not None:
            await gateway.watcher.close()
        keys_db.close()
        rules_db.close()
        desk.close()
        dashboard.reader.close()


def _response_cache(config: Config, clock: Callable[[], float]) -> ResponseCache | None:
    """Answers kept in this process, or in the fleet's Redis when ``store.redis_url`` is set."""
    c = config.cache
    if not c.enabled:
        return None
    if config.store.redis_url is not None:
        timeout = config.store.timeout_ms / 1000
        return RedisResponseCache(config.store.redis_url, c.ttl_seconds, config.store.key_prefix, timeout, clock)
    return MemoryResponseCache(c.ttl_seconds, c.max_entries, c.max_bytes, clock)


def _cache_health(config: Config) -> CacheHealth | None:
    o = config.observability
    return CacheHealth(o.cache_alarm_misses, o.cache_alarm_turns) if o.cache_alarm_misses > 0 else None


def _telemetry(config: Config) -> Telemetry | None:
    """OpenTelemetry export when ``observability.otlp_endpoint`` is set; no exporter is loaded otherwise."""
    if config.observability.otlp_endpoint is None:
        return None
    from tokenctl.observe.otel import Telemetry

    return Telemetry(config.observability)


def _router(config: Config, catalog: Catalog, prices: PriceBook) -> Router:
    settings = config.routing
    classifier = Classifier.load(settings.classifier.model_path) if settings.classifier else None
    return Router(settings, catalog, classifier, prices)


async def _refresh(gw: Gateway, rules_db: Database, interval: float) -> None:
    """Pick up keys and live rules changed by the CLI or the admin API."""
    loop = asyncio.get_running_loop()
    seen = await loop.run_in_executor(None, last_change, rules_db)
    while True:
        await asyncio.sleep(interval)
        try:
            await loop.run_in_executor(None, gw.keys.refresh)
            gw.enforcer.merge_resumes(await loop.run_in_executor(None, resumes, rules_db))
            changed = await loop.run_in_executor(None, last_change, rules_db)
            if changed != seen:
                await gw.reload_rules(rules_db)
                seen = changed  # only once applied: a reload that failed is tried again
        except Exception:  # a locked or missing database must not stop refreshing
            log.exception("refreshing keys or rules failed; keeping what is loaded")
