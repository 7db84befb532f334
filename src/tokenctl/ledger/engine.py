"""What the rest of tokenctl needs from a ledger connection, whichever engine is behind it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import psycopg

# The database cannot be written now (locked, disk full, server down or restarting): retry later.
UNAVAILABLE: tuple[type[Exception], ...] = (sqlite3.OperationalError, psycopg.OperationalError)


def refuses_the_row(exc: Exception) -> bool:
    """True when a failed insert is about the values (written one by one, the offending rows repaired); False
    when it is about the database (a PostgreSQL error of any other kind): the batch is kept and retried."""
    if isinstance(exc, UNAVAILABLE):
        return False
    if isinstance(exc, psycopg.Error):
        return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))
    return True


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    @property
    def description(self) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Cursor: ...
    def close(self) -> None: ...


def is_postgres(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def dialect(db: Database) -> str:
    """``sqlite`` or ``postgresql``."""
    return str(getattr(db, "dialect", "sqlite"))


def epoch_seconds(db: Database, column: str) -> str:
    """SQL for the whole unix seconds of an ISO-8601 UTC text column (``ts``), in the connection's dialect."""
    if dialect(db) == "postgresql":
        return f"CAST(FLOOR(EXTRACT(EPOCH FROM CAST({column} AS TIMESTAMPTZ))) AS BIGINT)"
    return f"CAST(strftime('%s', {column}) AS INTEGER)"
