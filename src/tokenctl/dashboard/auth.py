"""Who may look at the dashboard: the admin key sees everything, a team viewer key sees its own team.

Browsers sign in with a form and get a signed, HttpOnly, SameSite=Strict session cookie; scripts
send a key as ``Authorization: Bearer``. State-changing requests from a cookie session also need
the session's CSRF token in ``X-CSRF-Token`` and, when the browser sends one, a same-origin
``Origin``. Sessions are stateless (HMAC-signed), so any replica sharing the admin key or
``TOKENCTL_UI_SECRET`` accepts them, and rotating either signs everyone out. A viewer session ends
as soon as its key is revoked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tokenctl.identity.keys import KeyCache, hash_key

COOKIE = "tokenctl_ui"
SESSION_SECONDS = 8 * 3600
SECRET_ENV = "TOKENCTL_UI_SECRET"


class NotSignedIn(Exception):
    """No valid session or key: the API answers 401, pages redirect to the login form."""


class Forbidden(Exception):
    """Signed in, but not allowed: the API answers 403."""


@dataclass(frozen=True, slots=True)
class Viewer:
    role: str  # admin | viewer
    team: str | None = None  # a viewer's team
    key_id: str | None = None
    csrf: str | None = None  # None for bearer requests (no cookie, nothing to forge)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def visible_team(self) -> str | None:
        """The team every query is limited to; None = all teams."""
        return None if self.is_admin else self.team


def _admin_key(admin_key_env: str) -> str | None:
    return os.environ.get(admin_key_env) or None


def signing_secret(admin_key_env: str) -> bytes:
    """``TOKENCTL_UI_SECRET``, else derived from the admin key, else random for this process."""
    explicit = os.environ.get(SECRET_ENV)
    if explicit:
        return hashlib.sha256(b"tokenctl-ui-secret:" + explicit.encode()).digest()
    admin = _admin_key(admin_key_env)
    if admin:
        return hashlib.sha256(b"tokenctl-ui-session:" + admin.encode()).digest()
    return secrets.token_bytes(32)


class Authenticator:
    def __init__(self, keys: KeyCache, admin_key_env: str) -> None:
        self.keys = keys
        self.admin_key_env = admin_key_env
        self._secret = signing_secret(admin_key_env)

    # -- signing in -------------------------------------------------------------------------------

    async def check_key(self, secret: str) -> Viewer:
        """The viewer a key signs in as; NotSignedIn with the reason otherwise."""
        admin = _admin_key(self.admin_key_env)
        if admin and hmac.compare_digest(secret.encode(), admin.encode()):
            return Viewer("admin")
        key_hash = hash_key(secret)
        principal = self.keys.lookup(key_hash)
        if principal is None and not self.keys.is_revoked(key_hash):
            principal = await asyncio.get_running_loop().run_in_executor(None, self.keys.load_one, key_hash)
        if principal is None:
            raise NotSignedIn("unknown or revoked key")
        if principal.role != "viewer":
            raise NotSignedIn(
                "this is a client key for calling models; the dashboard needs a viewer key "
                "(tokenctl keys create --viewer --team TEAM) or the admin key"
            )
        return Viewer("viewer", team=principal.team, key_id=principal.key_id)

    def issue(self, viewer: Viewer, now: float | None = None) -> tuple[str, Viewer]:
        """A signed cookie value for ``viewer`` and the viewer with its new CSRF token."""
        csrf = secrets.token_urlsafe(24)
        payload = {
            "r": viewer.role,
            "t": viewer.team,
            "k": viewer.key_id,
            "c": csrf,
            "e": int((now or time.time()) + SESSION_SECONDS),
        }
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
        return f"{body}.{self._sign(body)}", Viewer(viewer.role, viewer.team, viewer.key_id, csrf)

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    # -- each request -----------------------------------------------------------------------------

    async def identify(self, request: web.Request) -> Viewer:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return await self.check_key(auth[7:].strip())
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            raise NotSignedIn("sign in with the admin key or a team viewer key")
        return self._from_cookie(cookie)

    def _from_cookie(self, cookie: str) -> Viewer:
        body, _, signature = cookie.partition(".")
        if not signature or not hmac.compare_digest(signature, self._sign(body)):
            raise NotSignedIn("your session is not valid any more; sign in again")
        try:
            payload: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise NotSignedIn("your session is not valid any more; sign in again") from exc
        if payload.get("e", 0) < time.time():
            raise NotSignedIn("your session expired; sign in again")
        viewer = Viewer(payload["r"], payload.get("t"), payload.get("k"), payload.get("c"))
        if viewer.is_admin and not _admin_key(self.admin_key_env):
            raise NotSignedIn("the admin key is no longer configured")
        if not viewer.is_admin:
            principal = self.keys.active_by_id(viewer.key_id or "")
            if principal is None or principal.role != "viewer" or principal.team != viewer.team:
                raise NotSignedIn("your viewer key was revoked or changed; sign in again")
        return viewer


def check_csrf(request: web.Request, viewer: Viewer) -> None:
    """Cookie sessions must echo their CSRF token and come from this origin; bearer requests need neither."""
    if viewer.csrf is None:
        return
    token = request.headers.get("x-csrf-token", "")
    if not token or not hmac.compare_digest(token, viewer.csrf):
        raise Forbidden("missing or wrong X-CSRF-Token for this session; reload the page")
    check_origin(request)


def check_origin(request: web.Request) -> None:
    origin = request.headers.get("origin")
    if origin and origin != f"{request.scheme}://{request.host}":
        raise Forbidden(f"cross-origin request from {origin} refused")


def set_session_cookie(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("x-forwarded-proto") == "https",
    )
