"""The writer's fast SQLite path (rows inserted without their shared NULLs, many per statement; rollups
summed in Python) must store exactly what the plain path stores: the same rows, the same rollup sums."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tokenctl.ledger.batch_rollups import rollup_upserts, sql_round
from tokenctl.ledger.migrations import add_to_rollups, migrate
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, to_row
from tokenctl.ledger.sqlite_rows import CHUNK, BatchInserts
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.synthetic import synthetic_entries

START = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
AT = {c: i for i, c in enumerate(COLUMNS)}
TABLES = ("requests", "rollup_daily", "rollup_team_daily", "rollup_user_daily", "rollup_sessions")


def ledger(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    migrate(db)
    return db


def contents(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every table the writer fills, with each value's storage class (1 and 1.0 are not the same row)."""
    result = {}
    for table in TABLES:
        names = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
        typed = ", ".join(f"{n}, typeof({n})" for n in names)
        result[table] = db.execute(f"SELECT {typed} FROM {table} ORDER BY {', '.join(names)}").fetchall()
    return result


def varied_rows(count: int, seed: int) -> list[tuple[Any, ...]]:
    """Synthetic rows, and then what real traffic also holds: columns set in some rows of a batch and empty in
    others, savings of both kinds, half-millisecond durations, sessions whose requests share a start time,
    rows without a day or a team."""
    rng = random.Random(seed)
    rows = []
    for i, entry in enumerate(synthetic_entries(count, start=START, days=2, seed=seed)):
        row = list(to_row(entry))
        row[AT["duration_ms"]] = rng.choice((0.5, 1.5, 2.4999, 2.5, 1234.5, row[AT["duration_ms"]]))
        if rng.random() < 0.3:
            row[AT["cache_miss"]] = "prefix changed"
            row[AT["cache_miss_nanousd"]] = rng.randrange(10**6)
        if rng.random() < 0.2:
            row[AT["saving_source"]] = rng.choice(("policy", "routing"))
            row[AT["counterfactual_nanousd"]] = row[AT["cost_nanousd"]] + rng.randrange(10**7)
        if rng.random() < 0.1:
            row[AT["team"]] = None
        if rng.random() < 0.05:
            row[AT["day"]] = None
        if i % 5 and rows:  # the same session and start as the row before: which is "latest" is rowid order
            row[AT["session_id"]], row[AT["ts"]] = rows[-1][AT["session_id"]], rows[-1][AT["ts"]]
        rows.append(tuple(row))
    return rows


def named(sql: str) -> list[str]:
    """The columns an INSERT statement names."""
    return sql.split("(", 1)[1].split(")", 1)[0].split(", ")


