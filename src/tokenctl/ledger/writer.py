"""The single ledger writer: requests hand over entries without touching the database; one thread writes them.

Guarantees (README, "Ledger"):
- ``record()`` never waits on the database. It turns the entry into its row (any text or number the
  database could refuse is replaced and the row flagged, so no row can stop the writer) and appends it to
  the journal with one ``write()``. The gateway records a request before the answer's last bytes are sent.
- Memory is bounded by ``queue_max`` rows: beyond it, rows live only in the journal and the writer reads
  them back from there.
- Writes are batched and idempotent on ``request_id`` (``INSERT OR IGNORE``): replaying a journal segment
  that was already written changes nothing.
- At start, segments left by an earlier run (kill -9, a crash, a database outage) are written before
  anything reads the ledger.
- The writer thread survives any error and is restarted if it dies; ``health()`` says when it is behind
  or the journal cannot be written, and the gateway then fails closed (README).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import orjson

from tokenctl.ledger.audit import AUDIT_INSERT_SQL, AuditEvent
from tokenctl.ledger.batch_rollups import rollup_upserts
from tokenctl.ledger.db import connect, is_postgres, serialize_writers, transaction
from tokenctl.ledger.engine import refuses_the_row
from tokenctl.ledger.journal import Journal, LedgerLock
from tokenctl.ledger.migrations import add_to_rollups
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, LedgerEntry, repair_row, to_row
from tokenctl.ledger.sqlite_rows import BatchInserts

Item = LedgerEntry | AuditEvent
Row = tuple[Any, ...]
_AUDIT_TAG = "audit"

log = logging.getLogger("tokenctl.ledger")


@dataclass(slots=True)
class Segment:
    """Rows recorded during one writer cycle: in one journal file, and in memory unless beyond ``queue_max``."""

    fd: int | None  # open while this is the segment being appended to
    path: Path | None  # None: not journaled (in-memory ledger, or the journal is failing)
    rows: list[Row] | None = field(default_factory=list)  # None: only in the file
    count: int = 0
    first_at: float = 0.0  # when its first row was recorded (monotonic)


def _current_width(row: Row) -> Row:
    """A requests row journaled by an older version has fewer columns: the newer ones are left empty."""
    if row and row[0] != _AUDIT_TAG and len(row) < len(COLUMNS):
        return (*row, *([None] * (len(COLUMNS) - len(row))))
    return row


def _yield_the_gil() -> None:
    """After releasing the lock, let a request that waited for it run now: without this, the writer would keep
    the GIL for up to the interpreter's switch interval (5 ms), and that request would wait that long."""
    time.sleep(0)


