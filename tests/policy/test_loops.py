"""Runaway loops: an agent repeating one tool call is paused at the configured count, in Claude Code's, Codex's
and Chat's request shapes; a pause is shown once (402, not retried), audited with evidence and no arguments,
and `tokenctl loops resume` lets the session go on until it repeats as often again."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import ADMIN_KEY, LiveGateway

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "claude_code_tool_turn.json"  # from shared/captures
LOOPS = {"loops": [{"name": "same-tool", "repeated_tool_calls": 4, "action": "pause"}]}


def _claude_code_turn(
    repeats: int, command: str = "ls /tmp", vary: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """Claude Code's captured tool turn, its history extended to ``repeats`` identical Bash calls."""
    request = json.loads(CAPTURE.read_text())["request"]
    body = copy.deepcopy(request["body"])
    first = [m for m in body["messages"] if m["role"] != "assistant" and not _is_tool_result(m)]
    messages = list(first)
    for i in range(repeats):
        args = {"command": command + (f" {i}" if vary else ""), "description": "list"}
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": args}]}
        )
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "same"}]}
        )
    body["messages"] = messages
    body["model"] = "claude-haiku-4-5"
    body["max_tokens"] = 100
    body.pop("thinking", None)
    headers = {
        k: v for k, v in request["headers"].items() if k.startswith(("x-claude", "anthropic-version", "user-agent"))
    }
    headers["x-claude-code-session-id"] = "sess-loop-1"
    return body, headers


def _is_tool_result(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content if isinstance(b, dict))


def _send(live: LiveGateway, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{live.url}/v1/messages", json=body, headers={**headers, "x-api-key": live.key}, timeout=10)


def test_claude_code_repeating_one_tool_call_is_paused_at_the_count_and_resumed(
    make_gateway: Any, tmp_path: Path
) -> None:
    live = make_gateway(LOOPS)
    body, headers = _claude_code_turn(3)
    assert _send(live, body, headers).status_code == 200  # 3 repeats: below the rule
    varied, _ = _claude_code_turn(8, vary=True)
    assert _send(live, varied, headers).status_code == 200  # 8 calls, each with other arguments: no loop
    body, headers = _claude_code_turn(4)
    paused = _send(live, body, headers)
    assert paused.status_code == 402 and paused.headers["x-should-retry"] == "false"
    message = paused.json()["error"]["message"]
    assert "loop rule 'same-tool'" in message and "Bash called 4 times" in message
    assert "tokenctl loops resume sess-loop-1" in message
    assert paused.headers["x-tokenctl-loop-rule"] == "same-tool"
    rows = live.wait_rows(3)
    assert sorted(r["status"] for r in rows) == [200, 200, 402]  # the pause is in the ledger too

    config = tmp_path / "tokenctl.yaml"
    config.write_text(f"ledger: {live.ledger_yaml()}\nloops: [{{name: same-tool, repeated_tool_calls: 4}}]\n")
    cli = [sys.executable, "-m", "tokenctl", "--config", str(config), "loops"]
    listed = json.loads(
        subprocess.run([*cli, "list", "--format", "json"], capture_output=True, text=True, check=True).stdout
    )
    assert listed[0]["subject"] == "sess-loop-1" and listed[0]["action"] == "pause" and listed[0]["repeats"] == 4
    assert "ls /tmp" not in json.dumps(listed)  # evidence names the tool, never its arguments
    out = subprocess.run([*cli, "resume", "sess-loop-1", "--by", "ops"], capture_output=True, text=True, check=True)
    assert "beyond 7 repeats" in out.stdout

    deadline = time.monotonic() + 5  # the gateway picks up the resume within key_refresh_seconds
    while _send(live, body, headers).status_code != 200:
        assert time.monotonic() < deadline, "the resume was not picked up"
        time.sleep(0.1)
    more, _ = _claude_code_turn(7)
    assert _send(live, more, headers).status_code == 200
    again, _ = _claude_code_turn(8)
    assert _send(live, again, headers).status_code == 402  # still looping: paused again
    missing = subprocess.run([*cli, "resume", "no-such-session"], capture_output=True, text=True)
    assert missing.returncode != 0 and "no loop rule paused 'no-such-session'" in missing.stderr


def test_codex_and_chat_tool_loops_are_paused_too(make_gateway: Any) -> None:
    live = make_gateway(LOOPS)
    call = {"type": "function_call", "name": "shell", "arguments": '{"cmd": ["ls"]}', "call_id": "c"}
    spaced = {**call, "arguments": '{ "cmd" : [ "ls" ] }'}  # the same arguments, spelled differently
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}
    ]
    for i in range(4):
        items += [call if i % 2 else spaced, {"type": "function_call_output", "call_id": "c", "output": "same"}]
    r = httpx.post(
        f"{live.url}/v1/responses",
        json={"model": "gpt-4.1-mini", "input": items, "stream": True},
        headers={"authorization": f"Bearer {live.key}"},
        timeout=10,
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "loop_paused"
    assert "shell called 4 times" in r.json()["error"]["message"]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for i in range(4):
        tool_call = {"id": f"t{i}", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}}
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": f"t{i}", "content": "same"},
        ]
    r = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "gpt-4.1-mini", "messages": messages},
        headers={"authorization": f"Bearer {live.key}"},
        timeout=10,
    )
    assert r.status_code == 402 and "read called 4 times" in r.json()["error"]["message"]


