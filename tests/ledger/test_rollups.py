"""The dashboard rollups: added by the writer once per batch, built on upgrade, never double-counted."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.ledgers import ledger_target
from tokenctl.cli.main import main
from tokenctl.ledger.db import connect
from tokenctl.ledger.migrations import MIGRATIONS, migrate
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, LedgerEntry, to_row
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.synthetic import synthetic_entries

START = datetime(2026, 10, 1, tzinfo=UTC).timestamp()


def sums(db: sqlite3.Connection) -> tuple[tuple[object, ...], tuple[object, ...]]:
    detail = db.execute("SELECT COUNT(*), SUM(cost_nanousd), SUM(output_tokens) FROM requests").fetchone()
    rolled = db.execute("SELECT SUM(requests), SUM(cost_nanousd), SUM(output_tokens) FROM rollup_daily").fetchone()
    return detail, rolled


def test_replayed_entries_are_counted_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    entries = list(synthetic_entries(500, start=START, days=5))
    writer = LedgerWriter(path)
    writer.start()
    for e in entries + entries[:200]:  # a replay of the first 200 (a re-settled stream, a spill written back)
        writer.record(e)
    writer.close()
    db = sqlite3.connect(path)
    detail, rolled = sums(db)
    assert detail == rolled and detail[0] == 500
    sessions = db.execute("SELECT SUM(requests), SUM(cost_nanousd) FROM rollup_sessions").fetchone()
    assert sessions == (500, detail[1])


def test_upgrading_a_ledger_with_rows_builds_its_rollups(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    db = connect(path, migrate_schema=False)
    migrate(db, MIGRATIONS[:4])  # the schema before rollups
    old_columns = [c[1] for c in db.execute("PRAGMA table_info(requests)")]
    for e in synthetic_entries(300, start=START, days=3):
        values = dict(zip(COLUMNS, to_row(e)))
        db.execute(
            f"INSERT INTO requests ({', '.join(old_columns)}) VALUES ({', '.join('?' * len(old_columns))})",
            [values[c] for c in old_columns],
        )
    migrate(db)
    detail, rolled = sums(db)
    assert detail == rolled and detail[0] == 300
    by_day = db.execute("SELECT day, SUM(requests) FROM rollup_daily GROUP BY day ORDER BY day").fetchall()
    assert [d for d, _ in by_day] == ["2026-10-01", "2026-10-02", "2026-10-03"]


def test_days_follow_the_reporting_timezone(tmp_path: Path) -> None:
    path = str(tmp_path / "tz.db")
    late_evening_utc = datetime(2026, 11, 1, 23, 30, tzinfo=UTC).timestamp()  # 00:30 on Nov 2 in Berlin
    writer = LedgerWriter(path, tz=ZoneInfo("Europe/Berlin"))
    writer.start()
    writer.record(LedgerEntry("req_tz", late_evening_utc, "anthropic.messages", status=200))
    writer.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT day FROM requests").fetchone() == ("2026-11-02",)
    assert db.execute("SELECT day, requests FROM rollup_daily").fetchone() == ("2026-11-02", 1)


def test_rows_spilled_by_an_older_version_are_written_back(tmp_path: Path) -> None:
    """A spill file from before the rollup columns existed still loads (the new columns stay empty)."""
    path = str(tmp_path / "spill.db")
    entry = next(synthetic_entries(1, start=START, days=1))
    old_width = to_row(entry)[: COLUMNS.index("day")]  # the row as written before the rollup columns
    Path(path + ".spill.jsonl").write_bytes(orjson.dumps(old_width) + b"\n")
    writer = LedgerWriter(path)
    writer.start()
    writer.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT request_id, day FROM requests").fetchone() == (entry.request_id, None)
    assert not Path(path + ".spill.jsonl").exists()


def test_the_insert_statement_matches_the_row_width() -> None:
    entry = next(synthetic_entries(1, start=START, days=1))
    assert INSERT_SQL.count("?") == len(to_row(entry))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_pruning_old_rows_keeps_the_rollups(tmp_path: Path, engine: str) -> None:
    path = ledger_target(tmp_path, engine)
    now = datetime.now(UTC)
    writer = LedgerWriter(path, journal_path=str(tmp_path / "journal"))
    writer.start()
    for e in synthetic_entries(600, start=now.timestamp() - 30 * 86400, days=30):
        writer.record(e)
    writer.close()
    db = connect(path, migrate_schema=False)
    cutoff = (now.date() - timedelta(days=10)).isoformat()
    before = db.execute("SELECT SUM(requests), SUM(cost_nanousd) FROM rollup_daily").fetchone()
    kept = db.execute("SELECT COUNT(*) FROM requests WHERE day >= ?", (cutoff,)).fetchone()[0]
    assert 100 < kept < 500
    assert main(["prune", "--ledger", path, "--older-than-days", "10"]) == 0
    assert tuple(db.execute("SELECT COUNT(*), MIN(day) FROM requests").fetchone()) == (kept, cutoff)
    assert db.execute("SELECT SUM(requests), SUM(cost_nanousd) FROM rollup_daily").fetchone() == before
    assert main(["prune", "--ledger", path, "--older-than-days", "0"]) == 2  # refused, nothing deleted
    assert main(["prune", "--ledger", path, "--older-than-days", "10", "--vacuum"]) == 0  # nothing more to delete
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == kept


def test_pruning_inside_a_budget_window_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tokenctl.yaml"
    config.write_text(
        f"ledger: {{path: {tmp_path / 'b.db'}}}\n"
        "budgets:\n  - {name: forever, scope: org, limit_usd: 100, period: lifetime}\n"
    )
    assert main(["--config", str(config), "migrate"]) == 0
    assert main(["--config", str(config), "prune", "--older-than-days", "30"]) == 2
    assert "budget 'forever' (lifetime) still counts spend" in capsys.readouterr().err


def _session_entry(request_id: str, when: float, model: str) -> LedgerEntry:
    from tokenctl.config import ProviderConfig
    from tokenctl.types import Attribution, Route

    provider = ProviderConfig("anthropic", "anthropic", "https://x", None, (), "anthropic")
    return LedgerEntry(
        request_id,
        when,
        "anthropic.messages",
        status=200,
        route=Route(provider, model, model),
        attribution=Attribution("claude-code", None, "sess-1", None, {}),
    )


def test_a_sessions_model_is_the_one_it_used_last_in_every_batch_and_after_a_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "sessions.db")
    writer = LedgerWriter(path)
    writer.start()
    writer.record(_session_entry("r1", START, "claude-sonnet-4-5"))
    writer.record(_session_entry("r2", START + 60, "claude-haiku-4-5"))  # same batch: the later one wins
    assert writer.flush(10)
    db = sqlite3.connect(path)
    assert db.execute("SELECT model, requests FROM rollup_sessions").fetchone() == ("claude-haiku-4-5", 2)
    writer.record(_session_entry("r3", START + 120, "claude-opus-4-1"))  # a later batch: upserted
    writer.record(_session_entry("r0", START - 60, "claude-sonnet-4-5"))  # arrives late, started earlier
    assert writer.flush(10)
    writer.close()
    assert db.execute("SELECT model, requests FROM rollup_sessions").fetchone() == ("claude-opus-4-1", 4)
    assert main(["rebuild-rollups", "--ledger", path]) == 0
    assert db.execute("SELECT model, requests FROM rollup_sessions").fetchone() == ("claude-opus-4-1", 4)


def test_rollups_written_in_many_small_batches_equal_a_rebuild_exactly(tmp_path: Path) -> None:
    """Batch boundaries must not change a single sum (durations are summed in whole milliseconds)."""
    path = str(tmp_path / "batches.db")
    writer = LedgerWriter(path, batch_max=7, interval_seconds=0.001)
    writer.start()
    for i, e in enumerate(synthetic_entries(1500, start=START, days=3)):
        e.duration_ms += i / 7  # fractional durations, as measured
        writer.record(e)
        if i % 97 == 0:
            assert writer.flush(10)  # batches of every size
    writer.close()
    db = sqlite3.connect(path)
    tables = ("rollup_daily", "rollup_team_daily", "rollup_user_daily", "rollup_sessions")

    def snapshot() -> list[list[tuple[object, ...]]]:
        return [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4, 5, 6").fetchall() for t in tables]

    before = snapshot()
    assert main(["rebuild-rollups", "--ledger", path]) == 0
    assert snapshot() == before and before[0]


def test_a_batchs_rollup_work_does_not_grow_with_the_ledger(tmp_path: Path) -> None:
    """Counted in SQLite virtual-machine steps, not time: adding 60 rows must cost the same on a ledger of 2,000
    session rows as on one of 40,000 (the sessions rollup once walked the whole session index per batch)."""
    from tokenctl.ledger.migrations import add_to_rollups

    db = sqlite3.connect(str(tmp_path / "growth.db"), isolation_level=None)
    migrate(db)
    template = list(to_row(next(synthetic_entries(1, start=START, days=1))))
    ts, session = COLUMNS.index("ts"), COLUMNS.index("session_id")
    made = 0

    def add(count: int) -> int:
        """Insert ``count`` rows spread over 500 sessions and add them to the rollups; the VM steps that took."""
        nonlocal made
        rows = []
        for n in range(made, made + count):
            row = list(template)
            row[0], row[session] = f"req_{n:012x}", f"sess-{n % 500}"
            row[ts] = datetime.fromtimestamp(START + n / 10, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
            rows.append(tuple(row))
        made += count
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0

        db.execute("BEGIN")
        last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM requests").fetchone()[0]
        db.executemany(INSERT_SQL, rows)
        db.set_progress_handler(step, 100)
        add_to_rollups(db, last)
        db.set_progress_handler(None, 100)
        db.execute("COMMIT")
        return steps[0]

    add(2_000)
    small = add(60)
    add(40_000)
    large = add(60)
    assert db.execute("SELECT SUM(requests) FROM rollup_sessions").fetchone()[0] == made
    assert large < small * 1.5, (small, large)
