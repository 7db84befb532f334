"""The single ledger writer: requests hand over entries without waiting; one thread writes them in batches.

Guarantees:
- ``record()`` never blocks and never touches the database (an append to a deque).
- Writes are batched (one transaction per batch) and idempotent on ``request_id``
  (``INSERT OR IGNORE``), so a replayed entry changes nothing.
- Memory is bounded: if the database cannot keep up or is failing, entries beyond
  ``queue_max`` are appended to a spill file next to the database and written back
  on the next start (or as soon as the database accepts writes again).
- ``close()`` writes everything that was recorded before returning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

import orjson

from tokenctl.ledger.audit import AUDIT_INSERT_SQL, AuditEvent
from tokenctl.ledger.db import connect, transaction
from tokenctl.ledger.record import COLUMNS, INSERT_SQL, LedgerEntry, to_row

Item = LedgerEntry | AuditEvent
Row = tuple[Any, ...]
_AUDIT_TAG = "audit"


def _row(item: Item, tz: tzinfo) -> Row:
    """Requests rows as they are; audit rows tagged, so both can share one queue and one spill file."""
    return (_AUDIT_TAG, *item.to_row()) if isinstance(item, AuditEvent) else to_row(item, tz)


def _current_width(row: Row) -> Row:
    """A requests row spilled by an older version has fewer columns: the newer ones are left empty."""
    if row and row[0] != _AUDIT_TAG and len(row) < len(COLUMNS):
        return (*row, *([None] * (len(COLUMNS) - len(row))))
    return row


log = logging.getLogger("tokenctl.ledger")


class LedgerWriter:
    def __init__(
        self,
        path: str,
        *,
        queue_max: int = 100_000,
        batch_max: int = 2_000,
        interval_seconds: float = 0.02,
        tz: tzinfo = UTC,
    ) -> None:
        """``tz`` is the reporting timezone: each row's ``day`` (what the dashboard's daily rollups use)."""
        self.path = path
        self.tz = tz
        self.spill_path = Path(f"{path}.spill.jsonl") if path != ":memory:" else None
        self._queue: deque[Item] = deque()
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._interval = interval_seconds
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recorded = 0
        self._written = 0
        self._progress = threading.Condition()
        self.failures = 0
        self.spilled = 0

    # -- request path -------------------------------------------------------------------------------

    def record(self, entry: Item) -> None:
        """Queue a ledger entry or an audit event for writing. Never blocks."""
        self._recorded += 1
        self._queue.append(entry)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._db = connect(self.path)
        self._replay_spill()
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
        """Write everything still queued, then stop the thread. Anything that still cannot be written is spilled."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        if self._queue:
            self._spill(list(self._queue))
            self._queue.clear()
        self._db.close()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
            rows = [_row(e, self.tz) for e in batch]
            if not self._write(rows):
                self._hold_back(batch, rows)
                return
            self._advance(len(batch))

    def _write(self, rows: list[Row]) -> bool:
        requests = [r for r in rows if r[0] != _AUDIT_TAG]
        audit = [r[1:] for r in rows if r[0] == _AUDIT_TAG]
        try:
            with transaction(self._db):
                if requests:
                    self._db.executemany(INSERT_SQL, requests)
                if audit:
                    self._db.executemany(AUDIT_INSERT_SQL, audit)
        except sqlite3.Error as exc:
            self.failures += 1
            log.error("ledger write failed (%s); %d entries kept for retry", exc, len(rows))
            return False
        return True

    def _hold_back(self, batch: list[Item], rows: list[Row]) -> None:
        """A failed batch goes back to the front of the queue, or to the spill file when the queue is full."""
        if len(self._queue) + len(batch) > self._queue_max:
            rest = [self._queue.popleft() for _ in range(len(self._queue))]
            self._spill_rows(rows + [_row(e, self.tz) for e in rest])
            self._advance(len(batch) + len(rest))
        else:
            self._queue.extendleft(reversed(batch))
        if not self._stopping:
            time.sleep(min(1.0, 0.05 * self.failures))

    def _advance(self, n: int) -> None:
        with self._progress:
            self._written += n
            self._progress.notify_all()

    # -- spill file ---------------------------------------------------------------------------------

    def _spill(self, entries: list[Item]) -> None:
        self._spill_rows([_row(e, self.tz) for e in entries])

    def _spill_rows(self, rows: list[Row]) -> None:
        if self.spill_path is None:
            log.error("ledger is in memory and failing: %d entries lost", len(rows))
            return
        with self.spill_path.open("ab") as f:
            for row in rows:
                f.write(orjson.dumps(row) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.spilled += len(rows)
        log.error(
            "ledger unavailable: %d entries spilled to %s (written back on next start)", len(rows), self.spill_path
        )

    def _replay_spill(self) -> None:
        if self.spill_path is None or not self.spill_path.exists():
            return
        rows = []
        for line in self.spill_path.read_bytes().splitlines():
            try:
                rows.append(_current_width(tuple(orjson.loads(line))))
            except orjson.JSONDecodeError:
                log.error("skipping a corrupt line in %s", self.spill_path)
        if rows and not self._write(rows):
            return  # keep the spill file; try again on the next start
        self.spill_path.unlink()
        log.info("replayed %d spilled ledger entries from %s", len(rows), self.spill_path)
