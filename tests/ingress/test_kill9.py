"""SIGKILL under load: every request a client got a complete answer for is in the ledger after restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import free_port
from tests.ledgers import ledger_section
from tokenctl.identity.keys import create_key
from tokenctl.ledger.db import connect
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.fake_provider import FakeProvider

BODY = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def _serve(
    fake_url: str, tmp: Path, engine: str, *extra_args: str, extra_config: str = ""
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    proc, url, key, ledger = _launch(fake_url, tmp, engine, *extra_args, extra_config=extra_config)
    for _ in range(200):
        try:
            httpx.get(url + "/health")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, url, key, ledger


def _launch(
    fake_url: str, tmp: Path, engine: str, *extra_args: str, extra_config: str = ""
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    port = free_port()
    section = ledger_section(tmp, engine)
    ledger = str(section.get("url") or section["path"])
    config = tmp / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nledger: {orjson.dumps(section).decode()}\n{extra_config}"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: '{fake_url}', models: ['claude-*']}}\n"
    )
    db = connect(ledger)
    _, key = create_key(db, user="u", team="t")
    db.close()
    with (tmp / "gateway.log").open("wb") as log:  # read by a failing assertion
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenctl", "--config", str(config), "serve", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}", key, ledger


class Load:
    """Eight clients (half streaming) sending until stopped; the ids of the answers that arrived complete."""

    def __init__(self, url: str, key: str) -> None:
        self.answered: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(url, key, i % 2 == 0)) for i in range(8)]
        for t in self.threads:
            t.start()

    def _client(self, url: str, key: str, stream: bool) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(
                        url + "/v1/messages",
                        json={**BODY, "stream": stream},
                        headers={"x-api-key": key, "x-fake-chunks": "3"},
                    )
                    complete = r.status_code == 200 and (not stream or r.text.rstrip().endswith('"message_stop"}'))
                except httpx.TransportError:  # the gateway is gone (or the worker that held this connection)
                    time.sleep(0.01)
                    continue
                if complete:
                    self.answered.append(r.headers["request-id"])

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answered) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.answered) >= count, f"only {len(self.answered)} answers"

    def finish(self) -> list[str]:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        return list(self.answered)


def _recorded(ledger: str) -> set[str]:
    db = connect(ledger, migrate_schema=False)
    try:
        return {r for (r,) in db.execute("SELECT request_id FROM requests")}
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_no_answered_request(fake: FakeProvider, tmp_path: Path, engine: str) -> None:
    proc, url, key, ledger = _serve(fake.url, tmp_path, engine)
    load = Load(url, key)
    load.wait_for(400)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    answered = load.finish()
    journal = str(tmp_path / "journal" / "ledger") if engine == "postgresql" else None
    restarted = LedgerWriter(ledger, journal_path=journal)
    restarted.start()  # what a restarted gateway does first: replay the journal
    restarted.close()
    missing = set(answered) - _recorded(ledger)
    assert missing == set(), f"{len(missing)} of {len(answered)} answered requests missing after SIGKILL"


def test_a_sigkilled_worker_is_restarted_and_replays_its_journal(fake: FakeProvider, tmp_path: Path) -> None:
    """``serve --workers 2`` on PostgreSQL and Redis: one worker SIGKILLed under load is started again by the
    supervisor, replays its own journal, and every answered request (through either worker) is recorded once."""
    prefix = f"kill9-{os.getpid()}-{time.monotonic_ns()}:"
    store = f"store: {{redis_url: 'redis://127.0.0.1:6379/0', key_prefix: '{prefix}'}}\n"
    proc, url, key, ledger = _serve(fake.url, tmp_path, "postgresql", "--workers", "2", extra_config=store)
    try:
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        load = Load(url, key)
        load.wait_for(300)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        restarted: list[int] = []
        while not restarted and time.monotonic() < deadline:  # a new worker in the killed one's place
            time.sleep(0.1)
            restarted = [pid for pid in _worker_pids(proc.pid) if pid not in workers]
        assert len(restarted) == 1, "the supervisor did not start the killed worker again"
        before = len(load.answered)
        load.wait_for(before + 200)  # both workers answer again
        answered = load.finish()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    recorded = _recorded(ledger)
    missing = set(answered) - recorded
    assert missing == set(), f"{len(missing)} of {len(answered)} answered requests missing after a worker's SIGKILL"
    left = list((tmp_path / "journal").rglob("*.jsonl"))
    log = (tmp_path / "gateway.log").read_text(errors="replace")[-4000:]
    assert not left, f"journal segments left after a clean stop: {left}\n{log}"


def test_a_sigterm_while_starting_stops_cleanly(fake: FakeProvider, tmp_path: Path) -> None:
    """SIGTERM the moment the ledger's journal exists (the writer has started, the server is not yet
    listening): the gateway still stops as on any SIGTERM, exit code 0 and no journal segment left behind.
    (A supervisor stopping a worker it has just restarted does this; the default action killed the process.)"""
    proc, _url, _key, ledger = _launch(fake.url, tmp_path, "sqlite")
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("*.journal.*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert list(tmp_path.glob("*.journal.*.jsonl")), "the gateway never opened its journal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "stopped; ledger flushed" in log, log[-3000:]
    assert not list(tmp_path.glob("*.journal.*.jsonl")), log[-3000:]
    assert Path(ledger).exists()


def _worker_pids(parent: int) -> list[int]:
    import psutil

    return sorted(child.pid for child in psutil.Process(parent).children() if child.status() != "zombie")
