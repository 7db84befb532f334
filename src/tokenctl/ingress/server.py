"""The HTTP server around the app: requests aiohttp itself cannot parse (a control byte in a header, a broken
request line) are answered in the client's dialect with a request id and a ledger row, not as a plain-text
400 with a logged traceback."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tokenctl.gateway import GATEWAY, new_request_id
from tokenctl.ingress import dialect as d
from tokenctl.ledger.record import LedgerEntry

log = logging.getLogger("tokenctl")


class _GatewayConnection(RequestHandler):
    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = getattr(exc, "message", None) or message or str(exc)
        reason = str(reason).splitlines()[0][:200]
        log.info("malformed HTTP request from %s: %s", request.remote, reason)
        return _refuse(self._manager, request, status, reason)


def _refuse(server: Any, request: Any, status: int, reason: str) -> web.Response:
    try:
        path = request.path
    except Exception:  # no usable request line
        path = ""
    dialect = d.ANTHROPIC_MESSAGES if "/messages" in path else d.OPENAI_CHAT
    request_id = new_request_id()
    body = dialect.error_body("invalid_request_error", f"malformed HTTP request: {reason}", request_id)
    app: web.Application | None = getattr(server, "tokenctl_app", None)
    gateway = app.get(GATEWAY) if app is not None else None
    if gateway is not None:
        gateway.ledger.record(
            LedgerEntry(
                request_id=request_id,
                started_at=time.time(),
                api=dialect.api,
                status=status,
                outcome="rejected",
                error=f"malformed HTTP: {reason}",
            )
        )
    response = web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers={"request-id": request_id, "x-request-id": request_id, "x-should-retry": "false"},
    )
    response.force_close()
    return response


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _GatewayConnection(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparseable requests in the client's dialect."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GatewayServer
        server.tokenctl_app = self.app  # type: ignore[attr-defined]
        return server
