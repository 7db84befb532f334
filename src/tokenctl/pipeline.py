"""The request path, in order: ingress → identity → policy → routing → cache → budgets → provider → metering → ledger.

``handle`` is the whole story of one proxied request; every stage it calls lives in
its own package. Whatever happens, exactly one ledger entry is recorded per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from tokenctl.cache.key import CACHE_HEADER, cache_decision, cache_key
from tokenctl.cache.replay import zero_usage
from tokenctl.errors import (
    BadRequest,
    ClientGone,
    GatewayError,
    LedgerUnavailable,
    UnsupportedRoute,
    UpstreamError,
)
from tokenctl.gateway import CacheFill, Call, Gateway, RequestBody
from tokenctl.identity.attribution import attribute
from tokenctl.identity.authenticate import authenticate, client_key
from tokenctl.ingress.dialect import DIALECTS, Dialect
from tokenctl.ingress.request import decided_body, parse_body, read_body
from tokenctl.metering.limits import output_limit_for
from tokenctl.policy.access import authorize, check_caller
from tokenctl.policy.loops import first_prompt_digest
from tokenctl.policy.turns import at_turn_boundary
from tokenctl.providers.relay import FallbackNeeded, forward
from tokenctl.providers.upstream import UpstreamRequest
from tokenctl.routing.router import ROUTE_HEADER, Facts, request_kind, turn_text
from tokenctl.routing.trajectory import Signals, read_signals
from tokenctl.text import header_text
from tokenctl.translate import TRANSLATIONS
from tokenctl.translate.anthropic_to_chat import Untranslatable
from tokenctl.translate.fit import fit_chat
from tokenctl.types import Route

log = logging.getLogger("tokenctl")


async def handle(gw: Gateway, request: web.Request, dialect: Dialect) -> web.StreamResponse:
    call = Call(gw, request, dialect)
    try:
        return await _proxy(call)
    except asyncio.CancelledError:  # shutdown past its grace period: still recorded, marked partial
        call.entry.outcome, call.entry.partial = "cancelled", True
        raise
    except GatewayError as exc:
        return reject(call, exc)
    except Exception:  # the one outermost handler: log, answer in dialect, never crash
        log.exception("unexpected error in request %s", call.request_id)
        call.entry.outcome = "internal_error"
        return reject(call, GatewayError("tokenctl hit an internal error; the request id identifies it in the logs"))
    finally:
        await call.finish()


async def _proxy(call: Call) -> web.StreamResponse:
    gw, request, entry, api = call.gw, call.request, call.entry, call.dialect.api
    if not gw.ledger.accepting():  # nothing is served that could not be recorded
        raise LedgerUnavailable(
            "tokenctl cannot record requests right now (the ledger and its journal are "
            "failing); the request was not sent"
        )
    entry.principal = await authenticate(gw.keys, client_key(request.headers))
    check_caller(entry.principal)
    raw = await read_body(request, gw.config.max_body_bytes, gw.config.body_timeout_seconds)
    call.body_size = len(raw)
    body = parse_body(raw, api)
    raw = decided_body(raw, body)
    entry.requested_model = body["model"]
    entry.stream = body.get("stream") is True
    entry.attribution = attribute(request.headers, body, gw.config.tags_header)
    if gw.cache_health is not None and api == "anthropic.messages" and entry.attribution.session_id:
        call.cache_prefix = gw.cache_health.prefix(entry.attribution.session_id, body)
    entry.anthropic_beta = header_text(request.headers.get("anthropic-beta"), 1024)
    try:
        entry.route = gw.catalog.resolve(body["model"], api)
    except UnsupportedRoute:
        if api == "anthropic.count_tokens":
            return _estimate_tokens(call, raw)
        raise
    authorize(entry.principal, entry.route)
    _route(call, body)
    call.admission = admission = await gw.enforcer.check(entry, body, raw, api)  # loops, model policies
    if gw.response_cache is not None and api in _CACHEABLE_APIS:
        replayed = await _from_cache(call, body)
        if replayed is not None:
            return replayed  # nothing is sent, so nothing is reserved
    await gw.enforcer.reserve(admission, entry, body, raw, api)  # budgets, approvals
    call.request_body = RequestBody(raw, body)
    del raw, body  # the call holds them now, and drops them once the provider answers
    return await _send(call, admission.body_changed)


def _route(call: Call, body: dict[str, Any]) -> None:
    """The routing stage: a tier's deployment instead of the model asked for, when routing applies."""
    entry, router, api = call.entry, call.gw.router, call.dialect.api
    assert entry.route is not None and entry.principal is not None
    if not router.applies_to(entry.route.requested_model, entry.principal):
        return
    decision = router.choose(entry.route, api, _facts(call, body))
    if decision is None:
        return
    first, *rest = decision.routes
    entry.route_tier, entry.route_escalation = decision.tier, decision.escalation
    entry.route_score, entry.route_features = decision.score, decision.features
    note = f"{decision.tier} -> {first.upstream_model}: {decision.reason}"
    if router.settings.dry_run:  # serve what was asked for; the row says what routing would have done
        if first.upstream_model != entry.route.upstream_model or first.provider is not entry.route.provider:
            entry.would_route = first
        entry.policy = [*(entry.policy or []), f"route dry-run: would send {note}"]
        return
    if first.upstream_model != entry.route.upstream_model or first.provider is not entry.route.provider:
        entry.original_route, entry.saving_source = entry.route, "routing"
    entry.route = first
    call.fallbacks = tuple(rest)
    entry.policy = [*(entry.policy or []), f"route {note}"]


