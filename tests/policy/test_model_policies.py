"""Model policies through a live gateway: clamps on every API shape, rewrites, allow/deny, size, rate limits."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from tests.conftest import ADMIN_KEY, LiveGateway
from tokenctl.ledger.db import connect
from tokenctl.types import Usage

POLICIES = {
    "policies": [
        {
            "name": "org-defaults",
            "scope": "org",
            "max_effort": "medium",
            "max_tokens": 4096,
            "rewrite": {"claude-opus-*": "claude-sonnet-4-5"},
            "deny_models": ["o3*"],
        },
        {"name": "web-small", "scope": "team", "match": "web", "max_request_bytes": 2000},
    ]
}


def _sent(live: LiveGateway) -> dict[str, Any]:
    return orjson.loads(live.last_upstream().body)


def _decisions(live: LiveGateway) -> str:
    return live.wait_rows(1)[-1]["policy"] or ""


def test_effort_and_output_are_clamped_not_rejected_on_anthropic_messages(make_gateway: Any) -> None:
    live = make_gateway(POLICIES)
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    reply = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=20_000,
        messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "enabled", "budget_tokens": 16_000},
        extra_body={"output_config": {"effort": "high"}},
    )
    assert reply.content
    sent = _sent(live)
    assert sent["max_tokens"] == 4096
    assert sent["output_config"]["effort"] == "medium"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4095}  # below the clamped max_tokens
    assert "clamp output_config.effort high->medium (org-defaults)" in _decisions(live)


def test_effort_is_clamped_on_chat_completions_and_responses(make_gateway: Any) -> None:
    live = make_gateway(POLICIES)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    client.chat.completions.create(model="gpt-5", reasoning_effort="high", messages=[{"role": "user", "content": "hi"}])
    sent = _sent(live)
    assert sent["reasoning_effort"] == "medium" and sent["max_completion_tokens"] == 4096
    client.responses.create(model="gpt-5", input="hi", reasoning={"effort": "xhigh"}, max_output_tokens=50_000)
    sent = _sent(live)
    assert sent["reasoning"]["effort"] == "medium" and sent["max_output_tokens"] == 4096
    low = client.responses.create(model="gpt-5", input="hi", reasoning={"effort": "low"}, max_output_tokens=100)
    assert low.status == "completed"
    assert _sent(live)["reasoning"]["effort"] == "low"  # under the ceiling: untouched


def test_claude_code_per_turn_output_config_inside_system_messages_is_clamped(make_gateway: Any) -> None:
    live = make_gateway(POLICIES)
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1000,
        "stream": False,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "env", "output_config": {"effort": "max"}},
        ],
    }
    r = httpx.post(f"{live.url}/v1/messages", json=body, headers={"x-api-key": live.key}, timeout=30)
    assert r.status_code == 200
    assert _sent(live)["messages"][1]["output_config"]["effort"] == "medium"


def test_default_model_rewrite_applies_unless_the_key_may_opt_in(make_gateway: Any) -> None:
    live = make_gateway(POLICIES, keys={"premium": {"user": "carol", "team": "payments", "opt_in": True}})
    for key, expected in ((live.key, "claude-sonnet-4-5"), (live.keys["premium"], "claude-opus-4-5")):
        client = anthropic.Anthropic(base_url=live.url, api_key=key, max_retries=0)
        client.messages.create(model="claude-opus-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        assert _sent(live)["model"] == expected
    rows = live.wait_rows(2)
    assert rows[0]["requested_model"] == "claude-opus-4-5" and rows[0]["model"] == "claude-sonnet-4-5"
    assert "rewrite: claude-opus-4-5->claude-sonnet-4-5" in rows[0]["policy"]


def test_denied_model_and_oversized_request_are_403_in_dialect_through_the_sdks(make_gateway: Any) -> None:
    live = make_gateway(POLICIES)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "hi"}])
    assert "policy 'org-defaults' does not allow model 'o3-mini'" in denied.value.message
    big = anthropic.Anthropic(base_url=live.url, api_key=live.keys["limited"], max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as too_big:
        big.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x" * 3000}])
    assert "above the limit of 2,000 bytes" in too_big.value.message
    assert too_big.value.response.headers["x-should-retry"] == "false"
    assert len(live.fake.received) == 0  # neither reached the provider


def test_requests_per_minute_answer_429_with_an_accurate_retry_after(make_gateway: Any) -> None:
    live = make_gateway({"policies": [{"name": "rpm", "scope": "user", "requests_per_minute": 3}]})
    headers = {"x-api-key": live.key}
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        started = time.monotonic()
        assert [client.post(f"{live.url}/v1/messages", json=body, headers=headers).status_code for _ in range(3)] == [
            200,
            200,
            200,
        ]
        limited = client.post(f"{live.url}/v1/messages", json=body, headers=headers)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert "x-should-retry" not in limited.headers  # a rate limit is worth retrying
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 20  # one token refills in 60/3 = 20 s
        assert (
            client.post(f"{live.url}/v1/messages", json=body, headers={"x-api-key": live.keys["limited"]}).status_code
            == 200
        )  # bob has his own bucket
    elapsed = time.monotonic() - started
    assert retry_after >= 20 - elapsed - 1


def test_tokens_per_minute_limit_counts_input_and_output(make_gateway: Any) -> None:
    live = make_gateway({"policies": [{"name": "tpm", "scope": "key", "tokens_per_minute": 1500}]})
    headers = {"x-api-key": live.key, "x-fake-usage": "input=50,output=1200"}
    body = {"model": "claude-haiku-4-5", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{live.url}/v1/messages", json=body, headers=headers).status_code == 200
        second = client.post(f"{live.url}/v1/messages", json=body, headers=headers)
        assert second.status_code == 200  # ~1,270 of 1,500 used so far: input was small
        third = client.post(f"{live.url}/v1/messages", json=body, headers=headers)
        assert third.status_code == 429 and int(third.headers["retry-after"]) >= 30


def test_policy_decisions_are_in_the_audit_log(make_gateway: Any) -> None:
    live = make_gateway(POLICIES)
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    client.messages.create(model="claude-opus-4-5", max_tokens=10_000, messages=[{"role": "user", "content": "hi"}])
    live.wait_rows(1)
    audit = httpx.get(f"{live.url}/admin/audit", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]
    actions = {(a["action"], a["rule"]) for a in audit}
    assert ("rewrite", "org-defaults") in actions and ("clamp", "org-defaults") in actions
    assert all(a["actor"].startswith("key_") and a["request_id"].startswith("req_tk_") for a in audit)


def test_a_rewrite_records_what_the_requested_model_would_have_cost(make_gateway: Any) -> None:
    """Savings accounting: the served model's cost, the requested model's cost for the same usage, caching's share."""
    live = make_gateway(POLICIES)
    client = anthropic.Anthropic(base_url=live.url, api_key=live.key, max_retries=0)
    client.messages.create(
        model="claude-opus-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-fake-usage": "input=100000,cache_read=80000,output=2000"},
    )
    row = live.wait_rows(1)[0]
    prices = live.gw.prices
    usage = Usage(input_tokens=20_000, cache_read_tokens=80_000, output_tokens=2_000)
    provider = live.gw.catalog.resolve("claude-opus-4-5", "anthropic.messages").provider
    served = prices.cost(provider, "claude-sonnet-4-5", usage).total
    asked = prices.cost(provider, "claude-opus-4-5", usage).total
    uncached = prices.cost(provider, "claude-sonnet-4-5", Usage(input_tokens=100_000, output_tokens=2_000)).total
    assert Decimal(row["cost_usd"]) == served
    assert row["counterfactual_nanousd"] == int(asked * 10**9) and asked > served
    assert row["uncached_nanousd"] == int(uncached * 10**9) and uncached > served
    assert row["saving_source"] == "policy"
    db = connect(live.db_path, migrate_schema=False)
    saved = db.execute("SELECT SUM(policy_saved_nanousd), SUM(uncached_nanousd - cost_nanousd) FROM rollup_daily")
    assert saved.fetchone() == (int(asked * 10**9) - int(served * 10**9), int(uncached * 10**9) - int(served * 10**9))
    db.close()
