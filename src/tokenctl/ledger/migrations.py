"""Named, append-only schema migrations for the SQLite ledger.

Never edit a migration that has shipped: add a new ``mNNN_<what>`` function and
append it to ``MIGRATIONS``. Applied names are kept in ``_migrations``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Migration = Callable[[sqlite3.Connection], None]


def m001_create_keys(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE keys (
            key_id      TEXT PRIMARY KEY,
            key_hash    TEXT NOT NULL UNIQUE,   -- sha256 of the secret; the secret is never stored
            prefix      TEXT NOT NULL,          -- first characters, to recognise a key in listings
            name        TEXT,
            user        TEXT,
            team        TEXT,
            project     TEXT,
            models      TEXT NOT NULL DEFAULT '', -- comma-separated allowlist; empty = any
            created_at  REAL NOT NULL,
            revoked_at  REAL,
            updated_at  REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX keys_updated_at ON keys (updated_at)")


def m002_create_requests(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            request_id            TEXT PRIMARY KEY,
            ts                    TEXT NOT NULL,     -- start, UTC ISO-8601 with milliseconds and Z
            duration_ms           REAL NOT NULL,
            ttft_ms               REAL,
            api                   TEXT NOT NULL,     -- anthropic.messages | openai.chat | openai.responses | …
            stream                INTEGER NOT NULL,
            status                INTEGER NOT NULL,  -- HTTP status the client received
            outcome               TEXT NOT NULL,     -- ok | upstream_error | rejected | client_disconnected | stream_failed
            partial               INTEGER NOT NULL DEFAULT 0,
            error                 TEXT,
            key_id                TEXT,
            user                  TEXT,
            team                  TEXT,
            project               TEXT,
            tool                  TEXT,
            tool_version          TEXT,
            session_id            TEXT,
            device_id             TEXT,
            tags                  TEXT,              -- JSON object
            provider              TEXT,
            requested_model       TEXT,
            model                 TEXT,              -- model sent upstream
            response_model        TEXT,              -- model the provider said it used
            upstream_request_id   TEXT,
            input_tokens          INTEGER NOT NULL DEFAULT 0,  -- uncached input
            cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
            cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens         INTEGER NOT NULL DEFAULT 0,  -- includes reasoning
            reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
            cost_usd              TEXT NOT NULL DEFAULT '0',   -- exact Decimal
            cost_nanousd          INTEGER NOT NULL DEFAULT 0,  -- for SQL sums
            list_cost_usd         TEXT NOT NULL DEFAULT '0',
            cost_source           TEXT,
            cost_is_estimate      INTEGER NOT NULL DEFAULT 0,
            priced                INTEGER NOT NULL DEFAULT 1,
            price_version         TEXT,
            anthropic_beta        TEXT,
            raw_usage             TEXT               -- provider usage JSON as received, for re-metering
        )
        """
    )


def m003_index_requests(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX requests_ts ON requests (ts)")
    for column in ("team", "user", "project", "key_id", "session_id"):
        db.execute(f"CREATE INDEX requests_{column} ON requests ({column}, ts)")


def m004_enforcement(db: sqlite3.Connection) -> None:
    """Budgets, policies and approvals: ledger columns, the audit log, live rules, approvals, key opt-in."""
    for column, kind in (("reserved_usd", "TEXT"), ("funding", "TEXT"), ("policy", "TEXT"), ("approval_id", "TEXT")):
        db.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX requests_funding ON requests (funding, ts)")
    db.execute("ALTER TABLE keys ADD COLUMN opt_in INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        CREATE TABLE audit_log (
            id          INTEGER PRIMARY KEY,
            ts          TEXT NOT NULL,      -- UTC ISO-8601
            actor       TEXT NOT NULL,      -- key id for request decisions; 'admin', 'cli' or a name for changes
            action      TEXT NOT NULL,      -- block | downgrade | rewrite | clamp | rate_limit | deny | approval.* | budget.* | policy.* | notify
            rule        TEXT,               -- the budget or policy that decided
            subject     TEXT,               -- who or what it was about (team payments, user alice, apr_…)
            request_id  TEXT,
            detail      TEXT                -- one line of text
        )
        """
    )
    db.execute("CREATE INDEX audit_log_ts ON audit_log (ts)")
    db.execute(
        """
        CREATE TABLE rules (
            kind        TEXT NOT NULL,      -- budget | policy | approval
            name        TEXT NOT NULL,
            definition  TEXT NOT NULL,      -- JSON, the same fields as in the YAML file
            updated_at  REAL NOT NULL,
            deleted     INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, name)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE approvals (
            approval_id      TEXT PRIMARY KEY,
            created_at       REAL NOT NULL,
            status           TEXT NOT NULL,  -- pending | approved | denied | used | expired
            rule             TEXT NOT NULL,
            fingerprint      TEXT NOT NULL,  -- sha256 of key id and body: the same request retried
            key_id           TEXT,
            user             TEXT,
            team             TEXT,
            project          TEXT,
            model            TEXT,
            estimated_usd    TEXT NOT NULL,
            input_tokens     INTEGER NOT NULL,
            reason           TEXT NOT NULL,
            decided_by       TEXT,
            decided_at       REAL,
            note             TEXT,
            grant_scope      TEXT,           -- request | user
            grant_until      REAL,           -- user grants: valid until
            grant_usd        TEXT,           -- user grants: amount they cover
            grant_used_usd   TEXT NOT NULL DEFAULT '0'
        )
        """
    )
    db.execute("CREATE INDEX approvals_fingerprint ON approvals (fingerprint)")
    db.execute("CREATE INDEX approvals_status ON approvals (status, created_at)")


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT on an autocommit connection, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


MIGRATIONS: list[Migration] = [m001_create_keys, m002_create_requests, m003_index_requests, m004_enforcement]


def applied(db: sqlite3.Connection) -> list[str]:
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(db: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns the names applied now."""
    done = set(applied(db))
    newly: list[str] = []
    for migration in migrations if migrations is not None else MIGRATIONS:
        name = migration.__name__
        if name in done:
            continue
        with transaction(db):
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        newly.append(name)
    return newly