async def _from_cache(call: Call, body: dict[str, Any]) -> web.Response | None:
    """The cache stage: a stored answer for an exact repeat, or None (and, for a cacheable miss, a place to
    keep the answer once it is complete)."""
    gw, entry = call.gw, call.entry
    assert gw.response_cache is not None and entry.route is not None and entry.principal is not None
    model = entry.route.upstream_model
    use, why = cache_decision(gw.config.cache, call.request.headers, body, entry.principal, model)
    if not use:
        entry.response_cache = "bypass"
        entry.policy = [*(entry.policy or []), f"response cache bypassed: {why}"]
        return None
    key = cache_key(gw.config.cache, entry.principal, call.dialect.api, model, body)
    cached = await gw.response_cache.get(key)
    if cached is None:
        entry.response_cache = "miss"
        call.cache_fill = CacheFill(key, gw.enforcer.clock())
        return None
    entry.status, entry.response_cache, entry.cache_avoided = 200, "hit", cached.cost_nanousd
    entry.response_model = cached.model
    age = gw.enforcer.clock() - cached.stored_at
    entry.policy = [
        *(entry.policy or []),
        f"response cache hit: an answer stored {age:.0f}s ago replayed; ${cached.cost_nanousd / 1e9:.6f} avoided",
    ]
    headers = {**_id_headers(call), CACHE_HEADER: "hit", "content-type": cached.content_type}
    if cached.stream:
        headers["cache-control"] = "no-cache"
    return web.Response(body=zero_usage(cached.body, cached.stream), status=200, headers=headers)


_CACHEABLE_APIS = frozenset({"anthropic.messages", "openai.chat", "openai.responses"})


def _facts(call: Call, body: dict[str, Any]) -> Facts:
    entry, api, router = call.entry, call.dialect.api, call.gw.router
    assert entry.principal is not None
    session = entry.attribution.session_id if entry.attribution else None
    if session is None:  # no session id: the key and the conversation's first prompt name the session
        digest = first_prompt_digest(body, api)
        session = f"{entry.principal.key_id}:{digest}" if digest else None
    return Facts(
        entry.principal,
        entry.attribution,
        request_kind(body, api),
        call.body_size // 4,
        turn_text(body, api) if router.classifier is not None else "",  # only the classifier reads the text
        header_text(call.request.headers.get(ROUTE_HEADER), 64),
        new_turn=at_turn_boundary(body, api),
        signals=read_signals(body, api) if router.settings.escalation is not None else Signals(),
        session=session,
    )


async def _send(call: Call, body_changed: bool) -> web.StreamResponse:
    """Forward to the route; on 429/5xx/529, a timeout or no connection before any byte, try the next deployment."""
    entry = call.entry
    pending = list(call.fallbacks)
    while True:
        assert entry.route is not None
        try:
            upstream = _prepare(call, body_changed)
        except Untranslatable as exc:  # this deployment cannot take the request; another one may
            if not pending:
                raise
            skipped, entry.route = entry.route, pending.pop(0)
            entry.policy = [*(entry.policy or []), f"skipped {skipped.upstream_model}: {exc.message}"]
            await _readmit(call)
            continue
        try:
            return await forward(call, upstream, retry_allowed=bool(pending))
        except FallbackNeeded as exc:
            failed, entry.route = entry.route, pending.pop(0)
            entry.policy = [
                *(entry.policy or []),
                f"fallback: {failed.provider.name}/{failed.upstream_model} "
                f"{exc.reason}; trying {entry.route.upstream_model}",
            ]
            await _readmit(call)


