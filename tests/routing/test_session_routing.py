"""Routing per user turn through the gateway: tool-result steps keep the turn's tier, a struggling cheap tier
escalates (at once, or at the next turn when switching costs too much), and a dry run serves the model asked
for while the ledger records what routing would have done. Agents are driven with the Anthropic and OpenAI
SDKs in the shapes Claude Code and Codex send (tool_result blocks with is_error, function_call_output items)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tokenctl.cli.main import main

SESSION = {"x-claude-code-session-id": "0c5e6a1e-2b4d-4e8a-9a61-00000000e5c1"}
BASE: dict[str, Any] = {
    "aliases": {"auto": "claude-sonnet-4-5"},
    "routing": {
        "routed_models": ["auto", "gpt-5"],
        "tiers": {
            "economy": {"models": ["claude-haiku-4-5", "gpt-5-mini"]},
            "premium": {"models": ["claude-sonnet-4-5", "gpt-5"]},
        },
        "rules": [
            {"tier": "premium", "min_input_tokens": 4000},
            {"tier": "economy"},
        ],
        "escalation": {"to": "premium", "failing_tool_results": 3},
    },
}
FAILED = "Exit code 1\n============ 2 failed, 14 passed in 0.41s ============\nFAILED tests/test_parser.py::test_dates"
PASSED = "Exit code 0\n============ 16 passed in 0.39s ============"
TOOLS = [
    {
        "name": "Bash",
        "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
    }
]


def config(**escalation: Any) -> dict[str, Any]:
    c = copy.deepcopy(BASE)
    c["routing"]["escalation"].update(escalation)
    return c


class Agent:
    """A Claude Code-shaped agent loop: the gateway's answers are appended, the test plays the tool."""

    def __init__(self, live: Any) -> None:
        headers = {**SESSION, "x-fake-tool": "Bash", "x-fake-tool-until": "16 passed"}
        self.client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, default_headers=headers)
        self.messages: list[dict[str, Any]] = []
        self.live = live

    def user(self, text: str) -> Any:
        self.messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
        return self._send()

    def tool_result(self, output: str, *, is_error: bool) -> Any:
        last = self.messages[-1]
        call = next(b for b in last["content"] if b["type"] == "tool_use")
        block = {"type": "tool_result", "tool_use_id": call["id"], "content": output, "is_error": is_error}
        self.messages.append({"role": "user", "content": [block]})
        return self._send()

    def _send(self) -> Any:
        reply = self.client.messages.create(
            model="auto",
            max_tokens=300,
            tools=TOOLS,
            messages=self.messages,  # type: ignore[arg-type]
        )
        self.messages.append({"role": "assistant", "content": [b.model_dump() for b in reply.content]})
        return reply

    def served(self) -> list[str]:
        return [orjson.loads(r.body)["model"] for r in self.live.fake.received]


def test_a_cheap_tier_failing_its_tool_calls_three_times_escalates_on_the_third(make_gateway: Any) -> None:
    live = make_gateway(config())
    agent = Agent(live)
    agent.user("Fix the failing date test in tests/test_parser.py")
    agent.tool_result(FAILED, is_error=True)
    agent.tool_result(FAILED, is_error=True)
    assert agent.served() == ["claude-haiku-4-5"] * 3  # two failures: the cheap tier keeps the turn
    agent.tool_result(FAILED, is_error=True)  # the third failure in a row: escalated at once (small context)
    agent.tool_result(PASSED, is_error=False)
    agent.user("Thanks. Now add a test for leap years.")
    assert agent.served() == ["claude-haiku-4-5"] * 3 + ["claude-sonnet-4-5"] * 3
    rows = live.wait_rows(6)
    assert [r["route_escalation"] for r in rows] == [None] * 3 + ["3 failing tool results in a row on economy"] + [
        None
    ] * 2
    assert "escalated to premium: 3 failing tool results in a row on economy" in rows[3]["policy"]
    assert [r["route_tier"] for r in rows] == ["economy"] * 3 + ["premium"] * 3
    assert "continues the turn on its tier" in rows[4]["policy"]
    assert "the session was escalated: 3 failing tool results" in rows[5]["policy"]


