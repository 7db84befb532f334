"""Opening the SQLite ledger file: WAL mode, explicit transactions, schema migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tokenctl.ledger.migrations import migrate, transaction

__all__ = ["connect", "transaction"]


def connect(path: str, *, migrate_schema: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, schema up to date."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    if migrate_schema:
        migrate(db)
    return db
