"""The admin HTTP API under ``/admin/``, guarded by the admin key (``$TOKENCTL_ADMIN_KEY`` by default).

    GET    /admin/budgets                     budgets (config and live)
    GET    /admin/budgets/status              spent / reserved / limit / resets-at per budget member
    PUT    /admin/budgets/{name}              create or replace a live budget (JSON, the YAML fields)
    DELETE /admin/budgets/{name}
    GET|PUT|DELETE /admin/policies[/{name}]   model policies, the same way
    GET|PUT|DELETE /admin/approval-rules[/{name}]
    GET    /admin/approvals?status=pending    held requests
    POST   /admin/approvals/{id}/approve      {"by", "note", "for_user_hours", "for_user_usd"}
    POST   /admin/approvals/{id}/deny         {"by", "note"}
    GET    /admin/audit?limit=100&action=block
    GET    /admin/alerts?limit=100            alerts raised (spend anomalies, cache health), newest first
    POST   /admin/alerts/check                read the ledger for alerts now (the watcher does every few minutes)
    GET    /admin/loops                       latest loop detection per session and rule
    POST   /admin/loops/{session}/resume      {"by", "rule"}: let a paused session go on

Errors are ``{"error": {"message", "type"}}`` with 400/401/403/404/409.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from tokenctl.gateway import GATEWAY, Gateway
from tokenctl.ledger import approvals as approval_store
from tokenctl.ledger.audit import read_audit
from tokenctl.ledger.db import connect
from tokenctl.ledger.feedback import FeedbackError, parse_outcome, record_feedback
from tokenctl.ledger.loop_resumes import NotPaused, detections, resume_paused, resumes
from tokenctl.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenctl.policy.decisions import decide_approval
from tokenctl.policy.manage import RuleError, delete_rule, put_rule
from tokenctl.policy.status import budget_status
from tokenctl.validate import ConfigError
from tokenctl.watch.alerts_log import recent_alerts

_KINDS = {"budgets": "budget", "policies": "policy", "approval-rules": "approval"}


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict",
    }.get(status, "api_error")
    return _json({"error": {"message": message, "type": kind}}, status)


def check_admin(gw: Gateway, headers: Any) -> None:
    expected = os.environ.get(gw.config.admin_key_env)
    if not expected:
        raise AdminError(403, f"the admin API is off: set {gw.config.admin_key_env} in the gateway's environment")
    auth = headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise AdminError(401, "admin key required: send it as Authorization: Bearer <admin key>")


async def admin_dispatch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    try:
        check_admin(gw, request.headers)
        parts = [p for p in request.path.split("/")[2:] if p]
        return await _route(gw, request, parts)
    except AdminError as exc:
        return _error(exc.status, exc.message)
    except (ConfigError, RuleError) as exc:
        return _error(400, str(exc))
    except approval_store.ApprovalNotFound as exc:
        return _error(404, str(exc))
    except approval_store.ApprovalStateError as exc:
        return _error(409, str(exc))


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics`` in Prometheus's text format; the admin key is needed unless ``metrics_public``."""
    gw = request.app[GATEWAY]
    if not gw.config.observability.metrics_public:
        try:
            check_admin(gw, request.headers)
        except AdminError as exc:
            return _error(exc.status, exc.message)
    body = await gw.metrics.render(gw.ledger, gw.enforcer.budgets, gw.enforcer.clock())
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _route(gw: Gateway, request: web.Request, parts: list[str]) -> web.StreamResponse:
    method = request.method
    if parts == ["budgets", "status"] and method == "GET":
        return _json(await _status(gw))
    if parts and parts[0] in _KINDS:
        return await _rules(gw, request, _KINDS[parts[0]], parts[1:])
    if parts and parts[0] == "approvals":
        return await _approvals(gw, request, parts[1:])
    if parts and parts[0] == "loops":
        return await _loops(gw, request, parts[1:])
    if parts and parts[0] == "alerts":
        return await _alerts(gw, request, parts[1:])
    if parts == ["feedback"] and method == "POST":
        return await _feedback(gw, request)
    if parts == ["audit"] and method == "GET":
        q = request.query
        limit = _int_param(q.get("limit", "100"), "limit")
        rows = await _in_db(gw, lambda db: read_audit(db, limit=limit, action=q.get("action"), since=q.get("since")))
        return _json({"data": rows})
    raise AdminError(404, f"no admin endpoint {method} {request.path}")


async def _status(gw: Gateway) -> dict[str, Any]:
    # Members are listed from the ledger: first write what was recorded (a member's first request, settled but
    # not yet written, would otherwise be missing until the writer's next cycle).
    await asyncio.get_running_loop().run_in_executor(None, gw.ledger.flush, 5.0)
    db = connect(gw.config.ledger_path)
    try:
        return {"data": await budget_status(gw.enforcer.budgets, db, gw.enforcer.clock())}
    finally:
        db.close()


