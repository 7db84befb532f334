"""SIGKILL under load: every request a client got a complete answer for is in the ledger after restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx

from tests.conftest import free_port
from tokenctl.identity.keys import create_key
from tokenctl.ledger.db import connect
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.fake_provider import FakeProvider

BODY = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def _serve(fake_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    port = free_port()
    ledger = tmp / "ledger.db"
    config = tmp / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nledger: {{path: {ledger}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: '{fake_url}', models: ['claude-*']}}\n"
    )
    db = connect(str(ledger))
    _, key = create_key(db, user="u", team="t")
    db.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenctl", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/health")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    return proc, url, key, str(ledger)


def test_sigkill_under_load_loses_no_answered_request(fake: FakeProvider, tmp_path: Path) -> None:
    proc, url, key, ledger = _serve(fake.url, tmp_path)
    answered: list[str] = []
    stop = threading.Event()

    def client(stream: bool) -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(
                        url + "/v1/messages",
                        json={**BODY, "stream": stream},
                        headers={"x-api-key": key, "x-fake-chunks": "3"},
                    )
                    complete = r.status_code == 200 and (not stream or r.text.rstrip().endswith('"message_stop"}'))
                except httpx.TransportError:
                    return  # the gateway is gone
                if complete:
                    answered.append(r.headers["request-id"])

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(answered) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    assert len(answered) >= 400
    restarted = LedgerWriter(ledger)
    restarted.start()  # what a restarted gateway does first: replay the journal
    restarted.close()
    db = sqlite3.connect(ledger)
    recorded = {r for (r,) in db.execute("SELECT request_id FROM requests")}
    db.close()
    missing = set(answered) - recorded
    assert missing == set(), f"{len(missing)} of {len(answered)} answered requests missing after SIGKILL"