async def _readmit(call: Call) -> None:
    """Every attempt is admitted at its own price: the reservation follows the deployment tried next."""
    if call.admission is not None and call.request_body is not None:
        await call.gw.enforcer.readmit(
            call.admission, call.entry, call.request_body.parsed, call.body_size, call.dialect.api
        )


def _prepare(call: Call, body_changed: bool) -> UpstreamRequest:
    """The upstream request for the current route, translated when the provider speaks another API."""
    route = call.entry.route
    assert route is not None and call.request_body is not None
    raw, body = call.request_body.raw, call.request_body.parsed
    upstream = call.gw.upstreams[route.provider.name]
    if route.upstream_api is None:
        call.upstream_dialect, call.translation, call.translator = call.dialect, None, None
        followed = call.admission.stream if call.admission is not None else None
        if followed is not None and followed.assemble:  # streamed upstream so a budget can stop it; JSON back
            note = "streamed upstream and assembled: its reservation grows with the output"
            call.entry.policy = [*(call.entry.policy or []), note]
            return upstream.prepare(
                call.dialect.api, call.request.headers, raw, {**body, "stream": True}, route, body_changed=True
            )
        return upstream.prepare(call.dialect.api, call.request.headers, raw, body, route, body_changed=body_changed)
    call.translation = translation = TRANSLATIONS[(call.dialect.api, route.upstream_api)]
    try:
        limit = output_limit_for(route.upstream_model, call.gw.config.enforcement.default_max_output_tokens)
        translated, dropped = translation.request(body, route.upstream_model, limit)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # malformed parts: the client's 400
        raise BadRequest(
            f"the request cannot be translated for {route.upstream_model}: malformed {type(exc).__name__} {exc}"
        ) from exc
    if route.upstream_api == "openai.chat":
        dropped = [*dropped, *fit_chat(translated, route.provider.chat_fields)]
    call.upstream_dialect = DIALECTS[route.upstream_api]
    call.translator = translation.stream(call.body_size // 4, body)
    note = f"translated {call.dialect.api} -> {route.upstream_api}" + (f" ({'; '.join(dropped)})" if dropped else "")
    call.entry.policy = [*(call.entry.policy or []), note]
    return upstream.prepare(
        route.upstream_api,
        call.request.headers,
        orjson.dumps(translated),
        translated,
        Route(route.provider, route.upstream_model, route.upstream_model),
        body_changed=True,
    )


def _estimate_tokens(call: Call, raw: bytes) -> web.Response:
    """count_tokens for a model whose provider cannot count: a local estimate (about 4 bytes per token)."""
    call.entry.status = 200
    body = b'{"input_tokens":%d}' % max(1, len(raw) // 4)
    return web.Response(body=body, content_type="application/json", headers=_id_headers(call))


def _id_headers(call: Call) -> dict[str, str]:
    return {"request-id": call.request_id, "x-request-id": call.request_id}


_OUTCOMES: dict[type[GatewayError], str] = {ClientGone: "client_disconnected"}


def _status_for_client(call: Call, exc: GatewayError) -> int:
    """The status sent, which a client must read as final. Codex retries a 402 or 403 five times (6 requests,
    seconds of "Reconnecting…") but shows a 400's message once, so a policy stop (budget, loop, approval,
    policy) is a 400 for Codex. The ledger keeps the stop's own status (402/403), noted on the row."""
    attribution = call.entry.attribution
    if exc.status in (402, 403) and not exc.retryable and attribution is not None and attribution.tool == "codex":
        entry = call.entry
        entry.policy = [*(entry.policy or []), f"answered 400 instead of {exc.status}: Codex retries {exc.status}"]
        return 400
    return exc.status


def reject(call: Call, exc: GatewayError) -> web.Response:
    entry = call.entry
    entry.status = exc.status
    entry.error = exc.message
    if entry.outcome == "ok":
        entry.outcome = _OUTCOMES.get(type(exc)) or ("upstream_error" if isinstance(exc, UpstreamError) else "rejected")
    headers = _id_headers(call)
    headers.update(exc.headers())
    if not exc.retryable:
        headers["x-should-retry"] = "false"
    status = _status_for_client(call, exc)
    return web.Response(
        body=call.dialect.render_error(exc, call.request_id),
        status=status,
        content_type="application/json",
        headers=headers,
    )
