"""Prompt-cache health through the gateway with the Anthropic SDK: a turn billed as a cache write although its
session had cached a prefix is a miss, named in the row with its cause and what it cost; a session that keeps
missing raises one alarm (audit entry) naming the cause."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx

from tests.conftest import ADMIN_KEY

HEALTH = {"observability": {"cache_alarm_misses": 2, "cache_alarm_turns": 3}}
WRITES = {"x-fake-usage": "input=50,cache_write_5m=6000,output=40"}
READS = {"x-fake-usage": "input=50,cache_read=6000,cache_write_5m=300,output=40"}


class Session:
    def __init__(self, live: Any, session: str = "b7e0c3aa-cache-health-0001") -> None:
        self.live = live
        self.client = anthropic.Anthropic(
            base_url=live.url, api_key=live.key, max_retries=0, default_headers={"x-claude-code-session-id": session}
        )
        self.messages: list[dict[str, Any]] = []

    def turn(self, text: str, usage: dict[str, str], system: str = "You are Claude Code.") -> None:
        self.messages.append(
            {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}
        )
        for earlier in self.messages[:-1]:  # Claude Code moves its breakpoints to the newest turns
            if earlier["role"] == "user":
                earlier["content"][0].pop("cache_control", None)
        reply = self.client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            system=[{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            messages=self.messages,  # type: ignore[arg-type]
            extra_headers=usage,
        )
        self.messages.append({"role": "assistant", "content": reply.content[0].text})


def alarms(live: Any) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{live.url}/admin/audit?action=cache_alarm", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    return reply.json()["data"]


def test_a_system_prompt_that_changes_every_turn_raises_the_alarm_within_three_turns(make_gateway: Any) -> None:
    live = make_gateway(HEALTH)
    s = Session(live)
    for i in range(3):
        s.turn(f"step {i}", WRITES, system=f"You are Claude Code. Current time: 10:0{i}:00")  # a timestamp: the bug
    rows = live.wait_rows(3)
    assert rows[0]["cache_miss"] is None  # the first turn writes its cache: that is not a miss
    assert [r["cache_miss"] for r in rows[1:]] == ["the system prompt changed"] * 2
    assert all(r["cache_miss_nanousd"] > 0 for r in rows[1:])  # sonnet: 6000 written at $3.75/M vs read $0.30/M
    (alarm,) = alarms(live)
    assert alarm["detail"] == "2 of the last 3 turns missed the prompt cache: the system prompt changed"
    s.turn("step 3", WRITES, system="You are Claude Code. Current time: 10:03:00")
    assert len(alarms(live)) == 1  # one alarm per session and cause


def test_a_gap_longer_than_the_cache_lifetime_is_named_and_a_healthy_session_is_not(make_gateway: Any) -> None:
    now = [1_800_000_000.0]
    live = make_gateway(HEALTH, clock=lambda: now[0])
    s = Session(live)
    s.turn("first", WRITES)
    now[0] += 60
    s.turn("second", READS)  # read its cache: healthy
    now[0] += 360  # six minutes later: the 5-minute cache has expired
    s.turn("third", WRITES)
    rows = live.wait_rows(3)
    assert rows[1]["cache_miss"] is None
    assert rows[2]["cache_miss"] == (
        "the cache lifetime ran out (360 s since the previous turn > 300 s; "
        "1-hour cache writes would keep it across such gaps)"
    )
    assert alarms(live) == []  # one miss in three turns: no alarm


def test_an_edited_early_message_is_named(make_gateway: Any) -> None:
    live = make_gateway(HEALTH)
    s = Session(live)
    s.turn("first question", WRITES)
    s.turn("second", READS)
    s.messages[1]["content"] = "an answer, rewritten"  # a harness rewriting history (not the first message)
    s.turn("third", WRITES)
    assert live.wait_rows(3)[2]["cache_miss"] == (
        "an earlier message changed (the conversation before this turn was edited)"
    )


def test_cache_health_is_off_unless_configured(make_gateway: Any) -> None:
    live = make_gateway()
    s = Session(live)
    for i in range(3):
        s.turn(f"step {i}", WRITES, system=f"changing {i}")
    assert all(r["cache_miss"] is None for r in live.wait_rows(3)) and alarms(live) == []
