"""HTTP routes of the dashboard under ``/ui``: the page, its assets, sign-in, and the JSON API it reads.

    GET  /ui/                          the single-page dashboard (login form when not signed in)
    POST /ui/login, /ui/logout         form sign-in with the admin key or a team viewer key
    GET  /ui/api/me | overview | breakdown?by= | stacked?by= | concentration | savings | sessions[/{id}] | requests[/{id}]
         | budgets | approvals | audit | health
    POST /ui/api/approvals/{id}/approve|deny   admin only
    POST /ui/api/loops/{subject}/resume        admin only

Query parameters: ``start``/``end`` (YYYY-MM-DD, inclusive, default this month), drill-down filters
``team user project model tool key provider`` (an empty value means "none"), ``limit``.
"""

from __future__ import annotations

import asyncio
import html
import queue
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from tokenctl.dashboard import queries
from tokenctl.dashboard.auth import (
    COOKIE,
    Authenticator,
    Forbidden,
    NotSignedIn,
    Viewer,
    check_csrf,
    check_origin,
    set_session_cookie,
)
from tokenctl.dashboard.budgets import budget_board
from tokenctl.dashboard.health import health
from tokenctl.dashboard.overview import overview
from tokenctl.gateway import Gateway
from tokenctl.ledger import approvals as approval_store
from tokenctl.ledger.audit import read_audit
from tokenctl.ledger.db import connect
from tokenctl.ledger.engine import UNAVAILABLE, Database
from tokenctl.ledger.loop_resumes import NotPaused, resume_paused, resumes
from tokenctl.policy.decisions import decide_approval
from tokenctl.validate import ConfigError

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make form posts send Origin: null
    "Cache-Control": "no-store",
}


class Reader:
    """A few read connections to the ledger (WAL: they do not block the writer), used from worker threads.

    Two by default, so the page's parallel calls (overview and budgets) run side by side on two cores.
    """

    def __init__(self, path: str, connections: int = 2) -> None:
        self._all = [connect(path) for _ in range(connections)]
        self._free: queue.SimpleQueue[Database] = queue.SimpleQueue()
        for db in self._all:
            self._free.put(db)

    async def run(self, work: Callable[[Database], Any]) -> Any:
        def with_connection() -> Any:
            db = self._free.get()
            try:
                return work(db)
            finally:
                self._free.put(db)

        return await asyncio.get_running_loop().run_in_executor(None, with_connection)

    def close(self) -> None:
        for db in self._all:
            db.close()


class Dashboard:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.reader = Reader(gateway.config.ledger_path)
        self.auth = Authenticator(gateway.keys, gateway.config.admin_key_env)
        self.tz = ZoneInfo(gateway.config.enforcement.timezone)
        self.assets = _load_assets()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.gw.enforcer.clock(), self.tz)


DASHBOARD = web.AppKey("dashboard", Dashboard)


def _load_assets() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("tokenctl.dashboard") / "static"
    return {
        f.name: (f.read_bytes(), _TYPES.get("." + f.name.rsplit(".", 1)[-1], "application/octet-stream"))
        for f in folder.iterdir()
        if f.is_file()
    }


def routes() -> list[web.RouteDef]:
    return [
        web.get("/ui", _to_ui_root),
        web.get("/ui/", page),
        web.get("/ui/login", login_page),
        web.post("/ui/login", login),
        web.post("/ui/logout", logout),
        web.get("/ui/static/{name}", asset),
        web.route("*", "/ui/api/{tail:.*}", api),
    ]


# -- pages ------------------------------------------------------------------------------------------


async def _to_ui_root(request: web.Request) -> web.Response:
    return _redirect("/ui/")


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_SECURITY_HEADERS})


def _asset_response(dash: Dashboard, name: str, status: int = 200) -> web.Response:
    body, content_type = dash.assets[name]
    return web.Response(body=body, status=status, content_type=content_type, headers=_SECURITY_HEADERS)


