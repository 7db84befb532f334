"""The tokenctl command: keys, report formats, serve with a clean SIGTERM shutdown that loses nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import free_port
from tokenctl.cli.main import main
from tokenctl.ledger.db import connect


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_list_revoke(tmp_path, capsys) -> None:
    ledger = str(tmp_path / "l.db")
    code, secret, err = run(
        capsys, "keys", "create", "--user", "alice", "--team", "payments", "--project", "checkout", "--ledger", ledger
    )
    secret = secret.strip()
    assert code == 0 and secret.startswith("tkc_") and "shown only now" in err
    stored = connect(ledger).execute("SELECT key_hash, prefix FROM keys").fetchall()
    assert secret not in str(stored)  # only the hash and a short prefix are stored
    _, listing, _ = run(capsys, "keys", "list", "--format", "json", "--ledger", ledger)
    (key,) = json.loads(listing)
    assert (key["user"], key["team"], key["project"]) == ("alice", "payments", "checkout")
    assert run(capsys, "keys", "revoke", key["key_id"], "--ledger", ledger)[0] == 0
    assert json.loads(run(capsys, "keys", "list", "--format", "json", "--ledger", ledger)[1]) == []
    assert json.loads(run(capsys, "keys", "list", "--all", "--format", "json", "--ledger", ledger)[1])[0]["revoked_at"]
    code, _, err = run(capsys, "keys", "revoke", "key_missing", "--ledger", ledger)
    assert code == 2 and "no key" in err


def test_report_by_team_in_every_format(gateway, capsys) -> None:
    for usage in ("input=1000,output=100", "input=3000,cache_read=2000,output=10"):
        httpx.post(
            gateway.url + "/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
            headers={"x-api-key": gateway.key, "x-fake-usage": usage},
        )
    httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
        headers={"x-api-key": gateway.keys["limited"], "x-fake-usage": "input=10,output=1"},
    )
    gateway.rows()
    ledger = gateway.db_path
    # haiku-4-5: $1 in, $0.10 cache read, $5 out. payments: (1000 + 1000)*1 + 2000*0.1 + 110*5 = 2750 per 1e6
    _, out, _ = run(capsys, "report", "--by", "team", "--format", "json", "--ledger", ledger)
    by_team = {r["group"]: r for r in json.loads(out)}
    assert by_team["payments"]["requests"] == 2 and Decimal(by_team["payments"]["cost_usd"]) == Decimal("0.00275")
    assert by_team["payments"]["cache_read_tokens"] == 2000 and by_team["payments"]["input_tokens"] == 2000
    assert by_team["web"]["requests"] == 1
    _, out, _ = run(capsys, "report", "--by", "user", "--format", "csv", "--since", "1h", "--ledger", ledger)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["user"] for r in rows} == {"alice", "bob"}
    _, table, _ = run(capsys, "report", "--by", "model", "--ledger", ledger)
    assert "claude-haiku-4-5" in table and "TOTAL" in table and "$0.0028" in table
    _, empty, _ = run(
        capsys, "report", "--by", "day", "--since", "2000-01-01", "--until", "2000-01-02", "--ledger", ledger
    )
    assert "(no rows)" in empty
    assert run(capsys, "report", "--since", "yesterday-ish", "--ledger", ledger)[0] == 2


def test_migrate_lists_applied_migrations(tmp_path, capsys) -> None:
    _, out, _ = run(capsys, "migrate", "--ledger", str(tmp_path / "l.db"))
    assert "m001_create_keys" in out and "m003_index_requests" in out


def test_bad_config_is_a_clear_error(tmp_path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  - {name: a, kind: nope, base_url: 'http://x', models: ['*']}\n")
    code, _, err = run(capsys, "--config", str(config), "keys", "list")
    assert code == 2 and "kind" in err


@pytest.fixture
def served(fake, tmp_path: Path):
    """A real `tokenctl serve` process pointed at the fake provider."""
    port = free_port()
    ledger = tmp_path / "ledger.db"
    config = tmp_path / "tokenctl.yaml"
    config.write_text(
        f"server: {{port: {port}, shutdown_grace_seconds: 20}}\nledger: {{path: {ledger}}}\n"
        f"providers:\n  - {{name: a, kind: anthropic, base_url: '{fake.url}', models: ['claude-*']}}\n"
    )
    _, key = __import__("tokenctl.identity.keys", fromlist=["create_key"]).create_key(
        connect(str(ledger)), user="u", team="t"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenctl", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.head(url + "/")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield proc, url, key, str(ledger)
    if proc.poll() is None:
        proc.kill()


def test_sigterm_finishes_in_flight_streams_and_loses_no_ledger_row(served) -> None:
    proc, url, key, ledger = served
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": True, "messages": []}
    results: list[bytes] = []

    streaming = threading.Semaphore(0)

    def slow_stream() -> None:  # 30 deltas, 20 ms apart: still streaming when SIGTERM arrives
        with httpx.stream(
            "POST",
            url + "/v1/messages",
            json=body,
            timeout=30,
            headers={"x-api-key": key, "x-fake-chunks": "30", "x-fake-fault": "stall:20"},
        ) as r:
            streaming.release()  # the answer has started: SIGTERM may come now
            results.append(r.read())

    for _ in range(20):
        assert (
            httpx.post(url + "/v1/messages", json={**body, "stream": False}, headers={"x-api-key": key}).status_code
            == 200
        )
    threads = [threading.Thread(target=slow_stream) for _ in range(5)]
    for t in threads:
        t.start()
    for _ in threads:  # every stream in flight (on a loaded machine a fixed sleep may not be enough)
        assert streaming.acquire(timeout=15)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert proc.wait(30) == 0
    assert len(results) == 5 and all(r.rstrip().endswith(b'data: {"type":"message_stop"}') for r in results)
    rows = connect(ledger).execute("SELECT outcome, stream FROM requests").fetchall()
    assert len(rows) == 25 and all(outcome == "ok" for outcome, _ in rows)
    assert b"ledger flushed" in proc.stdout.read()
