"""The ledger survives bad rows, a dying writer thread, SIGKILL and a database that refuses writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tokenctl.ledger.record import REPAIRED, LedgerEntry
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.types import Attribution, Principal, Usage


def entry(request_id: str, **fields: object) -> LedgerEntry:
    e = LedgerEntry(
        request_id=request_id,
        started_at=time.time(),
        api="anthropic.messages",
        status=200,
        usage=Usage(input_tokens=100, output_tokens=10),
    )
    for name, value in fields.items():
        setattr(e, name, value)
    return e


def rows(path: str, query: str = "SELECT request_id, error, session_id, tags, anthropic_beta FROM requests") -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute(query + " ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_rows_with_text_sqlite_cannot_store_are_repaired_and_the_writer_goes_on(tmp_path: Path) -> None:
    """The failure that switched metering off: a lone surrogate (a non-UTF-8 header byte) in any text field."""
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    bad = "caf\udce9"
    writer.record(entry("req_before"))
    writer.record(entry("req_session", attribution=Attribution("claude-code", None, bad, None, {})))
    writer.record(entry("req_tags", attribution=Attribution("other", None, None, None, {"team": bad, bad: "x"})))
    writer.record(entry("req_beta", anthropic_beta=bad, error=bad, requested_model=bad))
    writer.record(entry("req_usage", raw_usage={"input_tokens": 2**70, "note": bad}))
    writer.record(entry("req_principal", principal=Principal("k1", bad, "team", None)))
    writer.record(entry("req_after"))
    assert writer.flush(10)
    writer.close()
    found = {r[0]: r for r in rows(path)}
    assert list(found) == [
        "req_before",
        "req_session",
        "req_tags",
        "req_beta",
        "req_usage",
        "req_principal",
        "req_after",
    ]
    assert found["req_session"][2] == "caf\ufffd" and REPAIRED in found["req_session"][1]
    assert "caf\ufffd" in found["req_tags"][3]
    assert found["req_beta"][4] == "caf\ufffd"
    assert found["req_before"][1] is None and found["req_after"][1] is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_a_dead_writer_thread_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path, interval_seconds=0.01)
    writer.start()
    real_cycle = writer._cycle

    def dies_once() -> None:
        writer._cycle = real_cycle  # type: ignore[method-assign]
        raise SystemExit("simulated thread death")  # not an Exception: the loop does not catch it

    writer._cycle = dies_once  # type: ignore[method-assign]
    for i in range(100):
        writer.record(entry(f"req_{i}"))
    assert writer._thread is not None
    writer._thread.join(5)
    assert not writer._thread.is_alive()
    writer.health()  # the health check notices the dead thread and restarts it
    assert writer.restarts == 1 and writer.flush(10)
    writer.close()
    assert len(rows(path)) == 100


def test_a_writer_that_falls_behind_reports_it(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    now = [1000.0]
    writer = LedgerWriter(path, interval_seconds=0.01, max_lag_seconds=5, clock=lambda: now[0])
    writer.start()
    locker = sqlite3.connect(path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the database: the writer is stuck
    writer._db.execute("PRAGMA busy_timeout=0")
    writer.record(entry("req_stuck"))
    assert writer.health() is None
    now[0] += 6
    deadline = time.monotonic() + 5
    while writer.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    reason = writer.health()
    assert reason is not None and "6 s behind" in reason and "locked" in reason
    locker.execute("ROLLBACK")
    locker.close()
    assert writer.flush(10) and writer.health() is None
    writer.close()


_RECORD_THEN_WAIT = textwrap.dedent("""
    import sys, time
    from tokenctl.ledger.writer import LedgerWriter
    from tests.ledger.test_journal import entry
    writer = LedgerWriter(sys.argv[1], interval_seconds=3600)  # the thread never writes on its own
    writer.start()
    for i in range(int(sys.argv[2])):
        writer.record(entry(f"req_{i}"))
    print("recorded", flush=True)
    time.sleep(60)
""")


def test_sigkill_after_record_loses_nothing(tmp_path: Path) -> None:
    """Every recorded row is in the journal at once: a process killed before its writer ran loses none."""
    path = str(tmp_path / "l.db")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECORD_THEN_WAIT, path, "5000"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": "."},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"recorded"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(list(tmp_path.glob("l.db.journal.*.jsonl"))) >= 1
    restarted = LedgerWriter(path)
    restarted.start()  # replays the journal before anything reads the ledger
    assert len(rows(path)) == 5000
    restarted.close()
    assert list(tmp_path.glob("l.db.journal.*")) == []


def test_replaying_a_journal_twice_writes_each_row_once(tmp_path: Path) -> None:
    path = str(tmp_path / "l.db")
    writer = LedgerWriter(path)
    writer.start()
    for i in range(10):
        writer.record(entry(f"req_{i}"))
    writer.close()
    segment = tmp_path / "l.db.journal.000000000099.jsonl"  # as if a crash came between commit and delete
    import orjson

    from tokenctl.ledger.record import to_row

    segment.write_bytes(
        b"".join(orjson.dumps(to_row(entry(f"req_{i}"))) + b"\n" for i in range(5, 15)) + b'["torn line'
    )
    again = LedgerWriter(path)
    again.start()
    again.close()
    assert sorted(r[0] for r in rows(path)) == sorted(f"req_{i}" for i in range(15))