async def _rules(gw: Gateway, request: web.Request, kind: str, rest: list[str]) -> web.Response:
    method = request.method
    if not rest and method == "GET":
        section = {"budget": "budgets", "policy": "policies", "approval": "approvals"}[kind]
        rules = getattr(gw.enforcer.rules, section)
        return _json({"data": [r.to_dict() for r in rules]})
    if len(rest) != 1:
        raise AdminError(404, f"no admin endpoint {method} {request.path}")
    name = rest[0]
    actor = request.headers.get("x-tokenctl-actor", "admin-api")
    if method == "PUT":
        definition = await _body(request)
        definition["name"] = name
        rule = await _in_db(gw, lambda db: put_rule(db, gw.config, kind, definition, actor))
        await _reload(gw)
        return _json({"data": rule.to_dict()})
    if method == "DELETE":
        await _in_db(gw, lambda db: delete_rule(db, gw.config, kind, name, actor))
        await _reload(gw)
        return _json({"deleted": name})
    raise AdminError(404, f"no admin endpoint {method} {request.path}")


async def _approvals(gw: Gateway, request: web.Request, rest: list[str]) -> web.Response:
    if not rest and request.method == "GET":
        status = request.query.get("status")
        return _json({"data": await _in_db(gw, lambda db: approval_store.list_approvals(db, status))})
    if len(rest) == 2 and rest[1] in ("approve", "deny") and request.method == "POST":
        body = await _body(request, allow_empty=True)
        approval_id, approve = rest[0], rest[1] == "approve"
        result = await _in_db(gw, lambda db: decide_approval(db, approval_id, approve, body))
        return _json({"data": result})
    raise AdminError(404, f"no admin endpoint {request.method} {request.path}")


async def _loops(gw: Gateway, request: web.Request, rest: list[str]) -> web.Response:
    """``GET /admin/loops``: latest detection per session and rule; ``POST /admin/loops/{session}/resume``."""
    if not rest and request.method == "GET":
        limit = _int_param(request.query.get("limit", "100"), "limit")
        return _json({"data": await _in_db(gw, lambda db: detections(db, limit))})
    if len(rest) == 2 and rest[1] == "resume" and request.method == "POST":
        body = await _body(request, allow_empty=True)
        subject, rule = rest[0], body.get("rule")
        by = str(body.get("by") or "admin-api")

        def go(db: Any) -> dict[str, Any]:
            name, allowed = resume_paused(db, gw.config.loops, subject, rule, by)
            gw.enforcer.merge_resumes(resumes(db))  # in force here at once; other replicas at their next refresh
            return {"subject": subject, "rule": name, "repeats_allowed": allowed}

        try:
            return _json({"data": await _in_db(gw, go)})
        except NotPaused as exc:
            raise AdminError(404, str(exc)) from exc
    raise AdminError(404, f"no admin endpoint {request.method} {request.path}")


async def _alerts(gw: Gateway, request: web.Request, rest: list[str]) -> web.Response:
    if not rest and request.method == "GET":
        limit = _int_param(request.query.get("limit", "100"), "limit")
        return _json({"data": await _in_db(gw, lambda db: recent_alerts(db, limit))})
    if rest == ["check"] and request.method == "POST" and gw.watcher is not None:
        raised = await gw.watcher.check()
        return _json(
            {"data": [{"action": a.action, "subject": a.subject, "day": a.day, "detail": a.detail} for a in raised]}
        )
    raise AdminError(404, f"no admin endpoint {request.method} {request.path}")


async def _feedback(gw: Gateway, request: web.Request) -> web.Response:
    """``POST /admin/feedback`` {session_id | request_id, outcome, source}: CI results, "PR merged"."""
    body = await _body(request)
    try:
        outcome = parse_outcome(body.get("outcome"))
        session, req = body.get("session_id"), body.get("request_id")
        for name, value in (("session_id", session), ("request_id", req), ("source", body.get("source"))):
            if value is not None and not isinstance(value, str):
                raise FeedbackError(f"{name} must be a string")
        now = gw.enforcer.clock()
        source = body.get("source")
        result = await _in_db(
            gw,
            lambda db: record_feedback(
                db, session_id=session, request_id=req, outcome=outcome, source=source, key_id="admin", now=now
            ),
        )
    except FeedbackError as exc:
        raise AdminError(400, str(exc)) from exc
    return _json({"data": result})


async def _reload(gw: Gateway) -> None:
    db = connect(gw.config.ledger_path)
    try:
        await gw.reload_rules(db)
    finally:
        db.close()


async def _in_db(gw: Gateway, work: Callable[[Any], Any]) -> Any:
    def run() -> Any:
        db = connect(gw.config.ledger_path)
        try:
            return work(db)
        finally:
            db.close()

    return await asyncio.get_running_loop().run_in_executor(None, run)


async def _body(request: web.Request, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw and allow_empty:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AdminError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise AdminError(400, "body must be a JSON object")
    return body


def _int_param(value: str, name: str) -> int:
    try:
        return max(1, min(10_000, int(value)))
    except ValueError as exc:
        raise AdminError(400, f"{name}: must be an integer") from exc
