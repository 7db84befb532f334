"""Virtual keys: created once (the secret is shown only then), stored as a SHA-256 hash, listed, revoked.

The gateway never reads the database per request: ``KeyCache`` holds every key
in memory, picks up changes made by the CLI every ``key_refresh_seconds``, and
looks a key up directly only when it has never seen it (a key created a moment
ago), remembering misses for one refresh interval.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import transaction
from tokenctl.types import Principal

KEY_PREFIX = "tkc_"


class KeyNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    prefix: str
    name: str | None
    user: str | None
    team: str | None
    project: str | None
    models: tuple[str, ...]
    created_at: float
    revoked_at: float | None
    opt_in: bool = False
    role: str = "client"

    @property
    def principal(self) -> Principal:
        return Principal(
            key_id=self.key_id,
            user=self.user,
            team=self.team,
            project=self.project,
            models=self.models,
            opt_in=self.opt_in,
            role=self.role,
        )


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_virtual_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


ROLES = ("client", "viewer")  # viewer: signs in to the dashboard to see its team; cannot call models
_SELECT = "SELECT key_id, prefix, name, user, team, project, models, created_at, revoked_at, opt_in, role FROM keys"


def _info(row: tuple) -> KeyInfo:
    key_id, prefix, name, user, team, project, models, created_at, revoked_at, opt_in, role = row
    models_t = tuple(m for m in models.split(",") if m)
    return KeyInfo(key_id, prefix, name, user, team, project, models_t, created_at, revoked_at, bool(opt_in), role)


def create_key(
    db: Database,
    *,
    user: str | None = None,
    team: str | None = None,
    project: str | None = None,
    name: str | None = None,
    models: tuple[str, ...] = (),
    opt_in: bool = False,
    role: str = "client",
) -> tuple[KeyInfo, str]:
    """Create a key. Returns its record and the secret, which is not stored and cannot be shown again."""
    if role not in ROLES:
        raise ValueError(f"key role must be one of {', '.join(ROLES)}, not {role!r}")
    if role == "viewer" and not team:
        raise ValueError("a viewer key needs a team: it shows that team's spend (the admin key sees everything)")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    now = time.time()
    with transaction(db):
        db.execute(
            "INSERT INTO keys (key_id, key_hash, prefix, name, user, team, project, models, opt_in, role, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                hash_key(secret),
                secret[:10],
                name,
                user,
                team,
                project,
                ",".join(models),
                int(opt_in),
                role,
                now,
                now,
            ),
        )
    return get_key(db, key_id), secret


def get_key(db: Database, key_id: str) -> KeyInfo:
    row = db.execute(_SELECT + " WHERE key_id = ?", (key_id,)).fetchone()
    if row is None:
        raise KeyNotFound(f"no key with id {key_id!r}")
    return _info(row)


def list_keys(db: Database, *, include_revoked: bool = False) -> list[KeyInfo]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return [_info(r) for r in db.execute(_SELECT + where + " ORDER BY created_at")]


def revoke_key(db: Database, key_id: str) -> KeyInfo:
    """Revoke a key by id. Revoking twice is harmless; the first revocation time is kept."""
    now = time.time()
    with transaction(db):
        cur = db.execute(
            "UPDATE keys SET revoked_at = COALESCE(revoked_at, ?), updated_at = ? WHERE key_id = ?", (now, now, key_id)
        )
    if cur.rowcount == 0:
        raise KeyNotFound(f"no key with id {key_id!r}")
    return get_key(db, key_id)


# Keys changed this long before the newest change seen are read again at every refresh: a key revoked on a
# host whose clock is behind (or whose write committed late) still reaches every replica of a fleet.
CLOCK_SKEW_SECONDS = 300.0


class KeyCache:
    """In-memory map from key hash to principal, refreshed from the database in the background."""

    def __init__(self, db: Database, refresh_seconds: float = 2.0) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._refresh_seconds = refresh_seconds
        self._active: dict[str, Principal] = {}
        self._by_id: dict[str, Principal] = {}
        self._revoked: set[str] = set()
        self._misses: dict[str, float] = {}
        self._seen_until = 0.0

    def lookup(self, key_hash: str) -> Principal | None:
        """The principal for an active key, or None. Never touches the database."""
        return self._active.get(key_hash)

    def active_by_id(self, key_id: str) -> Principal | None:
        """The principal of an active key, by key id (dashboard sessions name the key they signed in with)."""
        return self._by_id.get(key_id)

    def is_revoked(self, key_hash: str) -> bool:
        return key_hash in self._revoked

    def recently_missed(self, key_hash: str) -> bool:
        until = self._misses.get(key_hash)
        return until is not None and until > time.monotonic()

    def refresh(self) -> None:
        """Load keys changed since the last refresh (all keys the first time). Runs in a worker thread."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_hash, key_id, user, team, project, models, opt_in, role, revoked_at, updated_at FROM keys"
                " WHERE updated_at >= ?",
                (self._seen_until - CLOCK_SKEW_SECONDS,),
            ).fetchall()
        for *fields, updated_at in rows:
            self._apply(*fields)
            self._seen_until = max(self._seen_until, updated_at)

    def load_one(self, key_hash: str) -> Principal | None:
        """Look one unknown key up in the database (a key created after the last refresh). Worker thread."""
        with self._lock:
            row = self._db.execute(
                "SELECT key_hash, key_id, user, team, project, models, opt_in, role, revoked_at FROM keys"
                " WHERE key_hash = ?",
                (key_hash,),
            ).fetchone()
        if row is None:
            if len(self._misses) > 100_000:
                self._misses.clear()
            self._misses[key_hash] = time.monotonic() + self._refresh_seconds
            return None
        self._apply(*row)
        return self._active.get(key_hash)

    def _apply(
        self,
        key_hash: str,
        key_id: str,
        user: str | None,
        team: str | None,
        project: str | None,
        models: str,
        opt_in: int,
        role: str,
        revoked_at: float | None,
    ) -> None:
        if revoked_at is not None:
            self._active.pop(key_hash, None)
            self._by_id.pop(key_id, None)
            self._revoked.add(key_hash)
            return
        models_t = tuple(m for m in models.split(",") if m)
        principal = Principal(
            key_id=key_id, user=user, team=team, project=project, models=models_t, opt_in=bool(opt_in), role=role
        )
        self._active[key_hash] = principal
        self._by_id[key_id] = principal
        self._misses.pop(key_hash, None)