def test_a_success_between_failures_resets_the_count(make_gateway: Any) -> None:
    live = make_gateway(config(repeated_tool_calls=0))  # the fake agent repeats one call: only failures count here
    agent = Agent(live)
    agent.user("Fix the failing date test in tests/test_parser.py")
    agent.tool_result(FAILED, is_error=True)
    agent.tool_result(FAILED, is_error=True)
    agent.tool_result("Exit code 0\nok", is_error=False)  # one command worked: not three failures in a row
    agent.tool_result(FAILED, is_error=True)
    assert set(agent.served()) == {"claude-haiku-4-5"}
    assert all(r["route_escalation"] is None for r in live.wait_rows(5))


def test_escalation_waits_for_the_next_turn_when_switching_now_costs_too_much(make_gateway: Any) -> None:
    live = make_gateway(config(at_once_max_usd=0))
    agent = Agent(live)
    agent.user("Fix the failing date test in tests/test_parser.py")
    for _ in range(3):
        agent.tool_result(FAILED, is_error=True)
    agent.tool_result(FAILED, is_error=True)
    assert set(agent.served()) == {"claude-haiku-4-5"}  # mid-turn: the prompt cache is worth more
    agent.user("Try again, more carefully.")
    assert agent.served()[-1] == "claude-sonnet-4-5"
    rows = live.wait_rows(6)
    assert "escalation to premium waits for the next user turn: 3 failing tool results" in rows[3]["policy"]
    assert rows[3]["route_escalation"] is None and rows[5]["route_escalation"] is None
    assert "escalated at this turn: 3 failing tool results in a row on economy" in rows[5]["policy"]


def test_tool_result_steps_keep_the_turns_tier_whatever_their_size(make_gateway: Any) -> None:
    live = make_gateway(config())
    agent = Agent(live)
    agent.user("List the modules in src/")
    big_listing = "src/module_%04d.py\n" * 2500  # ~45 KB of tool output: the size rule alone says premium
    agent.tool_result(big_listing % tuple(range(2500)) + PASSED, is_error=False)
    assert agent.served() == ["claude-haiku-4-5", "claude-haiku-4-5"]
    rows = live.wait_rows(2)
    assert "continues the turn on its tier" in rows[1]["policy"] and rows[1]["route_score"] is None


def test_a_turn_under_way_seen_first_is_judged_on_its_users_words_not_the_tool_output(make_gateway: Any) -> None:
    """After a restart (or on another replica) the first request seen may be a tool-result step."""
    live = make_gateway(config())
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, default_headers=SESSION)
    messages: list[Any] = [
        {"role": "user", "content": "Rename foo to bar in utils.py"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
    ]
    client.messages.create(model="auto", max_tokens=100, tools=TOOLS, messages=messages)  # type: ignore[arg-type]
    row = live.wait_rows(1)[0]
    assert row["model"] == "claude-haiku-4-5"
    assert "a turn already under way, on the tier its text gets (rule (always))" in row["policy"]


def test_the_same_call_repeated_escalates_too(make_gateway: Any) -> None:
    live = make_gateway(config(failing_tool_results=0, repeated_tool_calls=3))
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, default_headers=SESSION)
    messages: list[Any] = [{"role": "user", "content": "Why does the build fail?"}]
    for i in range(3):
        call = {"type": "tool_use", "id": f"toolu_{i}", "name": "Read", "input": {"file_path": "/src/build.py"}}
        messages += [
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "..."}]},
        ]
        client.messages.create(model="auto", max_tokens=100, messages=messages)
    rows = live.wait_rows(3)
    assert [r["model"] for r in rows] == ["claude-haiku-4-5", "claude-haiku-4-5", "claude-sonnet-4-5"]
    assert rows[2]["route_escalation"] == "Read called 3 times in a row with the same arguments on economy"


