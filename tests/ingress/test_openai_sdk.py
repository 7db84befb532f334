"""The official openai SDK through the gateway: Chat Completions, Responses, models; ledger rows and costs."""

from __future__ import annotations

from decimal import Decimal

import httpx2 as httpx
import openai
import orjson

# gpt-4o: input 2.50, cached input 1.25, output 10 (USD per million tokens).
GPT4O_USAGE = "input=1000,cache_read=200,output=100"
GPT4O_COST = Decimal("0.00325")  # 800*2.5 + 200*1.25 + 100*10 = 3250 per 1e6
# o3: input 2, cached 0.50, output 8; reasoning tokens are part of output and priced as output.
O3_USAGE = "input=2000,cache_read=1000,output=500,reasoning=300"
O3_COST = Decimal("0.0065")  # 1000*2 + 1000*0.5 + 500*8 = 6500 per 1e6


def client(gateway, base: str = "/v1", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=gateway.key, base_url=gateway.url + base, default_headers=headers, max_retries=0)


def test_chat_completion_non_streaming(gateway) -> None:
    raw = client(gateway, **{"x-fake-usage": GPT4O_USAGE}).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.usage.prompt_tokens == 1000
    row = gateway.row(raw.headers["x-request-id"])
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (800, 200, 100)
    assert Decimal(row["cost_usd"]) == GPT4O_COST
    assert row["api"] == "openai.chat" and row["tool"] == "openai-sdk-python"
    assert gateway.last_upstream().headers["Authorization"] == "Bearer sk-openai-provider-secret"


def test_chat_stream_gets_usage_without_showing_the_injected_chunk(gateway) -> None:
    chunks = list(
        client(gateway, **{"x-fake-usage": GPT4O_USAGE}).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage, so it sees none
    assert all(c.choices for c in chunks)
    assert orjson.loads(gateway.last_upstream().body)["stream_options"] == {"include_usage": True}
    (row,) = gateway.wait_rows(1)
    assert Decimal(row["cost_usd"]) == GPT4O_COST and row["stream"] == 1 and row["partial"] == 0


def test_chat_stream_with_include_usage_keeps_the_usage_chunk(gateway) -> None:
    chunks = list(
        client(gateway, **{"x-fake-usage": GPT4O_USAGE}).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1000
    (row,) = gateway.wait_rows(1)
    assert Decimal(row["cost_usd"]) == GPT4O_COST


def test_responses_non_streaming_and_streaming_cost_the_same_with_reasoning(gateway) -> None:
    c = client(gateway, **{"x-fake-usage": O3_USAGE})
    response = c.responses.create(model="o3", input="hi", reasoning={"effort": "low"})
    assert response.usage.output_tokens_details.reasoning_tokens == 300
    events = list(c.responses.create(model="o3", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    plain, streamed = gateway.rows()
    assert (plain["stream"], streamed["stream"]) == (0, 1)
    for row in (plain, streamed):
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
            1000,
            1000,
            500,
            300,
        )
        assert Decimal(row["cost_usd"]) == O3_COST
        assert row["response_model"] == "o3"


def test_codex_style_responses_request(gateway) -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "store": False,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "context": "all_turns"},
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "thread-1",
        "text": {"verbosity": "low"},
        "client_metadata": {"session_id": "thread-1"},
        "input": [
            {
                "type": "additional_tools",
                "role": "developer",
                "tools": [{"type": "namespace", "name": "functions", "tools": []}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]},
        ],
    }
    raw = orjson.dumps(body)
    headers = {
        "authorization": f"Bearer {gateway.key}",
        "originator": "codex_exec",
        "session-id": "thread-1",
        "user-agent": "codex_exec/0.169.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.169.0)",
        "content-type": "application/json",
        "accept": "text/event-stream",
    }
    response = httpx.post(gateway.url + "/v1/responses", content=raw, headers=headers)
    assert response.status_code == 200 and b"event: response.completed" in response.content
    assert gateway.last_upstream().body == raw
    row = gateway.row(response.headers["x-request-id"])
    assert (row["tool"], row["tool_version"], row["session_id"]) == ("codex", "0.169.0", "thread-1")


def test_models_lists_what_the_key_may_use(gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"llama-3.1-8b", "o4-mini", "team-default", "cheap"} <= ids
    assert not any("*" in m for m in ids)
    limited = openai.OpenAI(api_key=gateway.keys["limited"], base_url=gateway.url + "/v1", max_retries=0)
    assert {m.id for m in limited.models.list()} == set()  # only claude-haiku-* allowed; no concrete name listed
    anthropic_shape = httpx.get(
        gateway.url + "/v1/models", headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
    ).json()
    assert anthropic_shape["data"][0]["type"] == "model" and anthropic_shape["has_more"] is False


def test_openai_compatible_provider_priced_from_override_file(gateway) -> None:
    client(gateway, **{"x-fake-usage": "input=1000000,output=1000000"}).chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "hi"}]
    )
    (row,) = gateway.wait_rows(1)
    assert (row["provider"], row["model"], row["requested_model"]) == ("local", "llama-3.1-8b", "cheap")
    assert Decimal(row["cost_usd"]) == Decimal("0.30")  # 0.10 + 0.20 per million
    assert row["cost_source"] == "override"
    assert "authorization" not in {k.lower() for k in gateway.last_upstream().headers}  # local provider has no key
