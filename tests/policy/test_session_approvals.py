"""Approvals judge what is known and cover agent sessions: ``above_usd`` compares the input as sent plus the
output the key usually writes, not the worst case (Claude Code asks for 64,000 output tokens every turn), and
approving a held turn of a session lets that session's next turns and retries through, not the next session's."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import ADMIN_KEY, LiveGateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
RULE = {"approvals": [{"name": "big", "scope": "org", "above_usd": "1"}]}


def _turn(live: LiveGateway, session: str, text: str) -> httpx.Response:
    """A Claude Code-shaped turn on Opus 4.1 ($15 / $75 per million) asking for 64,000 output tokens."""
    body = {
        "model": "claude-opus-4-1",
        "max_tokens": 64_000,
        "stream": True,
        "messages": [{"role": "user", "content": text}],
    }
    headers = {"x-api-key": live.key, "x-claude-code-session-id": session, "anthropic-version": "2023-06-01"}
    return httpx.post(f"{live.url}/v1/messages", json=body, headers=headers, timeout=30)


def test_say_hi_is_not_held_for_a_worst_case_it_never_reaches(make_gateway: Any) -> None:
    live = make_gateway(RULE)
    assert _turn(live, "s-small", "say hi").status_code == 200  # worst case $4.80; expected about $0.31
    big = _turn(live, "s-big", "refactor this: " + "x" * 240_000)  # 80,000 input tokens: $1.20 before output
    assert big.status_code == 402 and big.headers["x-tokenctl-approval-id"].startswith("apr_")
    assert "is above $1; rule 'big'" in big.json()["error"]["message"]


@pytest.mark.parametrize("only_request", [False, True])
def test_approving_a_turn_covers_its_session_unless_asked_for_one_request(
    make_gateway: Any, only_request: bool
) -> None:
    live = make_gateway(RULE)
    long_turn = "refactor this: " + "x" * 240_000
    held = _turn(live, "agent-1", long_turn)
    assert held.status_code == 402
    approval_id = held.headers["x-tokenctl-approval-id"]
    decided = httpx.post(
        f"{live.url}/admin/approvals/{approval_id}/approve",
        headers=ADMIN,
        json={"by": "dana", "only_request": only_request},
        timeout=10,
    ).json()["data"]
    assert decided["grant_scope"] == ("request" if only_request else "session")
    assert decided["session_id"] == "agent-1"
    assert _turn(live, "agent-1", long_turn).status_code == 200  # the retry
    next_turn = _turn(live, "agent-1", long_turn + " and now the tests")  # a new request of the same session
    assert next_turn.status_code == (402 if only_request else 200)
    assert _turn(live, "agent-2", long_turn).status_code == 402  # another session is held on its own
    rows = [r for r in live.rows() if r["status"] == 200]
    assert all(r["approval_id"] == approval_id for r in rows)
