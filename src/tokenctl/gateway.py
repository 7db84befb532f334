"""What the request path shares: the assembled ``Gateway`` (built once by ``app.create_app``) and one ``Call``
per request in flight. Every stage reads these; none of them imports another stage to get at them."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from tokenctl.config import Config
from tokenctl.identity.keys import KeyCache
from tokenctl.ingress.dialect import Dialect
from tokenctl.ledger.record import LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.metering.pricing import PriceBook
from tokenctl.policy.enforce import Admission, Enforcer
from tokenctl.policy.reload import reload_rules
from tokenctl.providers.upstream import Upstream
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.router import Router
from tokenctl.translate import StreamTranslator, Translation
from tokenctl.types import Route

if TYPE_CHECKING:
    from tokenctl.metering.stream import StreamMeter


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

    async def reload_rules(self, rules_db: Any) -> None:
        """Apply budgets, policies and approval rules changed in the ledger database (CLI or admin API)."""
        await reload_rules(self.config, self.enforcer, rules_db)


GATEWAY = web.AppKey("gateway", Gateway)


_ID_PREFIX = "req_tk_" + os.urandom(6).hex()  # random per process, so ids stay unique across restarts
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


class Call:
    """One request in flight: its id, timers and the ledger entry being filled in."""

    __slots__ = (
        "admission",
        "body_size",
        "dialect",
        "entry",
        "fallbacks",
        "gw",
        "meter",
        "request",
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
        self.upstream_dialect = dialect  # the API the provider answers in (another one when translating)
        self.translation: Translation | None = None
        self.translator: StreamTranslator | None = None
