"""The HTTP surface: which path goes to which handler.

Routing uses the path's ending only, so a base URL with a prefix works
(``/team-a/v1/messages``) and the query string (``?beta=true``) is ignored.
Preflight ``HEAD /`` and ``HEAD /api/hello`` answer at once, without auth.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from tokenctl.errors import AuthError, PermissionDenied
from tokenctl.gateway import GATEWAY, Gateway, new_request_id
from tokenctl.identity.authenticate import authenticate, client_key
from tokenctl.ingress import dialect as d
from tokenctl.ledger.record import LedgerEntry
from tokenctl.pipeline import handle
from tokenctl.policy.access import check_caller, may_use

Handler = Callable[[Gateway, web.Request], Awaitable[web.StreamResponse]]

# (method, path ending) → dialect of the proxied API; longest endings first.
PROXY_ROUTES: tuple[tuple[str, str, d.Dialect], ...] = (
    ("POST", "/v1/messages/count_tokens", d.ANTHROPIC_COUNT_TOKENS),
    ("POST", "/v1/messages", d.ANTHROPIC_MESSAGES),
    ("POST", "/v1/chat/completions", d.OPENAI_CHAT),
    ("POST", "/chat/completions", d.OPENAI_CHAT),
    ("POST", "/v1/responses", d.OPENAI_RESPONSES),
    ("POST", "/responses", d.OPENAI_RESPONSES),
)
_HEALTH_PATHS = ("/", "/api/hello", "/health", "/healthz")


def _id_headers() -> dict[str, str]:
    rid = new_request_id()
    return {"request-id": rid, "x-request-id": rid}


async def dispatch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    path, method = request.path, request.method
    if request.headers.get("upgrade", "").lower() == "websocket":
        return _refuse(
            gw,
            d.OPENAI_RESPONSES,
            426,
            "invalid_request_error",
            "WebSocket transport is not supported; use HTTPS with server-sent events",
        )
    for route_method, ending, dialect in PROXY_ROUTES:
        if path.endswith(ending):
            if method != route_method:
                return _refuse(
                    gw,
                    dialect,
                    405,
                    "invalid_request_error",
                    f"{method} is not allowed on {ending}; use {route_method}",
                )
            return await handle(gw, request, dialect)
    if path.endswith(("/v1/models", "/models")) and method == "GET":
        return await list_models(gw, request)
    if path.endswith("/ready") and method in ("HEAD", "GET"):
        return await readiness(gw)
    if path in _HEALTH_PATHS and method in ("HEAD", "GET"):
        return web.Response(status=200, headers=_id_headers(), text="" if method == "HEAD" else "ok")
    family = d.ANTHROPIC_MESSAGES if "anthropic-version" in request.headers else d.OPENAI_CHAT
    return _refuse(gw, family, 404, "not_found_error", f"no such endpoint: {method} {path[:200]}", code="unknown_url")


def _refuse(
    gw: Gateway, dialect: d.Dialect, status: int, kind: str, message: str, code: str | None = None
) -> web.Response:
    """An error answered before any handler ran, recorded in the ledger like every request with an id."""
    response = _error(dialect, status, kind, message, code)
    entry = LedgerEntry(
        request_id=response.headers["request-id"],
        started_at=time.time(),
        api=dialect.api,
        status=status,
        outcome="rejected",
        error=message,
    )
    gw.ledger.record(entry)
    return response


async def readiness(gw: Gateway) -> web.Response:
    """``/ready``: 200 while the ledger keeps up and the budget store answers, else 503 with the reason (take
    the replica out of rotation). ``/health`` only says the process serves."""
    reason = gw.ledger.health()
    if reason is None:
        store = await gw.enforcer.store.ping()
        reason = None if store is None else f"budget store unavailable: {store}"
    body: dict[str, object] = {"ready": reason is None, "ledger_pending": gw.ledger.pending}
    if reason is not None:
        body["reason"] = reason
    return web.json_response(body, status=200 if reason is None else 503, headers=_id_headers())


def _error(dialect: d.Dialect, status: int, kind: str, message: str, code: str | None = None) -> web.Response:
    headers = _id_headers()
    headers["x-should-retry"] = "false"
    body = dialect.error_body(kind, message, headers["request-id"], code)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def list_models(gw: Gateway, request: web.Request) -> web.Response:
    """The models this key may use, in Anthropic's shape if the client sent anthropic-version, else OpenAI's."""
    anthropic = "anthropic-version" in request.headers
    dialect = d.ANTHROPIC_MODELS if anthropic else d.OPENAI_MODELS
    try:
        principal = await authenticate(gw.keys, client_key(request.headers))
        check_caller(principal)
    except (AuthError, PermissionDenied) as exc:
        return _refuse(gw, dialect, exc.status, exc.kind, exc.message)
    now = int(time.time())
    models = [(m, owner) for m, owner in gw.catalog.listed_models() if may_use(principal, m)]
    if anthropic:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"} for m, _ in models]
        body = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        body = {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": now, "owned_by": o} for m, o in models],
        }
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=_id_headers())


@web.middleware
async def body_limit_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors aiohttp raises before our handler runs, rendered in the client's dialect."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        dialect = d.ANTHROPIC_MESSAGES if "/messages" in request.path else d.OPENAI_CHAT
        return _error(dialect, exc.status, "invalid_request_error", exc.reason)
