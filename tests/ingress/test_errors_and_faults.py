"""Bad input gets a clear 4xx in the client's dialect; upstream faults are relayed sensibly; every request
leaves exactly one ledger row; a failed stream never ends with a clean end-of-stream."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import httpx2 as httpx
import openai
import pytest

from tokenctl.identity.keys import revoke_key
from tokenctl.ledger.db import connect

MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, path: str, *, key: str | None = "default", content: bytes | None = None, json=None, **headers):
    if key == "default":
        key = gateway.key
    if key:
        headers["x-api-key"] = key
    return httpx.post(gateway.url + path, content=content, json=json, headers=headers, timeout=30)


def assert_anthropic_error(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert response.headers["request-id"] == response.headers["x-request-id"]
    return body["error"]["message"]


def assert_openai_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] and error["message"]
    assert response.headers["x-request-id"]
    return error["message"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
        (b'{"model": 5, "messages": []}', "'model'"),
        (b'{"model": "claude-sonnet-4-5", "messages": "hi"}', "'messages'"),
        (b'{"model": "claude-sonnet-4-5", "messages": [], "stream": "yes"}', "'stream'"),
        (b'{"model": "claude-sonnet-4-5", "messages": [], "max_tokens": "lots"}', "'max_tokens'"),
    ],
)
def test_bad_input_is_a_400_in_each_dialect(gateway, content: bytes, fragment: str) -> None:
    message = assert_anthropic_error(post(gateway, "/v1/messages", content=content), 400, "invalid_request_error")
    assert fragment in message
    openai_message = assert_openai_error(
        post(gateway, "/v1/chat/completions", content=content.replace(b"claude-sonnet-4-5", b"gpt-4o")),
        400,
        "invalid_request",
    )
    assert fragment in openai_message
    assert [r["status"] for r in gateway.rows()] == [400, 400]
    assert gateway.fake.received == []


def test_oversized_body_is_a_413(gateway, fake, tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from tests.conftest import ServerThread
    from tokenctl.app import create_app
    from tokenctl.identity.keys import create_key
    from tokenctl.ledger.db import connect

    ledger = str(tmp_path / "small.db")  # its own ledger: one gateway per ledger
    db = connect(ledger)
    _, key = create_key(db, user="alice", team="payments")
    db.close()
    small = ServerThread(
        create_app(replace(gateway.config, max_body_bytes=1000, ledger_path=ledger, ledger_journal_path=None))
    ).start()
    try:
        body = {**MESSAGES, "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx.post(small.url + "/v1/messages", json=body, headers={"x-api-key": key})
        assert "at most 1,000 bytes" in assert_anthropic_error(response, 413, "request_too_large")
        chunked = httpx.post(
            small.url + "/v1/chat/completions",
            content=iter([b"{" + b" " * 3000 + b"}"]),
            headers={"authorization": f"Bearer {key}"},
        )
        assert_openai_error(chunked, 413, "request_too_large")
    finally:
        small.stop()


def test_missing_unknown_and_revoked_keys_are_401(gateway) -> None:
    assert "missing API key" in assert_anthropic_error(
        post(gateway, "/v1/messages", key=None, json=MESSAGES), 401, "authentication_error"
    )
    assert_anthropic_error(post(gateway, "/v1/messages", key="tkc_nope", json=MESSAGES), 401, "authentication_error")
    assert post(gateway, "/v1/messages", json=MESSAGES).status_code == 200
    db = connect(gateway.db_path)
    key_id = next(r for r in gateway.rows() if r["status"] == 200)["key_id"]
    revoke_key(db, key_id)
    db.close()
    for _ in range(50):  # the gateway picks up revocations within its refresh interval (0.2 s here)
        response = post(gateway, "/v1/messages", json=MESSAGES)
        if response.status_code == 401:
            break
        time.sleep(0.05)
    assert "revoked" in assert_anthropic_error(response, 401, "authentication_error")
    bad_openai = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer tkc_bad"}
    )
    assert_openai_error(bad_openai, 401, "invalid_api_key")


def test_key_created_while_running_works_at_once(gateway) -> None:
    from tokenctl.identity.keys import create_key

    db = connect(gateway.db_path)
    _, fresh = create_key(db, user="carol", team="ml")
    db.close()
    assert post(gateway, "/v1/messages", key=fresh, json=MESSAGES).status_code == 200
    assert gateway.rows()[-1]["user"] == "carol"


def test_when_both_auth_headers_come_the_tokenctl_key_wins(gateway) -> None:
    ok = post(
        gateway, "/v1/messages", key="sk-ant-real-provider-key", json=MESSAGES, authorization=f"Bearer {gateway.key}"
    )
    assert ok.status_code == 200
    both = post(gateway, "/v1/messages", json=MESSAGES, authorization="Bearer tkc_other")
    assert both.status_code == 200  # both are tokenctl keys: x-api-key wins


def test_unknown_model_is_404_and_other_dialects_are_translated(gateway) -> None:
    assert "not served" in assert_anthropic_error(
        post(gateway, "/v1/messages", json={**MESSAGES, "model": "mystery-9"}), 404, "not_found_error"
    )
    assert_openai_error(
        post(gateway, "/v1/chat/completions", json={**CHAT, "model": "mystery-9"}), 404, "model_not_found"
    )
    for path, body in (
        ("/v1/messages", {**MESSAGES, "model": "gpt-4o"}),
        ("/v1/chat/completions", {**CHAT, "model": "claude-sonnet-4-5"}),
        ("/v1/responses", {"model": "claude-sonnet-4-5", "input": "hi"}),
    ):
        assert post(gateway, path, json=body).status_code == 200, path


def test_model_outside_the_key_allowlist_is_403(gateway) -> None:
    response = post(gateway, "/v1/messages", key=gateway.keys["limited"], json=MESSAGES)
    assert "may not use model" in assert_anthropic_error(response, 403, "permission_error")
    assert (
        post(
            gateway, "/v1/messages", key=gateway.keys["limited"], json={**MESSAGES, "model": "claude-haiku-4-5"}
        ).status_code
        == 200
    )


@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_upstream_errors_pass_through_with_retry_after(gateway, status: int) -> None:
    response = post(gateway, "/v1/messages", json=MESSAGES, **{"x-fake-fault": f"status:{status}"})
    assert response.status_code == status
    assert response.json()["type"] == "error"
    if status in (429, 529):
        assert response.headers["retry-after"] == "1"
    (row,) = gateway.wait_rows(1)
    assert (row["status"], row["outcome"]) == (status, "upstream_error")


def test_sdk_error_classes(gateway) -> None:
    c = anthropic.Anthropic(api_key=gateway.key, base_url=gateway.url, max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(**MESSAGES, extra_headers={"x-fake-fault": "status:429"})
    with pytest.raises(anthropic.NotFoundError):
        c.messages.create(**{**MESSAGES, "model": "nope"})
    o = openai.OpenAI(api_key=gateway.key, base_url=gateway.url + "/v1", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        o.chat.completions.create(**CHAT, extra_headers={"x-fake-fault": "status:429"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="tkc_wrong", base_url=gateway.url + "/v1", max_retries=0).chat.completions.create(**CHAT)


def test_non_json_upstream_error_is_wrapped_in_dialect(gateway) -> None:
    response = post(gateway, "/v1/chat/completions", json=CHAT, **{"x-fake-fault": "text-error:502"})
    assert "Bad Gateway" in assert_openai_error(response, 502, "upstream_error")


def test_provider_key_rejected_is_a_gateway_problem_not_a_client_401(gateway) -> None:
    response = post(gateway, "/v1/messages", json=MESSAGES, **{"x-fake-fault": "status:401"})
    message = assert_anthropic_error(response, 502, "api_error")
    assert "provider key" in message and response.headers["x-should-retry"] == "false"


def test_unreachable_provider_is_502_and_slow_provider_504(gateway, tmp_path) -> None:

    from tests.conftest import ServerThread, free_port
    from tokenctl.app import create_app
    from tokenctl.config import parse_config

    dead = parse_config(
        {
            "ledger": {"path": str(tmp_path / "dead.db")},
            "providers": [
                {
                    "name": "down",
                    "kind": "openai-compatible",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "models": ["*"],
                }
            ],
        }
    )
    server = ServerThread(create_app(dead)).start()
    try:
        from tokenctl.identity.keys import create_key

        db = connect(str(tmp_path / "dead.db"))
        _, key = create_key(db, user="x")
        db.close()
        response = httpx.post(
            server.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
        )
        assert "unreachable" in assert_openai_error(response, 502, "upstream_error")
    finally:
        server.stop()
    slow = post(gateway, "/v1/messages", json=MESSAGES, **{"x-fake-fault": "slow:4000"})  # provider timeout is 3 s
    assert_anthropic_error(slow, 504, "timeout_error")


def test_anthropic_stream_cut_mid_way_ends_with_error_event(gateway) -> None:
    c = anthropic.Anthropic(api_key=gateway.key, base_url=gateway.url, max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="mid-stream"):
        with c.messages.stream(
            **MESSAGES, extra_headers={"x-fake-fault": "cut:5", "x-fake-usage": "input=1000"}
        ) as stream:
            for _ in stream.text_stream:
                pass
    (row,) = gateway.wait_rows(1)
    assert (row["outcome"], row["partial"], row["cost_is_estimate"]) == ("stream_failed", 1, 1)
    assert row["input_tokens"] == 1000  # known from message_start
    assert row["output_tokens"] >= 1  # estimated from what was relayed


@pytest.mark.parametrize("fault", ["cut:4", "eof:4"])
def test_chat_stream_failure_raises_in_the_sdk(gateway, fault: str) -> None:
    o = openai.OpenAI(api_key=gateway.key, base_url=gateway.url + "/v1", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in o.chat.completions.create(**CHAT, stream=True, extra_headers={"x-fake-fault": fault}):
            pass
    (row,) = gateway.wait_rows(1)
    assert row["outcome"] == "stream_failed" and row["partial"] == 1
    assert row["input_tokens"] > 0 and row["cost_is_estimate"] == 1  # estimated from the request size


def test_responses_stream_failure_ends_with_response_failed(gateway) -> None:
    response = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "gpt-4o", "input": "hi", "stream": True},
        headers={"authorization": f"Bearer {gateway.key}", "x-fake-fault": "eof:3"},
    )
    events = response.content.split(b"\n\n")
    assert [e for e in events if e][-1].startswith(b"event: response.failed")
    assert b"response.completed" not in response.content


def test_upstream_in_stream_error_is_relayed_once(gateway) -> None:
    response = post(gateway, "/v1/messages", json={**MESSAGES, "stream": True}, **{"x-fake-fault": "error-event:3"})
    assert response.content.count(b"event: error") == 1 and b"Overloaded" in response.content
    (row,) = gateway.wait_rows(1)
    assert row["outcome"] == "upstream_error" and "Overloaded" in row["error"]


def test_client_disconnect_mid_stream_is_recorded_as_partial(gateway) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/messages",
        json={**MESSAGES, "stream": True},
        headers={
            "x-api-key": gateway.key,
            "x-fake-chunks": "200",
            "x-fake-fault": "stall:20",
            "x-fake-usage": "input=500",
        },
    ) as response:
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if received.count(b"text_delta") >= 3:
                break
    (row,) = gateway.wait_rows(1)
    assert (row["outcome"], row["partial"], row["cost_is_estimate"]) == ("client_disconnected", 1, 1)
    assert row["input_tokens"] == 500 and row["output_tokens"] >= 3


def test_preflight_and_unknown_endpoints(gateway) -> None:
    for path in ("/", "/api/hello"):
        response = httpx.head(gateway.url + path)
        assert response.status_code == 200 and response.headers["request-id"]
    missing = httpx.get(gateway.url + "/v1/files", headers={"anthropic-version": "2023-06-01"})
    assert_anthropic_error(missing, 404, "not_found_error")
    openai_missing = httpx.post(gateway.url + "/v1/embeddings", json={"model": "gpt-5", "input": "x"})
    assert "no such endpoint: POST /v1/embeddings" in assert_openai_error(openai_missing, 404, "unknown_url")
    wrong_method = httpx.get(gateway.url + "/v1/messages")
    assert_anthropic_error(wrong_method, 405, "invalid_request_error")
    ws = httpx.get(gateway.url + "/v1/responses", headers={"upgrade": "websocket", "connection": "upgrade"})
    assert ws.status_code == 426


def test_a_cut_reasoning_stream_is_billed_the_models_usual_hidden_reasoning(gateway) -> None:
    """gpt-5-mini bills reasoning it never streams: after complete answers that reasoned 3,000 and 5,000 tokens,
    a stream cut before its usage is recorded with their median (4,000) on top of the output it relayed, as an
    estimate that says so; a model that does not reason gets no such addition."""
    o = openai.OpenAI(api_key=gateway.key, base_url=gateway.url + "/v1", max_retries=0)
    ask = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "think"}], "stream": True}
    for reasoning in (3000, 5000, 4000):
        usage = f"input=50,output={reasoning + 8},reasoning={reasoning}"
        for _ in o.chat.completions.create(
            **ask, stream_options={"include_usage": True}, extra_headers={"x-fake-usage": usage}
        ):
            pass
    with pytest.raises(openai.APIError):
        for _ in o.chat.completions.create(**ask, extra_headers={"x-fake-fault": "cut:4"}):
            pass
    with pytest.raises(openai.APIError):
        for _ in o.chat.completions.create(**{**ask, "model": "gpt-4o"}, extra_headers={"x-fake-fault": "cut:4"}):
            pass
    *complete, cut, plain = gateway.wait_rows(5)
    assert [r["reasoning_tokens"] for r in complete] == [3000, 5000, 4000]
    assert cut["outcome"] == "stream_failed" and cut["cost_is_estimate"] == 1
    assert cut["reasoning_tokens"] == 4000 and cut["output_tokens"] > 4000
    assert "reasoning estimated: 4000 tokens" in cut["policy"]
    assert Decimal(cut["cost_usd"]) > Decimal("0.008")  # 4,000 reasoning tokens at gpt-5-mini's $2 per million
    assert plain["reasoning_tokens"] == 0 and "reasoning estimated" not in (plain["policy"] or "")
