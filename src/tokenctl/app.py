"""The composition root: ``create_app(config)`` builds every part of the gateway, here and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from tokenctl.config import Config
from tokenctl.identity.keys import KeyCache
from tokenctl.ingress.http import body_limit_errors, dispatch
from tokenctl.ledger.db import connect
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.metering.pricing import PriceBook
from tokenctl.pipeline import GATEWAY, Gateway
from tokenctl.providers.upstream import Upstream
from tokenctl.routing.catalog import Catalog

log = logging.getLogger("tokenctl")

CONFIG = web.AppKey("config", Config)


def create_app(config: Config) -> web.Application:
    """An aiohttp application serving the gateway; its parts start and stop with the app."""
    # Checked now, so a bad price file stops start-up with a clear message instead of failing later.
    prices = PriceBook.from_file(config.price_overrides_path)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[body_limit_errors])
    app[CONFIG] = config
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.cleanup_ctx.append(lambda a: _gateway_lifecycle(a, prices))
    return app


async def _gateway_lifecycle(app: web.Application, prices: PriceBook) -> AsyncIterator[None]:
    config = app[CONFIG]
    ledger = LedgerWriter(config.ledger_path, queue_max=config.ledger_queue_max, batch_max=config.ledger_batch_max)
    ledger.start()
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
    gateway = Gateway(config, keys, Catalog(config), upstreams, prices, ledger, http)
    app[GATEWAY] = gateway
    refresher = asyncio.create_task(_refresh_keys(keys, config.key_refresh_seconds))
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await http.close()
        ledger.close(timeout=config.shutdown_grace_seconds)
        keys_db.close()


async def _refresh_keys(keys: KeyCache, interval: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            await loop.run_in_executor(None, keys.refresh)
        except Exception:  # a locked or missing database must not stop refreshing
            log.exception("refreshing keys failed; keeping the keys already loaded")
