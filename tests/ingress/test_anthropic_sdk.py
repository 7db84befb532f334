"""The official anthropic SDK through the gateway: answers, streams, count_tokens, ledger rows and costs."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx2 as httpx
import orjson
import pytest

# claude-sonnet-4-5 list prices (USD per million tokens, under 200k input): input 3, cache read 0.30,
# 5-minute cache write 3.75, 1-hour cache write 6, output 15. Reasoning is part of output.
CACHED_USAGE = "input=10000,cache_read=6000,cache_write_5m=1000,cache_write_1h=500,output=400,reasoning=100"
CACHED_COST = Decimal("0.02205")  # 2500*3 + 6000*0.3 + 1000*3.75 + 500*6 + 400*15 = 22050 per 1e6


def client(gateway, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=gateway.key, base_url=gateway.url, default_headers=headers, max_retries=0)


def test_non_streaming_message_is_metered_with_cache_and_reasoning(gateway) -> None:
    reply = client(gateway, **{"x-fake-usage": CACHED_USAGE}).messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    message = reply.parse()
    assert message.usage.cache_read_input_tokens == 6000
    request_id = reply.headers["request-id"]
    assert reply.headers["x-request-id"] == request_id
    row = gateway.row(request_id)
    assert (
        row["input_tokens"],
        row["cache_read_tokens"],
        row["cache_write_5m_tokens"],
        row["cache_write_1h_tokens"],
    ) == (2500, 6000, 1000, 500)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (400, 100)
    assert Decimal(row["cost_usd"]) == CACHED_COST
    assert row["cost_nanousd"] == 22_050_000
    assert (row["user"], row["team"], row["project"], row["tool"]) == (
        "alice",
        "payments",
        "checkout",
        "anthropic-sdk-python",
    )
    assert row["status"] == 200 and row["outcome"] == "ok" and row["partial"] == 0
    assert row["price_version"].startswith("genai-prices 0.2.3")
    assert orjson.loads(row["raw_usage"])["cache_read_input_tokens"] == 6000


def test_streaming_costs_the_same_as_non_streaming(gateway) -> None:
    c = client(gateway, **{"x-fake-usage": CACHED_USAGE})
    with c.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert text.startswith("word0")
    assert final.usage.output_tokens == 400 and final.usage.cache_read_input_tokens == 6000
    c.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    rows = gateway.rows()
    streamed = gateway.row(request_id)
    plain = next(r for r in rows if r["request_id"] != request_id)
    assert streamed["stream"] == 1 and plain["stream"] == 0
    for column in (
        "input_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cost_usd",
    ):
        assert streamed[column] == plain[column], column
    assert Decimal(streamed["cost_usd"]) == CACHED_COST
    assert streamed["ttft_ms"] is not None and streamed["ttft_ms"] <= streamed["duration_ms"]


def test_stream_reaches_the_client_event_for_event(gateway, fake) -> None:
    """Thinking blocks with signatures, pings and deltas arrive exactly as the provider sent them."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    headers = {"x-api-key": gateway.key, "x-fake-usage": "reasoning=7", "anthropic-version": "2023-06-01"}
    through = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers).content
    direct = httpx.post(fake.url + "/v1/messages", json=body, headers=headers).content

    def normalise(data: bytes) -> bytes:  # the message id is a counter in the fake
        import re

        return re.sub(rb"msg_fake_\d+", b"msg_fake_N", data)

    assert normalise(through) == normalise(direct)
    assert through.count(b"event: message_start") == 1
    assert b"signature_delta" in through


def test_count_tokens_is_forwarded_and_not_billed(gateway) -> None:
    result = client(gateway).messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello there"}]
    )
    assert result.input_tokens > 0
    assert gateway.last_upstream().path == "/v1/messages/count_tokens"
    (row,) = gateway.wait_rows(1)
    assert row["api"] == "anthropic.count_tokens" and row["cost_nanousd"] == 0 and row["input_tokens"] == 0


def test_unknown_fields_system_role_messages_and_betas_pass_through_untouched(gateway) -> None:
    raw = (
        b'{"model":"claude-sonnet-4-5","max_tokens":128000,"stream":false,'
        b'"thinking":{"type":"adaptive","display":"omitted"},"output_config":{"effort":"medium"},'
        b'"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},'
        b'"metadata":{"user_id":"{\\"device_id\\":\\"ab12\\",\\"account_uuid\\":\\"\\",\\"session_id\\":\\"5b0c-sess\\"}"},'
        b'"system":[{"type":"text","text":"billing"},{"type":"text","text":"id","cache_control":{"type":"ephemeral"}}],'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]},'
        b'{"role":"system","content":"# Environment","output_config":{"effort":"medium"}}],'
        b'"tools":[{"name":"DeferredToolPlaceholder","defer_loading":true,"input_schema":{"type":"object"}}],'
        b'"safeguards":[{"type":"dangerous_tool_use"}]}'
    )
    headers = {
        "x-api-key": gateway.key,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
        "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,effort-2025-11-24",
        "user-agent": "claude-cli/2.1.330 (external, sdk-cli)",
        "x-claude-code-session-id": "5b0c-sess",
    }
    response = httpx.post(gateway.url + "/v1/messages?beta=true", content=raw, headers=headers)
    assert response.status_code == 200
    upstream = gateway.last_upstream()
    assert upstream.body == raw  # byte for byte
    assert upstream.query == ""  # our query string is not forwarded to the provider either way
    assert upstream.headers["anthropic-beta"] == headers["anthropic-beta"]
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.headers["x-api-key"] == "sk-ant-provider-secret"  # the provider key replaces the client's
    assert "authorization" not in {k.lower() for k in upstream.headers}
    row = gateway.row(response.headers["request-id"])
    assert (row["tool"], row["tool_version"], row["session_id"], row["device_id"]) == (
        "claude-code",
        "2.1.330",
        "5b0c-sess",
        "ab12",
    )
    assert row["anthropic_beta"] == headers["anthropic-beta"]


def test_alias_and_path_prefix_and_bearer_auth(gateway) -> None:
    c = anthropic.Anthropic(auth_token=gateway.key, base_url=gateway.url + "/team-a", max_retries=0)
    message = c.messages.create(model="team-default", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "claude-sonnet-4-5"
    upstream = gateway.last_upstream()
    assert orjson.loads(upstream.body)["model"] == "claude-sonnet-4-5"
    (row,) = gateway.wait_rows(1)
    assert (row["requested_model"], row["model"], row["provider"]) == ("team-default", "claude-sonnet-4-5", "anthropic")


def test_tags_header_is_recorded_and_not_forwarded(gateway) -> None:
    client(gateway, **{"x-tokenctl-tags": "ticket=PAY-12, env=ci"}).messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    (row,) = gateway.wait_rows(1)
    assert orjson.loads(row["tags"]) == {"ticket": "PAY-12", "env": "ci"}
    assert "x-tokenctl-tags" not in {k.lower() for k in gateway.last_upstream().headers}


@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21"])
def test_anthropic_version_forwarded_as_received(gateway, version: str) -> None:
    response = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {gateway.key}", "anthropic-version": version},
    )
    assert response.status_code == 200
    assert gateway.last_upstream().headers["anthropic-version"] == version
