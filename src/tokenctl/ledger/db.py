"""Opening the ledger: a SQLite file (WAL mode) or a PostgreSQL database (``postgresql://`` URL), schema migrated.

Both answer the same statements (``ledger/postgres.py`` translates what differs), so everything else in
tokenctl takes a ``Database`` and does not know which engine it has.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tokenctl.ledger.engine import UNAVAILABLE, Database, dialect, is_postgres
from tokenctl.ledger.migrations import migrate, transaction

__all__ = [
    "UNAVAILABLE",
    "Database",
    "connect",
    "dialect",
    "is_postgres",
    "serialize_writers",
    "table_exists",
    "transaction",
]

# sqlite3 binds int, float, str and bytes directly but looks every other value, None included, up in its
# adapter registry, formatting and discarding an AttributeError on the way: a ledger row has about 45 None
# columns, and that lookup was 40 % of the cost of inserting it. An adapter for None that returns None (a
# C-level ``dict.get`` on an empty dict, so no Python frame either) skips the lookup; NULL is stored as before.
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)


def connect(target: str, *, migrate_schema: bool = True) -> Database:
    """A connection in autocommit mode (transactions are explicit), schema up to date.

    ``target`` is a SQLite file path (``:memory:`` for a throwaway ledger) or a PostgreSQL URL.
    """
    db: Database
    if is_postgres(target):
        from tokenctl.ledger.postgres import PostgresLedger

        db = PostgresLedger(target)
    else:
        db = _sqlite(target)
    if migrate_schema:
        migrate(db)
    return db


def _sqlite(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


def table_exists(db: Database, name: str) -> bool:
    if dialect(db) == "postgresql":
        return db.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


def serialize_writers(db: Database) -> None:
    """Inside a transaction: wait until no other process is writing request rows (PostgreSQL; SQLite's
    ``BEGIN IMMEDIATE`` already does). Rollups are added for rows with a higher ``rowid`` than before the
    batch, which holds only if batches from several replicas do not interleave."""
    if dialect(db) == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(7261706)")  # any constant: tokenctl's ledger writers