async def page(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    try:
        await dash.auth.identify(request)
    except NotSignedIn:
        return _redirect("/ui/login")
    return _asset_response(dash, "index.html")


async def login_page(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    body = request.app[DASHBOARD].assets["login.html"][0].decode()
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return web.Response(
        text=body.replace("<!--message-->", notice), status=status, content_type="text/html", headers=_SECURITY_HEADERS
    )


async def login(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    try:
        check_origin(request)
    except Forbidden as exc:
        return await login_page(request, str(exc), 403)
    form = await request.post()
    secret = str(form.get("key", "")).strip()
    if not secret:
        return await login_page(request, "Enter a key.", 400)
    try:
        viewer = await dash.auth.check_key(secret)
    except NotSignedIn as exc:
        return await login_page(request, f"Sign-in failed: {exc}.", 401)
    cookie, _ = dash.auth.issue(viewer)
    response = _redirect("/ui/" + _page_to_return_to(str(form.get("next", ""))))
    set_session_cookie(response, request, cookie)
    return response


_PAGE_LINK = re.compile(r"#/[\w./?&=%:+,~-]{0,500}")


def _page_to_return_to(fragment: str) -> str:
    """The dashboard page a shared link pointed at (``#/sessions?team=web``), kept across sign-in; nothing else."""
    return fragment if _PAGE_LINK.fullmatch(fragment) else ""


async def logout(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    try:
        check_csrf(request, await dash.auth.identify(request))
    except NotSignedIn:
        pass
    except Forbidden as exc:
        return _api_error(403, str(exc))
    response = web.Response(status=204, headers=_SECURITY_HEADERS)
    response.del_cookie(COOKIE, path="/ui")
    return response


async def asset(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    name = request.match_info["name"]
    if name not in dash.assets or name.endswith(".html"):
        return web.Response(status=404, text="not found")
    return _asset_response(dash, name)


# -- JSON API ---------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _api_error(status: int, message: str) -> web.Response:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        409: "conflict",
    }.get(status, "api_error")
    return _json({"error": {"message": message, "type": kind}}, status)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json", headers=_SECURITY_HEADERS
    )


Handler = Callable[[Dashboard, web.Request, Viewer, list[str]], Awaitable[Any]]


async def api(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    parts = [p for p in request.match_info["tail"].split("/") if p]
    try:
        viewer = await dash.auth.identify(request)
        if request.method != "GET":
            check_csrf(request, viewer)
        handler = _API.get((request.method, parts[0] if parts else ""))
        if handler is None:
            raise ApiError(
                404 if request.method in ("GET", "POST") else 405,
                f"no dashboard endpoint {request.method} {request.path}",
            )
        return _json(await handler(dash, request, viewer, parts[1:]))
    except NotSignedIn as exc:
        return _api_error(401, str(exc))
    except Forbidden as exc:
        return _api_error(403, str(exc))
    except ApiError as exc:
        return _api_error(exc.status, exc.message)
    except (ValueError, ConfigError) as exc:
        return _api_error(400, str(exc))
    except approval_store.ApprovalNotFound as exc:
        return _api_error(404, str(exc))
    except approval_store.ApprovalStateError as exc:
        return _api_error(409, str(exc))
    except UNAVAILABLE as exc:
        pending = dash.gw.ledger.pending
        return _api_error(
            503,
            f"the ledger database cannot be read right now ({str(exc).splitlines()[0]}); {pending:,} requests "
            "are held in this gateway's journal and are written when it is back",
        )


def view_of(request: web.Request, viewer: Viewer, today: date) -> queries.View:
    q = request.query
    start = _date(q.get("start"), "start") or today.replace(day=1)
    end = _date(q.get("end"), "end") or today
    if start > end:
        raise ApiError(400, f"start {start} is after end {end}")
    filters = {name: q[name] for name in queries.FILTERS if name in q}
    return queries.View(team=viewer.visible_team, filters=filters, start=start, end=end)


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(400, f"{name}: expected a date like 2026-11-01, got {value!r}") from exc


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        return max(1, min(5000, int(raw)))
    except ValueError as exc:
        raise ApiError(400, f"limit: expected a number, got {raw!r}") from exc


async def _me(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    return {
        "role": viewer.role,
        "team": viewer.team,
        "key_id": viewer.key_id,
        "csrf": viewer.csrf,
        "timezone": str(dash.tz),
        "today": dash.now().date().isoformat(),
        "content_logging": False,
        "banner": dash.gw.config.banner,
    }


async def _overview(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    """Today, this month and last month whatever the picker says, plus the range the picker selects."""
    now = dash.now()
    chosen = view_of(request, viewer, now.date())
    view = replace(chosen, start=None, end=None)

    def work(db: Any) -> dict[str, Any]:
        data = overview(db, view, now)
        picked = queries.totals(db, chosen)
        data["range"] = {
            "start": str(chosen.start),
            "end": str(chosen.end),
            "cost_usd": picked["cost_usd"],
            "requests": picked["requests"],
            "unpriced_requests": picked["unpriced_requests"],
        }
        data["ledger"] = ledger_state(dash.gw)
        return data

    return await dash.reader.run(work)


def ledger_state(gw: Gateway) -> dict[str, Any]:
    """Whether the figures are complete: rows this gateway recorded but could not write yet are not in them."""
    return {"behind": gw.ledger.health(), "pending_rows": gw.ledger.pending}


async def _breakdown(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    view = view_of(request, viewer, dash.now().date())
    by = request.query.get("by", "team")
    limit = _limit(request, 500)
    rows, total = await dash.reader.run(lambda db: queries.breakdown_with_total(db, view, by, limit))
    before = queries.previous(view)
    earlier = (
        {}
        if by == "day"
        else {
            r["group"]: r["cost_usd"]
            for r in await dash.reader.run(lambda db: queries.breakdown(db, before, by, 10_000))
        }
    )
    return {
        "previous": {"start": str(before.start), "end": str(before.end), "cost_usd": earlier},
        "by": by,
        "start": str(view.start),
        "end": str(view.end),
        "rows": [queries.public(r) for r in rows],
        "total": queries.public(total),
    }


async def _stacked(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    view = view_of(request, viewer, dash.now().date())
    by = request.query.get("by", "model")
    return await dash.reader.run(lambda db: queries.stacked(db, view, by))


async def _concentration(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    view = view_of(request, viewer, dash.now().date())
    return {
        "start": str(view.start),
        "end": str(view.end),
        **await dash.reader.run(lambda db: queries.concentration(db, view)),
    }


async def _savings(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    view = view_of(request, viewer, dash.now().date())
    return {
        "start": str(view.start),
        "end": str(view.end),
        **await dash.reader.run(lambda db: queries.savings(db, view)),
    }


async def _list_or_one(
    dash: Dashboard,
    request: web.Request,
    viewer: Viewer,
    rest: list[str],
    noun: str,
    listing: Callable[..., Any],
    detail: Callable[..., Any],
) -> Any:
    """``/ui/api/<noun>s`` lists the latest or costliest; ``/ui/api/<noun>s/<id>`` is one, if the viewer may see it."""
    view = view_of(request, viewer, dash.now().date())
    if rest:
        found = await dash.reader.run(lambda db: detail(db, view, rest[0]))
        if found is None:
            raise ApiError(404, f"no {noun} {rest[0]!r} that you may see")
        return found
    limit = _limit(request, 100)
    find = request.query.get("find", "").strip()[:200] or None
    rows = await dash.reader.run(lambda db: listing(db, view, limit + 1, find))  # one more tells if it is cut
    return {"rows": rows[:limit], "limit": limit, "more": len(rows) > limit}


async def _sessions(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    return await _list_or_one(dash, request, viewer, rest, "session", queries.sessions, queries.session_detail)


async def _requests(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    return await _list_or_one(dash, request, viewer, rest, "request", queries.requests, queries.request_detail)


async def _budgets(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    view = queries.View(team=viewer.visible_team)
    budgets = dash.gw.enforcer.budgets
    now = dash.gw.enforcer.clock()
    return {"rows": await budget_board(budgets, dash.reader.run, view, now)}


async def _approvals(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    status = request.query.get("status") or None
    rows = await dash.reader.run(lambda db: approval_store.list_approvals(db, status))
    if not viewer.is_admin:
        rows = [r for r in rows if r.get("team") == viewer.team]
    return {"rows": rows, "can_decide": viewer.is_admin}


async def _decide(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    if not viewer.is_admin:
        raise Forbidden("only the admin can approve or deny requests")
    if len(rest) != 2 or rest[1] not in ("approve", "deny"):
        raise ApiError(404, f"no dashboard endpoint POST {request.path}")
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    body = {**body, "by": "admin (dashboard)"}
    approval_id, approve = rest[0], rest[1] == "approve"
    return await dash.reader.run(lambda db: decide_approval(db, approval_id, approve, body))


async def _health(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    today = dash.now().date()
    view = view_of(request, viewer, today)
    return await dash.reader.run(lambda db: health(db, view, today, admin=viewer.is_admin))


async def _resume_loop(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    """``POST /ui/api/loops/{subject}/resume``: what ``tokenctl loops resume`` does, for the admin."""
    if not viewer.is_admin:
        raise Forbidden("only the admin can resume a paused session")
    if len(rest) != 2 or rest[1] != "resume":
        raise ApiError(404, f"no dashboard endpoint POST {request.path}")
    subject, gw = rest[0], dash.gw

    def go(db: Database) -> dict[str, Any]:
        try:
            name, allowed = resume_paused(db, gw.config.loops, subject, None, "admin (dashboard)")
        except NotPaused as exc:
            raise ApiError(404, str(exc)) from exc
        gw.enforcer.merge_resumes(resumes(db))  # in force here at once; other replicas at their next refresh
        return {"subject": subject, "rule": name, "repeats_allowed": allowed}

    return await dash.reader.run(go)


async def _audit(dash: Dashboard, request: web.Request, viewer: Viewer, rest: list[str]) -> Any:
    if not viewer.is_admin:
        raise Forbidden("the audit log is for the admin")
    limit = _limit(request, 200)
    action = request.query.get("action") or None
    return {"rows": await dash.reader.run(lambda db: read_audit(db, limit=limit, action=action))}


_API: dict[tuple[str, str], Handler] = {
    ("GET", "me"): _me,
    ("GET", "overview"): _overview,
    ("GET", "breakdown"): _breakdown,
    ("GET", "concentration"): _concentration,
    ("GET", "stacked"): _stacked,
    ("GET", "savings"): _savings,
    ("GET", "sessions"): _sessions,
    ("GET", "requests"): _requests,
    ("GET", "budgets"): _budgets,
    ("GET", "approvals"): _approvals,
    ("POST", "approvals"): _decide,
    ("GET", "audit"): _audit,
    ("GET", "health"): _health,
    ("POST", "loops"): _resume_loop,
}
