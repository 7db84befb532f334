"""A full disk: requests under budgets are refused with 503 rather than served unmetered, nothing answered is
lost, and the gateway recovers by itself when space returns. Runs on a real, tiny tmpfs (needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tokenctl-test", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 10, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_full_disk_fails_budgeted_requests_closed_and_recovers(make_gateway: Any, tiny_disk: Path) -> None:
    ledger = tiny_disk / "ledger.db"
    live = make_gateway(
        {"ledger": {"path": str(ledger)}, "budgets": [{"name": "team-cap", "scope": "team", "limit_usd": 100}]}
    )
    headers = {"x-api-key": live.key}
    answered = []
    for _ in range(5):
        r = httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers)
        assert r.status_code == 200
        answered.append(r.headers["request-id"])
    assert live.gw.ledger.flush(10)
    filler = _fill(tiny_disk)
    statuses = []
    for _ in range(40):
        r = httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers)
        statuses.append(r.status_code)
        if r.status_code == 200:
            answered.append(r.headers["request-id"])
        else:
            assert r.status_code == 503 and "cannot record" in r.json()["error"]["message"]
    assert 503 in statuses  # refused, not served unmetered
    assert httpx.get(live.url + "/ready").status_code == 503
    filler.unlink()  # space comes back
    deadline = time.monotonic() + 30
    while httpx.get(live.url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    r = httpx.post(live.url + "/v1/messages", json=MESSAGES, headers=headers)
    assert r.status_code == 200
    answered.append(r.headers["request-id"])
    assert live.gw.ledger.flush(20)
    recorded = {row["request_id"] for row in live.rows()}
    assert set(answered) <= recorded
    assert len(recorded) == 5 + 40 + 1  # the refused requests are in the ledger too