def test_the_model_giving_up_escalates_at_the_next_user_turn(make_gateway: Any) -> None:
    live = make_gateway(config())
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0, default_headers=SESSION)
    messages: list[Any] = [{"role": "user", "content": "Make the flaky websocket test pass"}]
    client.messages.create(model="auto", max_tokens=100, messages=messages)
    messages += [
        {"role": "assistant", "content": "I'm sorry, I can't fix this without access to the server logs."},
        {"role": "user", "content": "The logs are in /var/log/app. Please look again."},
    ]
    client.messages.create(model="auto", max_tokens=100, messages=messages)
    rows = live.wait_rows(2)
    assert [r["model"] for r in rows] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    assert rows[1]["route_escalation"] == "the model said it could not do it on economy"


def test_codex_tool_outputs_that_fail_escalate_a_responses_session(make_gateway: Any) -> None:
    live = make_gateway(config())
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    items: list[Any] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Make the tests pass"}]}
    ]
    headers = {"session_id": "0199a7c4-codex-session-0001"}
    client.responses.create(model="gpt-5", input=items, extra_headers=headers)
    for i in range(3):
        items += [
            {"type": "custom_tool_call", "call_id": f"call_{i}", "name": "exec", "input": f"pytest -x # try {i}"},
            {
                "type": "custom_tool_call_output",
                "call_id": f"call_{i}",
                "output": [{"type": "input_text", "text": "Exit code: 1\nWall time: 0.4 seconds\nOutput:\n1 failed"}],
            },
        ]
        client.responses.create(model="gpt-5", input=items, extra_headers=headers)
    rows = live.wait_rows(4)
    assert [r["model"] for r in rows] == ["claude-haiku-4-5"] * 3 + ["claude-sonnet-4-5"]  # Codex on Claude, translated
    assert rows[3]["route_escalation"] == "3 failing tool results in a row on economy"


def test_a_dry_run_serves_the_model_asked_for_and_records_the_would_be_route(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    c = config()
    c["routing"]["mode"] = "dry_run"
    live = make_gateway(c)
    agent = Agent(live)
    agent.user("Fix the failing date test in tests/test_parser.py")
    for _ in range(3):
        agent.tool_result(FAILED, is_error=True)
    assert set(agent.served()) == {"claude-sonnet-4-5"}  # always what the client asked for
    rows = live.wait_rows(4)
    first = rows[0]
    assert first["model"] == "claude-sonnet-4-5" and first["route_dry_run"] == 1
    assert first["route_tier"] == "economy" and first["would_model"] == "claude-haiku-4-5"
    assert 0 < first["would_nanousd"] < first["cost_nanousd"]  # haiku would have cost less for the same usage
    assert first["saving_source"] is None and first["counterfactual_nanousd"] is None  # nothing was saved yet
    assert "route dry-run: would send economy -> claude-haiku-4-5" in first["policy"]
    # the would-be escalation is recorded too; premium is what was served, so there is no would-be model
    assert rows[3]["route_escalation"] == "3 failing tool results in a row on economy"
    assert rows[3]["route_tier"] == "premium" and rows[3]["would_model"] is None
    # tokenctl report routing: what the dry run would have saved, from the same rows
    capsys.readouterr()
    assert main(["report", "routing", "--ledger", str(live.config.ledger_path), "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    served = sum(r["cost_nanousd"] for r in rows[:3])
    would = sum(r["would_nanousd"] for r in rows[:3])
    assert Decimal(report["dry_run_would_save_usd"]) == Decimal(served - would) / 10**9 > 0
    tiers = {t["tier"]: t for t in report["by_tier"]}
    assert tiers["economy"]["dry_run_requests"] == 3 and tiers["premium"]["escalations"] == 1