def test_an_alert_rule_lets_the_request_through_and_alerts_once(make_gateway: Any) -> None:
    from tests.conftest import ADMIN_KEY

    live = make_gateway({"loops": [{"name": "watch", "repeated_tool_calls": 3, "action": "alert"}]})
    for repeats in (3, 4, 5):
        body, headers = _claude_code_turn(repeats)
        assert _send(live, body, headers).status_code == 200
    live.wait_rows(3)
    audit = httpx.get(
        f"{live.url}/admin/audit?action=loop_alert", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()["data"]
    assert len(audit) == 1 and audit[0]["subject"] == "sess-loop-1" and "Bash called 3 times" in audit[0]["detail"]
    rows = live.rows()
    assert all("loop: watch" in (r["policy"] or "") for r in rows)  # each flagged on its ledger row


@pytest.mark.parametrize("bad", [{"repeated_tool_calls": 1}, {"repeated_tool_calls": 3, "action": "kill"}])
def test_bad_loop_rules_are_refused_with_the_field_named(bad: dict[str, Any]) -> None:
    from tokenctl.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"loops\[0\]\."):
        parse_config({"loops": [{"name": "x", **bad}]})


def test_the_admin_api_lists_and_resumes_paused_sessions(make_gateway: Any) -> None:
    from tests.conftest import ADMIN_KEY

    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    live = make_gateway(LOOPS)
    body, headers = _claude_code_turn(5)
    assert _send(live, body, headers).status_code == 402
    live.wait_rows(1)
    listed = httpx.get(f"{live.url}/admin/loops", headers=admin, timeout=10).json()["data"]
    assert [(d["subject"], d["rule"], d["repeats"]) for d in listed] == [("sess-loop-1", "same-tool", 5)]
    assert httpx.get(f"{live.url}/admin/loops", timeout=10).status_code == 401
    r = httpx.post(f"{live.url}/admin/loops/sess-loop-1/resume", json={"by": "lead"}, headers=admin, timeout=10)
    assert r.status_code == 200 and r.json()["data"]["repeats_allowed"] == 8
    assert _send(live, body, headers).status_code == 200  # at once on this replica
    r = httpx.post(f"{live.url}/admin/loops/nobody/resume", headers=admin, timeout=10)
    assert r.status_code == 404 and "no loop rule paused 'nobody'" in r.json()["error"]["message"]
    audit = httpx.get(f"{live.url}/admin/audit?action=loop_resume", headers=admin, timeout=10).json()["data"]
    assert audit[0]["actor"] == "lead" and audit[0]["subject"] == "sess-loop-1"


def test_a_ralph_loop_of_20_sessions_with_one_first_prompt_is_paused(make_gateway: Any) -> None:
    now = [time.time()]
    live = make_gateway(
        {"loops": [{"name": "ralph", "same_first_prompt_sessions": 20, "window_minutes": 60, "action": "pause"}]},
        clock=lambda: now[0],
    )
    body, headers = _claude_code_turn(0)  # the captured first turn: Claude Code's prompt, no tool calls yet

    def session(i: int, prompt_body: dict[str, Any] = body) -> int:
        return _send(live, prompt_body, {**headers, "x-claude-code-session-id": f"ralph-{i}"}).status_code

    assert [session(i) for i in range(19)] == [200] * 19
    other = copy.deepcopy(body)
    other["messages"][0]["content"][-1]["text"] = "a different task"
    assert session(100, other) == 200  # another first prompt is another count
    paused = _send(live, body, {**headers, "x-claude-code-session-id": "ralph-19"})
    assert paused.status_code == 402
    message = paused.json()["error"]["message"]
    assert "sessions started 20 times with the same first prompt in 60 min" in message
    assert "tokenctl loops resume key:" in message
    assert session(3) == 200  # a session counted before the loop was seen goes on
    now[0] += 61 * 60  # an hour later the window holds none of them
    assert session(200) == 200


