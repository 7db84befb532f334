"""``tokenctl serve --workers N``: N gateway processes on one port, each with its own event loop, supervised.

The parent binds the port (so a taken port is one clear line before anything starts), then forks the workers,
which share the listening socket: the kernel hands each new connection to one of them. Each worker is a whole
gateway: its own ledger writer with its own local journal (``worker-<i>``), sharing the ledger database and the
Redis store with the others, which is why more than one worker needs ``store.redis_url`` (budgets counted in
one process each would let every worker spend the whole cap).

A worker that dies (crash, OOM, SIGKILL) is started again under the same number: it replays its journal, so
no answered request goes unrecorded. SIGTERM or SIGINT to the parent stops every worker gracefully (in-flight
requests finish, ledgers flush) and the parent exits when they have.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from tokenctl.config import Config, ConfigError
from tokenctl.ledger.db import is_postgres
from tokenctl.ledger.journal import Journal, LedgerInUse, LedgerLock
from tokenctl.ledger.writer import LedgerWriter

log = logging.getLogger("tokenctl")

RESTART_BACKOFF_MAX_SECONDS = 5.0


def worker_config(config: Config, number: int) -> Config:
    """The config of worker ``number``: its own journal (and journal lock) beside the ledger's."""
    if config.ledger_journal_path is not None:  # PostgreSQL: <journal_dir>/worker-<i>/ledger
        base = Path(config.ledger_journal_path)
        return replace(config, ledger_journal_path=str(base.parent / f"worker-{number}" / base.name))
    return replace(config, ledger_journal_path=f"{config.ledger_path}.worker-{number}")


def check_workers(config: Config, workers: int) -> None:
    if workers < 1:
        raise ConfigError("--workers: at least 1")
    if workers > 1 and not config.store.redis_url:
        raise ConfigError(
            f"--workers {workers} needs a shared budget store (store.redis_url): with counters in each process, "
            "every worker would let its callers spend the whole budget"
        )
    if workers > 1 and config.ledger_path == ":memory:":
        raise ConfigError("--workers: an in-memory ledger cannot be shared between processes")


class Supervisor:
    """Forks the workers, restarts those that die, stops them all on SIGTERM/SIGINT."""

    def __init__(self, config: Config, workers: int, sock: socket.socket, run_worker: Callable[[Config], int]) -> None:
        self.config = config
        self.workers = workers
        self.sock = sock
        self.run_worker = run_worker
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}

    def run(self) -> int:
        lock = None if is_postgres(self.config.ledger_path) else LedgerLock(self.config.ledger_path)
        if lock is not None:  # no single-process gateway may start on this ledger beside the workers
            lock.acquire(self.config.shutdown_grace_seconds + 5)
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for number in range(1, self.workers + 1):
                self._spawn(number)
            log.info("tokenctl supervisor pid %d: %d workers on one port", os.getpid(), self.workers)
            return self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if lock is not None:
                lock.release()

    def _spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: a whole gateway of its own
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                code = self.run_worker(worker_config(self.config, number))
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = number
        self._started_at[number] = time.monotonic()
        log.info("worker %d started (pid %d)", number, pid)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.children))
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _watch(self) -> int:
        code = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            number = self.children.pop(pid, None)
            if number is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                code = code or (exit_code if exit_code > 0 else 0)
                continue
            self._restart(number, pid, exit_code)
        return code

    def _restart(self, number: int, pid: int, exit_code: int) -> None:
        how = f"signal {-exit_code}" if exit_code < 0 else f"exit code {exit_code}"
        lived = time.monotonic() - self._started_at.get(number, 0.0)
        self._failures[number] = self._failures.get(number, 0) + 1 if lived < 10 else 1
        delay = min(RESTART_BACKOFF_MAX_SECONDS, 0.2 * 2 ** (self._failures[number] - 1))
        log.error("worker %d (pid %d) ended with %s; starting it again in %.1f s", number, pid, how, delay)
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.stopping:
            self._spawn(number)


def journal_bases(config: Config) -> list[str]:
    """Every journal a gateway on this ledger may have left: the single process's and each worker's."""
    if config.ledger_path == ":memory:":
        return []
    if config.ledger_journal_path is not None:
        base = Path(config.ledger_journal_path)
        workers = sorted(base.parent.glob(f"worker-*/{base.name}.journal.*"))
        return [str(base), *dict.fromkeys(str(p.parent / base.name) for p in workers)]
    ledger = Path(config.ledger_path)
    workers = sorted(ledger.parent.glob(f"{ledger.name}.worker-*.journal.*"))
    return [str(ledger), *dict.fromkeys(str(p.parent / p.name.split(".journal.")[0]) for p in workers)]


def write_left_journals(config: Config) -> list[str]:
    """Write the rows that stopped gateways left in their journals (a retired host, fewer workers than before).
    A journal a running gateway holds is left to it. Returns a line per journal that had rows."""
    said = []
    for base in journal_bases(config):
        rows = sum(1 for path in Journal(base).existing() for _ in path.open("rb"))
        if not rows:
            continue
        writer = LedgerWriter(config.ledger_path, journal_path=base if base != config.ledger_path else None)
        try:
            writer.start()
        except LedgerInUse:
            said.append(f"{base}: {rows:,} rows left to the gateway running on it")
            continue
        writer.close()
        left = sum(1 for path in Journal(base).existing() for _ in path.open("rb"))
        said.append(f"{base}: wrote {rows - left:,} journaled rows" + (f", {left:,} still waiting" if left else ""))
    return said