class LedgerWriter:
    def __init__(
        self,
        path: str,
        *,
        queue_max: int = 100_000,
        batch_max: int = 2_000,
        interval_seconds: float = 0.1,
        tz: tzinfo = UTC,
        fsync: bool = False,
        max_lag_seconds: float = 15.0,
        max_lag_rows: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        journal_path: str | None = None,
    ) -> None:
        """``tz`` is the reporting timezone: each row's ``day`` (what the dashboard's daily rollups use).

        ``path`` is the SQLite file or the PostgreSQL URL; ``journal_path`` names this process's journal files
        and lock (``{journal_path}.journal.N.jsonl``, ``{journal_path}.lock``): by default the SQLite file's;
        required for PostgreSQL, one per process writing to it."""
        self.path = path
        self.tz = tz
        if journal_path is None and is_postgres(path):
            raise ValueError("a PostgreSQL ledger needs a local journal path (ledger.journal_dir)")
        local = journal_path or path
        if local != ":memory:":
            Path(local).parent.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(local, fsync=fsync) if local != ":memory:" else None
        self._lock_file = LedgerLock(local) if local != ":memory:" else None
        self.spill_path = Path(f"{local}.spill.jsonl") if local != ":memory:" else None  # written by versions < 0.2
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._interval = interval_seconds
        self._max_lag_seconds = max_lag_seconds
        self._max_lag_rows = max_lag_rows
        self._clock = clock
        self._lock = threading.Lock()  # the current segment and the sealed ones, between requests and the thread
        self._current = Segment(None, None)
        self._sealed: deque[Segment] = deque()
        self._in_memory = 0
        self._recorded = 0
        self._written = 0
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._journal_error: str | None = None
        self._journal_retry_at = 0.0
        self._write_error: str | None = None
        self.failures = 0  # failed database writes (each retried)
        self.repaired = 0  # rows whose text or numbers had to be replaced
        self.restarts = 0  # writer threads restarted after dying

    # -- request path -------------------------------------------------------------------------------

    def record(self, item: Item) -> None:
        """Journal a ledger entry or an audit event and queue it for the database. Never waits on the database."""
        row = self._row(item)
        line = self._line(row)
        with self._lock:
            segment = self._journaled(line)
            if segment.count == 0:
                segment.first_at = self._clock()
            segment.count += 1
            self._recorded += 1
            self._keep(segment, row)

    def _row(self, item: Item) -> Row:
        if isinstance(item, AuditEvent):
            return (_AUDIT_TAG, *item.to_row())
        try:
            return to_row(item, self.tz)
        except Exception:  # a value to_row cannot convert: recorded with what can be, flagged
            log.exception("ledger row for %s could not be built as recorded; storing a repaired row", item.request_id)
            self.repaired += 1
            item.raw_usage, item.error = None, (item.error or "") + " [ledger: row rebuilt]"
            return repair_row(to_row(item, self.tz))

    def _line(self, row: Row) -> bytes:
        try:
            return orjson.dumps(row) + b"\n"
        except TypeError:  # text the journal cannot hold (lone surrogates): replaced and flagged
            return orjson.dumps(repair_row(row)) + b"\n"

    def _journaled(self, line: bytes) -> Segment:
        """Append the line to the journal; the segment now holding the row (a memory-only one if that failed)."""
        if self.journal is None:
            return self._current  # an in-memory ledger has no journal: memory is all there is
        if self._current.fd is None and not self._reopen_journal():
            return self._memory_only_segment()
        segment = self._current
        try:
            Journal.append(segment.fd, line)  # type: ignore[arg-type]
        except OSError as exc:
            self._journal_failed(exc)
            return self._memory_only_segment()
        return segment

    def _reopen_journal(self) -> bool:
        """While the journal is failing, try again at most once a second (disk space may have come back)."""
        now = self._clock()
        if now < self._journal_retry_at:
            return False
        self._journal_retry_at = now + 1.0
        try:
            fd, path = self.journal.open_segment()  # type: ignore[union-attr]
        except OSError:
            return False
        self._seal(self._current)
        self._current = Segment(fd, path)
        if self._journal_error is not None:
            log.warning("ledger journal writable again (%s); recording resumes normally", path)
        self._journal_error = None
        return True

    def _journal_failed(self, exc: OSError) -> None:
        if self._journal_error is None:
            log.error(
                "LEDGER JOURNAL CANNOT BE WRITTEN (%s): rows are held in memory; requests under budgets "
                "are refused until it recovers",
                exc,
            )
        self._journal_error = f"{exc.strerror or exc}"
        self._journal_retry_at = self._clock() + 1.0

    def _memory_only_segment(self) -> Segment:
        """The segment for rows that did not reach the journal: they must stay in memory, whatever the bound."""
        segment = self._current
        if segment.path is None:
            return segment
        self._seal(segment)
        self._current = Segment(None, None)
        return self._current

    def _keep(self, segment: Segment, row: Row) -> None:
        if segment.rows is None:
            return
        if self._in_memory < self._queue_max or segment.path is None:
            segment.rows.append(row)
            self._in_memory += 1
        else:  # beyond the memory bound: this segment's rows are read back from its journal file
            self._in_memory -= len(segment.rows)
            segment.rows = None

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> str | None:
        """None when the ledger keeps up; otherwise why not (the gateway then refuses requests under budgets)."""
        self._ensure_thread()
        if self._journal_error is not None:
            return f"the ledger journal cannot be written ({self._journal_error})"
        behind = self._recorded - self._written
        if behind > self._max_lag_rows:
            return f"the ledger writer is {behind:,} rows behind"
        oldest = self._oldest_unwritten()
        if oldest is not None and self._clock() - oldest > self._max_lag_seconds:
            detail = f": {self._write_error}" if self._write_error else ""
            return f"the ledger writer is {self._clock() - oldest:.0f} s behind{detail}"
        return None

    def lag_seconds(self) -> float:
        """How long the oldest row not yet in the database has waited (0 when none waits)."""
        oldest = self._oldest_unwritten()
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def accepting(self) -> bool:
        """False when a new row could only be kept in memory beyond the bound: every request is then refused."""
        return self._journal_error is None or self._in_memory < self._queue_max

    def _oldest_unwritten(self) -> float | None:
        try:
            return self._sealed[0].first_at
        except IndexError:
            current = self._current
            return current.first_at if current.count else None

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stopping:
            self.restarts += 1
            log.error("the ledger writer thread died; restarting it (restart %d)", self.restarts)
            self._start_thread()

    @property
    def pending(self) -> int:
        """Rows recorded and not yet written."""
        return self._recorded - self._written

    @property
    def in_memory(self) -> int:
        return self._in_memory

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, wait_for_lock_seconds: float = 0.0) -> None:
        """Lock the ledger for this process (raises ``LedgerInUse`` if another one has it, after waiting up to
        ``wait_for_lock_seconds`` for it to finish), replay what an earlier run left, start the thread."""
        if self._lock_file is not None:
            self._lock_file.acquire(wait_for_lock_seconds)
        self._db = connect(self.path)
        if isinstance(self._db, sqlite3.Connection):
            # A multi-row INSERT or upsert inside the batch's transaction keeps a statement journal (the pages it
            # changed, to undo just that statement); past 64 KiB SQLite spills it to a temporary file, two
            # pwrite() calls per page. In memory it costs a statement's pages at most.
            self._db.execute("PRAGMA temp_store=MEMORY")
        self._batch_inserts = BatchInserts(self._db) if isinstance(self._db, sqlite3.Connection) else None
        self._replay()
        self._current = self._new_segment()
        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tokenctl-ledger-writer", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is written. Returns False on timeout."""
        target = self._recorded
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._progress:
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(min(remaining, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write everything still recorded, then stop. What cannot be written stays in the journal for next start."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        with self._lock:
            current, self._current = self._current, Segment(None, None)
            self._seal(current)
            left = list(self._sealed)
        if not current.count and current.path is not None:
            Journal.remove(current.path)
        for segment in left:
            self._close(segment)
        self._keep_for_next_start(left)
        self._db.close()
        if self._lock_file is not None:
            self._lock_file.release()

    def _keep_for_next_start(self, segments: list[Segment]) -> None:
        unjournaled = [row for s in segments if s.path is None for row in (s.rows or ())]
        if not unjournaled:
            if segments:
                log.warning(
                    "%d ledger rows not yet written stay in the journal for the next start",
                    sum(s.count for s in segments),
                )
            return
        if self.journal is None:
            log.error("ledger is in memory: %d unwritten rows lost at close", len(unjournaled))
            return
        try:
            fd, path = self.journal.open_segment()
            Journal.append(fd, b"".join(orjson.dumps(r) + b"\n" for r in unjournaled))
            self.journal.close_segment(fd)
            log.warning("%d unwritten ledger rows saved to %s for the next start", len(unjournaled), path)
        except OSError as exc:
            log.error("LEDGER ROWS LOST: %d rows could be neither written nor journaled (%s)", len(unjournaled), exc)

    # -- writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._cycle_safely()
        self._cycle_safely()

    def _cycle_safely(self) -> None:
        try:
            self._cycle()
        except Exception:  # the thread must outlive any error: what was not written is retried
            self.failures += 1
            log.exception("ledger writer cycle failed; retrying")
            time.sleep(min(1.0, 0.05 * self.failures))

    def _cycle(self) -> None:
        self._rotate()
        while self._sealed:
            segment = self._sealed[0]
            rows = segment.rows if segment.rows is not None else self._read_back(segment)
            if not self._write_all(rows):
                if not self._stopping:
                    time.sleep(min(1.0, 0.05 * self.failures))
                return
            self._done(segment)

    def _rotate(self) -> None:
        """Seal the current segment for writing and start a new one: every cycle while the writer keeps up;
        while it is behind, only once the current one is large (few files during a long outage)."""
        if self._journal_error is not None and self._clock() >= self._journal_retry_at:
            with self._lock:  # the disk may have space again: journal the next rows as usual
                self._reopen_journal()
        current = self._current
        if not current.count or (self._sealed and current.count < 4 * self._batch_max):
            return
        fresh = self._new_segment()  # opened outside the lock
        with self._lock:
            old, self._current = self._current, fresh
            self._sealed.append(old)
        _yield_the_gil()
        self._close(old)  # closed (and synced, with fsync on) outside the lock too

    def _read_back(self, segment: Segment) -> list[Row]:
        assert segment.path is not None
        try:
            return [_current_width(r) for r in Journal.read(segment.path)]
        except FileNotFoundError:
            log.error("LEDGER ROWS LOST: journal segment %s was removed before it was written", segment.path)
            return []

    def _done(self, segment: Segment) -> None:
        with self._lock:
            self._sealed.popleft()
            self._in_memory -= len(segment.rows or ())
        _yield_the_gil()
        if segment.path is not None:
            Journal.remove(segment.path)
        self._write_error = None
        with self._progress:
            self._written += segment.count
            self._progress.notify_all()

    def _seal(self, segment: Segment) -> None:
        """Close the segment's file and queue it for writing if it holds rows (called with the lock held)."""
        self._close(segment)
        if segment.count and segment not in self._sealed:
            self._sealed.append(segment)

    def _close(self, segment: Segment) -> None:
        if segment.fd is not None:
            fd, segment.fd = segment.fd, None
            try:
                self.journal.close_segment(fd)  # type: ignore[union-attr]
            except OSError as exc:
                self._journal_failed(exc)

    def _new_segment(self) -> Segment:
        if self.journal is None:
            return Segment(None, None)
        if self._journal_error is not None:
            return Segment(None, None)
        try:
            fd, path = self.journal.open_segment()
        except OSError as exc:
            self._journal_failed(exc)
            return Segment(None, None)
        return Segment(fd, path)

    # -- database -----------------------------------------------------------------------------------

    def _write_all(self, rows: list[Row]) -> bool:
        batches = (rows[start : start + self._batch_max] for start in range(0, len(rows), self._batch_max))
        return all(self._write(batch) for batch in batches)

    def _write(self, rows: list[Row]) -> bool:
        try:
            self._insert(rows)
        except Exception as exc:
            if refuses_the_row(exc):  # a row the database refuses: written one by one, the offending ones repaired
                return self._write_one_by_one(rows)
            return self._failed(exc, len(rows))
        return True

    def _failed(self, exc: Exception, count: int) -> bool:
        """Locked, disk full, server down, I/O: the whole batch stays in the journal and is retried later."""
        self.failures += 1
        self._write_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.error("ledger write failed (%s); %d rows kept in the journal for retry", self._write_error, count)
        return False

    def _write_one_by_one(self, rows: list[Row]) -> bool:
        for row in rows:
            try:
                self._insert([row])
            except Exception as exc:
                if not refuses_the_row(exc):
                    return self._failed(exc, len(rows))
                self.repaired += 1
                try:
                    self._insert([repair_row(row)])
                except Exception as again:
                    if not refuses_the_row(again):
                        return self._failed(again, len(rows))
                    log.exception("LEDGER ROW REFUSED even after repair: %s", orjson.dumps(repair_row(row))[:200])
        return True

    def _insert(self, rows: list[Row]) -> None:
        requests = [r for r in rows if r[0] != _AUDIT_TAG]
        audit = [r[1:] for r in rows if r[0] == _AUDIT_TAG]
        with transaction(self._db):
            if requests:
                serialize_writers(self._db)
                self._insert_requests(requests)
            if audit:
                self._db.executemany(AUDIT_INSERT_SQL, audit)

    def _insert_requests(self, rows: list[Row]) -> None:
        """Insert request rows and add them to the rollups: summed here when every row was new (the common
        case), else by the SQL form, which reads back only the rows this batch inserted."""
        db = self._db
        last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM requests").fetchone()[0]
        if self._batch_inserts is None or not isinstance(db, sqlite3.Connection):  # PostgreSQL
            db.executemany(INSERT_SQL, rows)
            add_to_rollups(db, last)
            return
        upserts = rollup_upserts(rows)
        before = db.total_changes
        for sql, params in self._batch_inserts.statements(rows):
            db.execute(sql, params)
        if upserts is None or db.total_changes - before != len(rows):
            add_to_rollups(db, last)
            return
        for sql, params in upserts:
            db.executemany(sql, params)

    # -- rows left by an earlier run -------------------------------------------------------------------

    def _replay(self) -> None:
        """Write journal segments (and the spill file of older versions) left on disk, before anything reads."""
        paths = [self.spill_path] if self.spill_path and self.spill_path.exists() else []
        paths += self.journal.existing() if self.journal else []
        for path in paths:
            rows = [_current_width(r) for r in Journal.read(path)]
            if rows and not self._write_all(rows):
                log.error("ledger unavailable at start: %s stays on disk and is written when it recovers", path)
                self._sealed.append(Segment(None, path, rows=None, count=len(rows), first_at=self._clock()))
                self._recorded += len(rows)
                continue
            Journal.remove(path)
            if rows:
                log.info("replayed %d ledger rows from %s", len(rows), path)
