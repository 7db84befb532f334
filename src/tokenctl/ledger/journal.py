"""The ledger's local journal: append-only files next to the database that hold every entry until it is written.

Each request's row is appended with one ``write()`` before the answer's last bytes reach the client, so a
process killed at any moment (SIGKILL, OOM) loses no answered request: the next start replays the files
(idempotent on request id) before anything reads the ledger. The files are segments, ``{ledger}.journal.
{n}.jsonl``: the writer thread seals the current one, writes its rows to the database and deletes it.

What the operating system has not yet put on disk can still be lost in a machine crash (power, kernel
panic); ``fsync: true`` syncs each segment when it is sealed (every writer cycle,
``ledger.write_interval_seconds``: 100 ms by default), bounding that loss to one cycle at a measured cost
(README, Ledger).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("tokenctl.ledger")

Row = tuple[Any, ...]
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class Journal:
    def __init__(self, ledger_path: str, *, fsync: bool = False) -> None:
        ledger = Path(ledger_path)
        self.directory = ledger.parent
        self.prefix = f"{ledger.name}.journal."
        self.fsync = fsync
        self._pattern = re.compile(re.escape(self.prefix) + r"(\d+)\.jsonl$")
        self._next = max((n for n, _ in self._numbered()), default=0) + 1

    def _numbered(self) -> list[tuple[int, Path]]:
        if not self.directory.exists():
            return []
        found = []
        for path in self.directory.iterdir():
            match = self._pattern.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def existing(self) -> list[Path]:
        """Segments left on disk (by an earlier run, or not yet written), oldest first."""
        return [path for _, path in self._numbered()]

    def open_segment(self) -> tuple[int, Path]:
        """A new, empty segment file: its descriptor and path. Raises OSError (disk full, permissions)."""
        path = self.directory / f"{self.prefix}{self._next:012d}.jsonl"
        fd = os.open(path, _FLAGS, 0o600)
        self._next += 1
        return fd, path

    @staticmethod
    def append(fd: int, line: bytes) -> None:
        """One ``write()`` of one line; a short write (disk full) raises, and the torn line is skipped on read."""
        written = os.write(fd, line)
        if written != len(line):
            os.write(fd, b"\n")  # end the torn line so the next one starts clean
            raise OSError(28, f"short write to the ledger journal ({written} of {len(line)} bytes)")

    def close_segment(self, fd: int) -> None:
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read(path: Path) -> list[Row]:
        """The rows of a segment; a torn or corrupt line (a crash mid-write, a full disk) is skipped and logged."""
        rows: list[Row] = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.error("skipping a torn line in %s", path)
                continue
            if isinstance(value, list):
                rows.append(tuple(value))
        return rows

    @staticmethod
    def remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class LedgerInUse(RuntimeError):
    """Another process is writing this ledger: two gateways on one ledger would each enforce budgets alone."""


class LedgerLock:
    """An exclusive lock on ``{ledger}.lock`` for the process that writes the ledger, with its pid inside.

    Held from start to close; the kernel releases it when the process dies, however it dies.
    """

    def __init__(self, ledger_path: str) -> None:
        self.path = Path(f"{ledger_path}.lock")
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> None:
        import fcntl
        import time

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        deadline = time.monotonic() + wait_seconds
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LedgerInUse(
                        f"another tokenctl process (pid {holder}) is using the ledger {self.path.name[:-5]}; "
                        "two gateways on one ledger would each enforce budgets alone. Stop it first (a "
                        "restarted gateway waits for the old one to finish its in-flight requests)"
                    ) from None
                if not announced:
                    log.warning("waiting for tokenctl pid %s to finish with the ledger", holder)
                    announced = True
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the lock
