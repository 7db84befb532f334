"""Ledger: named migrations, idempotent batched writes, nothing lost when the database fails."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal

import pytest

from tokenctl.ledger.db import connect
from tokenctl.ledger.migrations import MIGRATIONS, applied, migrate
from tokenctl.ledger.record import LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.types import Usage


def entry(request_id: str, output: int = 10) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        started_at=time.time(),
        api="openai.chat",
        status=200,
        usage=Usage(input_tokens=100, output_tokens=output),
    )


def count(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        db.close()


def test_fresh_database_gets_every_migration_once(tmp_path) -> None:
    db = connect(str(tmp_path / "l.db"))
    assert applied(db) == [m.__name__ for m in MIGRATIONS]
    assert migrate(db) == []  # idempotent
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"keys", "requests", "_migrations"} <= tables


def test_upgrade_from_the_first_migration_keeps_existing_rows(tmp_path) -> None:
    db = connect(str(tmp_path / "l.db"), migrate_schema=False)
    migrate(db, MIGRATIONS[:1])
    db.execute(
        "INSERT INTO keys (key_id, key_hash, prefix, models, created_at, updated_at) VALUES ('k1', 'h', 'p', '', 1, 1)"
    )
    newly = migrate(db)
    assert newly == [m.__name__ for m in MIGRATIONS[1:]]
    assert db.execute("SELECT key_id FROM keys").fetchall() == [("k1",)]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "requests_team" in indexes


def test_failed_migration_is_rolled_back_and_not_marked(tmp_path) -> None:
    db = connect(str(tmp_path / "l.db"))

    def m999_broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("boom")

    with pytest.raises(sqlite3.OperationalError):
        migrate(db, [*MIGRATIONS, m999_broken])
    assert "m999_broken" not in applied(db)
    assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='half_done'").fetchone()[0] == 0


def test_writes_are_idempotent_on_request_id(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    for _ in range(3):
        writer.record(entry("req_same"))
    for i in range(500):
        writer.record(entry(f"req_{i}"))
    assert writer.flush(10)
    writer.close()
    assert count(path) == 501


def test_close_writes_everything_recorded(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path, interval_seconds=5.0)  # the thread would not wake on its own before close
    writer.start()
    for i in range(2000):
        writer.record(entry(f"req_{i}"))
    writer.close()
    assert count(path) == 2000


def test_database_outage_keeps_memory_bounded_and_loses_nothing(tmp_path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path, queue_max=50, batch_max=10, interval_seconds=0.01)
    writer.start()
    locker = sqlite3.connect(path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the database: every write fails
    writer._db.execute("PRAGMA busy_timeout=0")
    for i in range(2000):
        writer.record(entry(f"req_{i}"))
    deadline = time.monotonic() + 10
    while writer.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.failures > 0 and writer.pending == 2000
    assert writer.in_memory <= 50 + 40  # the bound, plus at most one segment's rows when it was crossed
    assert sum(1 for _ in tmp_path.glob("l.db.journal.*.jsonl")) >= 1  # the rows are in the journal instead
    locker.execute("ROLLBACK")
    locker.close()
    writer._db.execute("PRAGMA busy_timeout=30000")
    assert writer.flush(20)
    writer.close()
    assert count(path) == 2000
    assert list(tmp_path.glob("l.db.journal.*")) == []


def test_none_columns_are_stored_as_null_without_the_adapter_lookup(tmp_path) -> None:
    """The ledger's None adapter (db.py) must keep None a NULL: ``IS NULL`` filters and counts depend on it."""
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    writer.record(entry("req_nulls"))
    assert writer.flush(10)
    writer.close()
    db = connect(path)
    error, session, kinds = db.execute(
        "SELECT error, session_id, typeof(approval_id) FROM requests WHERE request_id = 'req_nulls'"
    ).fetchone()
    assert (error, session, kinds) == (None, None, "null")
    assert db.execute("SELECT COUNT(*) FROM requests WHERE approval_id IS NULL").fetchone()[0] == 1
    adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
    assert adapter is not None and adapter(None) is None


def test_funding_and_session_indexes_leave_out_empty_rows_and_still_serve_every_query(tmp_path) -> None:
    """m015: the two partial indexes must hold only rows with a value, and the queries that read those columns
    (budget seeding by session and by pool, a session's turns, the explorer's search, feedback) must still use
    them, or a 10M-row ledger would scan the table."""
    from tokenctl.ledger.spend import spend_by_member
    from tokenctl.types import Attribution, Cost, Principal

    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    for i in range(30):
        e = entry(f"req_{i}")
        e.principal = Principal(key_id="k1", user="u", team="t", project=None)
        e.attribution = Attribution("other", None, "s1" if i % 3 == 0 else None, None)
        e.funding = "pool-a" if i % 5 == 0 else None
        e.cost = Cost(total=Decimal("0.001"), list_total=Decimal("0.001"), priced=True, source="test")
        writer.record(e)
    assert writer.flush(10)
    writer.close()
    db = connect(path)
    assert spend_by_member(db, "session", 0) == {("s1", None, 0): 10 * 1_000_000}
    assert spend_by_member(db, "team", 0, funding="pool-a") == {("t", None, 0): 6 * 1_000_000}
    for column, held in (("session_id", 10), ("funding", 6)):
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (f"requests_{column}",)).fetchone()[0]
        assert sql.endswith(f"WHERE {column} IS NOT NULL")
        assert (
            db.execute(f"SELECT COUNT(*) FROM requests INDEXED BY requests_{column} WHERE {column} > ''").fetchone()[0]
            == held
        )
    plans = {
        "SELECT * FROM requests WHERE session_id = ? ORDER BY ts LIMIT 5000": "requests_session_id",
        "SELECT * FROM requests WHERE ts >= ? AND (request_id = ? OR session_id = ? OR user = ?)": "requests_session_id",
        "SELECT team, SUM(cost_nanousd) FROM requests WHERE ts >= ? AND team IS NOT NULL AND funding = ? GROUP BY team": "requests_funding",
        "SELECT session_id, SUM(cost_nanousd) FROM requests WHERE ts >= ? AND session_id IS NOT NULL GROUP BY 1": "requests_session_id",
    }
    for sql, index in plans.items():
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, [""] * sql.count("?")))
        assert index in plan, (sql, plan)
