"""`tokenctl demo`: one command, no provider key, a full dashboard on clearly labelled synthetic data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx

from tests.conftest import free_port


def test_demo_serves_a_full_dashboard_on_synthetic_data(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}  # no provider key anywhere
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenctl",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
            "--rows",
            "3000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        printed = ""
        deadline = time.monotonic() + 120
        while "Ctrl-C" not in printed and time.monotonic() < deadline:
            printed += proc.stdout.readline()
        assert "SYNTHETIC DEMO DATA" in printed and f"http://127.0.0.1:{port}/ui/" in printed
        admin = re.search(r"Sign in\s+(\S+)", printed).group(1)  # type: ignore[union-attr]
        client = re.search(r"x-api-key: (tkc_\S+)'", printed).group(1)  # type: ignore[union-attr]
        base, auth = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {admin}"}

        def api(path: str) -> dict:  # type: ignore[type-arg]
            response = httpx.get(f"{base}/ui/api/{path}", headers=auth)
            assert response.status_code == 200, response.text
            return response.json()

        assert "synthetic" in api("me")["banner"]
        overview = api("overview")
        assert overview["today_requests"] > 0 and overview["top_teams"]
        approvals = api("approvals")["rows"]
        assert [a["status"] for a in approvals] == ["pending"]
        used = [b["used_percent"] for b in api("budgets")["rows"]]
        assert any(80 <= u < 100 for u in used)
        assert api("savings?start=2000-01-01")["routing_saved_usd"] != "0"
        sessions = api("sessions")["rows"]
        assert any(s["session_id"].endswith("runaway") for s in sessions)
        reply = httpx.post(
            f"{base}/v1/messages",
            headers={"x-api-key": client, "anthropic-version": "2023-06-01"},
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 200
        detail = f"{base}/ui/api/requests/{reply.headers['request-id']}"
        deadline = time.monotonic() + 5  # the row reaches the database at the writer's next cycle (100 ms)
        while (found := httpx.get(detail, headers=auth)).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert found.status_code == 200, found.text
        latest = found.json()
        assert datetime.fromisoformat(latest["ts"].replace("Z", "+00:00")).date() == datetime.now(UTC).date()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