def test_a_throttle_rule_slows_a_loop_with_429_and_retry_after_instead_of_stopping_it(make_gateway: Any) -> None:
    now = [1_800_000_000.0]
    rule = {"name": "slow", "repeated_tool_calls": 4, "action": "throttle", "throttle_per_minute": 2}
    live = make_gateway({"loops": [rule]}, clock=lambda: now[0])
    body, headers = _claude_code_turn(4)
    answers = [_send(live, body, headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]  # the bucket holds 2 a minute
    refused = answers[2]
    assert 25 <= float(refused.headers["retry-after"]) <= 31
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "loop rule 'slow' is slowing this session to 2 requests a minute" in refused.json()["error"]["message"]
    now[0] += 30  # one request's worth refilled
    assert _send(live, body, headers).status_code == 200
    below, _ = _claude_code_turn(3)
    assert _send(live, below, headers).status_code == 200  # the run is shorter than the rule: not throttled
    audits = httpx.get(
        f"{live.url}/admin/audit?action=loop_throttle", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()["data"]
    assert len(audits) == 1 and "Bash called 4 times in a row" in audits[0]["detail"]  # once, not per request
    resumed = httpx.post(
        f"{live.url}/admin/loops/sess-loop-1/resume", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    assert resumed.status_code == 200, resumed.text
    assert [_send(live, body, headers).status_code for _ in range(4)] == [200] * 4  # resumed: not throttled


def test_a_session_running_unattended_is_paused_after_the_configured_minutes(make_gateway: Any) -> None:
    now = [1_800_000_000.0]
    rule = {"name": "unattended", "unattended_minutes": 60, "action": "pause"}
    live = make_gateway({"loops": [rule]}, clock=lambda: now[0])
    user_turn, headers = _claude_code_turn(0)
    assert _send(live, user_turn, headers).status_code == 200  # the user wrote: the clock starts
    step, _ = _claude_code_turn(2, vary=True)
    now[0] += 59 * 60
    assert _send(live, step, headers).status_code == 200
    now[0] += 60
    paused = _send(live, step, headers)
    assert paused.status_code == 402 and "ran unattended for 60 min" in paused.json()["error"]["message"]
    assert _send(live, user_turn, headers).status_code == 200  # the user is back: the session goes on
    assert _send(live, step, headers).status_code == 200


def test_near_identical_answers_in_a_row_are_paused(make_gateway: Any) -> None:
    live = make_gateway({"loops": [{"name": "same-answer", "near_identical_turns": 3, "action": "pause"}]})
    body, headers = _claude_code_turn(0)
    answer = "I will now summarise the attached PDF document section by section for you again, as requested."
    for n in (1, 2):
        body["messages"] += [
            {"role": "assistant", "content": answer + ("" if n == 1 else " Here.")},
            {"role": "user", "content": "continue"},
        ]
        assert _send(live, body, headers).status_code == 200  # one, then two near-identical answers
    body["messages"] += [{"role": "assistant", "content": answer}, {"role": "user", "content": "continue"}]
    paused = _send(live, body, headers)
    assert paused.status_code == 402
    assert "the model gave 3 near-identical answers in a row" in paused.json()["error"]["message"]
    body["messages"][-2] = {"role": "assistant", "content": "The build passes now; here is the diff of the fix."}
    assert _send(live, body, headers).status_code == 200  # a different answer ends the run


def test_spend_velocity_above_the_hourly_rule_alerts_once(make_gateway: Any) -> None:
    now = [1_800_000_000.0]
    rule = {"name": "burn", "spend_per_hour_usd": 1, "action": "alert"}
    live = make_gateway({"loops": [rule]}, clock=lambda: now[0])
    body, headers = _claude_code_turn(0)
    body["model"] = "claude-opus-4-1"  # $15 / $75 per million: 20k input tokens and 10k output ≈ $1.05
    heavy = {**headers, "x-fake-usage": "input=20000,output=10000"}
    assert _send(live, body, heavy).status_code == 200
    first = live.wait_rows(1)[0]
    assert first["cost_nanousd"] > 1_000_000_000 and "burn" not in (first["policy"] or "")
    _send(live, body, heavy)  # the hour's spend is now above $1: flagged
    rows = live.wait_rows(2)
    assert "burn: spent $1 in the last hour (rule: $1/hour)" in rows[1]["policy"]
    now[0] += 3601  # an hour later the earlier spend has left the window
    _send(live, body, headers)
    assert "burn" not in (live.wait_rows(3)[2]["policy"] or "")
    audits = httpx.get(
        f"{live.url}/admin/audit?action=loop_alert", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).json()["data"]
    assert len(audits) == 1 and audits[0]["subject"] == "sess-loop-1"


def test_report_loops_lists_detections_and_refuses_filters(
    make_gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokenctl.cli.main import main

    live = make_gateway(LOOPS)
    body, headers = _claude_code_turn(4)
    assert _send(live, body, headers).status_code == 402
    live.wait_rows(1)
    capsys.readouterr()
    assert main(["report", "loops", "--ledger", str(live.config.ledger_path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["subject"] == "sess-loop-1" and rows[0]["action"] == "pause" and rows[0]["repeats"] == 4
    code = main(["report", "loops", "--team", "web", "--ledger", str(live.config.ledger_path)])
    assert code == 2 and "--team do not apply" in capsys.readouterr().err


def _history(live: LiveGateway, key_id: str, now: float, hours: int, usd: str) -> None:
    """``hours`` earlier active hours of ``key_id``, ``usd`` each, recorded through the gateway's ledger writer."""
    from decimal import Decimal

    from tokenctl.ledger.record import LedgerEntry
    from tokenctl.types import Cost, Principal

    for i in range(hours):
        live.gw.ledger.record(
            LedgerEntry(
                request_id=f"hist-{key_id}-{i}",
                started_at=now - 86400 - i * 7200,  # every other hour, from yesterday back
                api="anthropic.messages",
                status=200,
                principal=Principal(key_id=key_id, user="alice", team="payments", project=None),
                cost=Cost(Decimal(usd), Decimal(usd), True, "test"),
            )
        )
    assert live.gw.ledger.flush(10)


def test_spend_velocity_above_k_times_the_keys_own_baseline_is_paused(make_gateway: Any) -> None:
    """A key that usually spends $0.50 an hour is paused once it spends 4x that ($2) within an hour; a key
    without enough history has no baseline and is not judged by the rule; the next hour it runs again."""
    now = [1_800_000_000.0]
    rule = {"name": "velocity", "spend_per_hour_x_baseline": 4, "min_usd": 1, "action": "pause"}
    live = make_gateway({"loops": [rule]}, clock=lambda: now[0], keys={"new": {"user": "carol", "team": "web"}})
    body, headers = _claude_code_turn(0)
    body["model"] = "claude-opus-4-1"
    heavy = {**headers, "x-fake-usage": "input=20000,output=10000"}  # about $1.05 a request
    cheap = {**headers, "x-fake-usage": "input=10,output=1"}
    assert _send(live, body, cheap).status_code == 200
    key_id = live.wait_rows(1)[0]["key_id"]
    _history(live, key_id, now[0], 12, "0.5")
    now[0] += 3601  # the watcher's hourly full read of the ledger picks the history up
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{live.url}/admin/alerts/check", headers=admin, timeout=10).status_code == 200
    assert live.gw.enforcer.velocity_baselines == {key_id: 500_000_000}
    assert _send(live, body, heavy).status_code == 200
    assert _send(live, body, heavy).status_code == 200  # $2.10 spent: above 4 x $0.50
    paused = _send(live, body, heavy)
    assert paused.status_code == 402 and paused.headers["x-should-retry"] == "false"
    message = paused.json()["error"]["message"]
    assert "'velocity' paused this key's requests: spent $2 in the last hour ($2.10), 4.2x its usual $0.50/hour" in (
        message
    )
    assert f"tokenctl loops resume key:{key_id}" in message
    other = {**headers, "x-claude-code-session-id": "sess-new"}
    for _ in range(3):  # the same spend from a key with no history: no baseline, not paused
        response = httpx.post(
            f"{live.url}/v1/messages",
            json=body,
            headers={**other, "x-api-key": live.keys["new"], "x-fake-usage": "input=20000,output=10000"},
            timeout=10,
        )
        assert response.status_code == 200
    now[0] += 3601  # an hour on, the spend has left the window
    assert _send(live, body, cheap).status_code == 200