def plain_write(db: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    """The path every engine can take: one bound row at a time, rollups read back by SQL."""
    db.execute("BEGIN")
    last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM requests").fetchone()[0]
    db.executemany(INSERT_SQL, batch)
    add_to_rollups(db, last)
    db.execute("COMMIT")


def fast_write(db: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    upserts = rollup_upserts(batch)
    assert upserts is not None
    db.execute("BEGIN")
    for sql, params in BatchInserts(db).statements(batch):
        db.execute(sql, params)
    for sql, params in upserts:
        db.executemany(sql, params)
    db.execute("COMMIT")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_stores_exactly_what_the_plain_path_stores(tmp_path: Path, seed: int) -> None:
    rows = varied_rows(700, seed)
    plain, fast = ledger(tmp_path / "plain.db"), ledger(tmp_path / "fast.db")
    rng, start = random.Random(seed), 0
    while start < len(rows):  # every batch size around the statement chunks: 1, 3, 4, 5, 15, 16, 17, 37 ...
        size = rng.choice((1, 2, 3, 4, 5, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 5, 50))
        batch = rows[start : start + size]
        plain_write(plain, batch)
        fast_write(fast, batch)
        start += size
    expected = contents(plain)
    assert expected["rollup_sessions"] and expected["rollup_daily"]
    assert contents(fast) == expected


def test_columns_a_whole_batch_leaves_empty_are_not_bound_and_are_stored_as_null(tmp_path: Path) -> None:
    db = ledger(tmp_path / "nulls.db")
    rows = [r for r in varied_rows(40, 7) if r[AT["cache_miss"]] is None][:CHUNK]
    inserts = BatchInserts(db)
    [(sql, params)] = list(inserts.statements(rows))
    assert {"cache_miss", "approval_id"}.isdisjoint(named(sql))
    assert len(params) == len(named(sql)) * CHUNK < len(COLUMNS) * CHUNK
    filled = tuple("prefix changed" if c == "cache_miss" else v for c, v in zip(COLUMNS, rows[-1], strict=True))
    with_one = [*rows[:-1], filled]
    [(sql, _)] = list(inserts.statements(with_one))
    assert "cache_miss" in named(sql)  # one row fills it: bound for all, the others' None stored as NULL
    db.execute("BEGIN")
    for sql, params in inserts.statements(with_one):
        db.execute(sql, params)
    db.execute("COMMIT")
    stored = db.execute("SELECT cache_miss, approval_id FROM requests ORDER BY rowid").fetchall()
    assert stored == [(None, None)] * (CHUNK - 1) + [("prefix changed", None)]


def test_a_row_the_database_must_refuse_is_still_refused(tmp_path: Path) -> None:
    """NOT NULL columns are always bound: a None there fails the statement instead of taking a default."""
    db = ledger(tmp_path / "refused.db")
    rows = varied_rows(5, 8)
    broken = tuple(None if c == "input_tokens" else v for c, v in zip(COLUMNS, rows[2], strict=True))
    with pytest.raises(sqlite3.IntegrityError):
        for sql, params in BatchInserts(db).statements([*rows[:2], broken, *rows[3:]]):
            db.execute(sql, params)


def test_sums_the_rows_cannot_take_leave_the_batch_to_the_sql_form(tmp_path: Path) -> None:
    rows = varied_rows(10, 9)
    odd = tuple("12" if c == "output_tokens" else v for c, v in zip(COLUMNS, rows[0], strict=True))
    assert rollup_upserts([odd, *rows[1:]]) is None
    path = tmp_path / "odd.db"
    writer = LedgerWriter(str(path))
    writer.start()
    writer._insert([odd, *rows[1:]])  # the writer's own batch write, as a cycle would call it
    writer.close()
    db = sqlite3.connect(str(path))
    assert (
        db.execute("SELECT SUM(output_tokens) FROM rollup_daily").fetchone()
        == db.execute("SELECT SUM(output_tokens) FROM requests WHERE day IS NOT NULL").fetchone()
    )


def test_a_replayed_row_in_a_batch_is_counted_once(tmp_path: Path) -> None:
    rows = varied_rows(30, 10)
    path = tmp_path / "replay.db"
    writer = LedgerWriter(str(path))
    writer.start()
    writer._insert(rows[:10])
    writer._insert(rows[5:])  # five rows already written: the batch takes the SQL form, which skips them
    writer.close()
    db = sqlite3.connect(str(path))
    dated = [r for r in rows if r[AT["day"]] is not None]
    assert db.execute("SELECT SUM(requests) FROM rollup_daily").fetchone()[0] == len(dated)
    assert db.execute("SELECT SUM(requests) FROM rollup_team_daily").fetchone()[0] == len(dated)


def test_sqlite_round_is_sqlites() -> None:
    db = sqlite3.connect(":memory:")
    for value in (0.0, 0.5, 1.5, 2.5, 2.4999999, 1234.5, 1e12 + 0.5, -0.5, -2.5, 0.49999999999999994):
        assert sql_round(value) == db.execute("SELECT ROUND(?)", (value,)).fetchone()[0], value


def test_the_writer_keeps_statement_journals_in_memory(tmp_path: Path) -> None:
    """A batch's multi-row statements keep their undo pages in memory, not in a temporary file written with two
    pwrite() calls per page (bench/write_interval_bench.py: the writer's CPU per row fell by a fifth)."""
    writer = LedgerWriter(str(tmp_path / "ledger.db"), interval_seconds=3600)
    writer.start()
    try:
        for entry in synthetic_entries(500, start=datetime(2026, 11, 1, tzinfo=UTC).timestamp(), days=1):
            writer.record(entry)
        assert writer.flush(60)
        assert writer._db.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert writer._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 500
    finally:
        writer.close()
