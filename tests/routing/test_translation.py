"""Anthropic Messages ⇄ OpenAI Chat translation: requests, answers and streams, and what is refused."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import openai
import orjson
import pytest

from tokenctl.translate.anthropic_to_chat import StreamTranslator, Untranslatable, translate_request, translate_response
from tokenctl.translate.chat_to_anthropic import translate_request as chat_translate_request
from tokenctl.translate.chat_to_anthropic import translate_response as chat_translate_response
from tokenctl.translate.responses_to_anthropic import StreamTranslator as ResponsesStreamTranslator
from tokenctl.translate.responses_to_anthropic import translate_request as responses_translate_request
from tokenctl.translate.responses_to_anthropic import translate_response as responses_translate_response

TOOL = {
    "name": "read_file",
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


def test_a_tool_conversation_translates_to_chat_messages() -> None:
    body = {
        "model": "auto",
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_k": 5,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "tools": [TOOL],
        "tool_choice": {"type": "any"},
        "stream": True,
        "metadata": {"user_id": "user_abc"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Read a.txt"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.txt"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello"},
                    {"type": "text", "text": "Summarise it."},
                ],
            },
        ],
    }
    out, dropped = translate_request(body, "llama-3.1-8b")
    assert dropped == ["top_k", "cache_control"]
    assert out["model"] == "llama-3.1-8b" and out["max_tokens"] == 300 and out["stop"] == ["END"]
    assert out["temperature"] == 0.2 and out["tool_choice"] == "required"
    assert out["user"].startswith("tk-") and "user_abc" not in out["user"]  # an opaque digest, not the raw id
    assert out["stream_options"] == {"include_usage": True}
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "read_file", "description": "Read a file", "parameters": TOOL["input_schema"]},
        }
    ]
    assert out["messages"] == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Read a.txt"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "hello"},
        {"role": "user", "content": "Summarise it."},
    ]


@pytest.mark.parametrize(
    "message, why",
    [
        ({"role": "assistant", "content": [{"type": "thinking", "thinking": "…", "signature": "sig"}]}, "'thinking'"),
        (
            {"role": "user", "content": [{"type": "document", "source": {"type": "base64", "data": "JVBER"}}]},
            "'document'",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}],
            },
            "'image'",
        ),
    ],
)
def test_untranslatable_content_is_refused(message: dict[str, Any], why: str) -> None:
    with pytest.raises(Untranslatable, match=why):
        translate_request({"model": "m", "max_tokens": 5, "messages": [message]}, "m")


def test_server_tools_are_refused() -> None:
    with pytest.raises(Untranslatable, match="web_search_20250305"):
        translate_request(
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "m",
        )


def test_a_chat_answer_becomes_an_anthropic_message() -> None:
    answer = {
        "id": "c1",
        "model": "llama",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "b.txt"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}},
    }
    message = translate_response(answer)
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_9", "name": "read_file", "input": {"path": "b.txt"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
        "output_tokens": 30,
    }
    assert anthropic.types.Message.model_validate(message).content[1].input == {"path": "b.txt"}


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_a_chat_stream_becomes_anthropic_events_in_order() -> None:
    chunks = [
        {"id": "c2", "model": "llama", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"id": "c2", "choices": [{"index": 0, "delta": {"content": " there"}}]},
        {
            "id": "c2",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "read_file", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            "id": "c2",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"path":'}}]}}],
        },
        {
            "id": "c2",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "c.txt"}'}}]}}],
        },
        {"id": "c2", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c2", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 12}},
    ]
    translator = StreamTranslator(estimated_input_tokens=48)
    data = b"".join(translator.feed(sse(c)) for c in chunks) + translator.feed(b"data: [DONE]\n\n")
    data += translator.finish({"prompt_tokens": 50, "completion_tokens": 12})
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in data.split(b"\n\n") if e]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"]["input_tokens"] == 48  # an estimate until the provider reports
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "read_file", "input": {}}
    assert events[9]["delta"]["stop_reason"] == "tool_use"
    assert events[9]["usage"] == {
        "input_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 12,
    }


def test_anthropic_sdk_streams_from_an_openai_compatible_model(gateway: Any) -> None:
    """The standard gateway's local provider (OpenAI-compatible) serves an Anthropic SDK client, streaming."""
    client = anthropic.Anthropic(
        base_url=gateway.url,
        api_key=gateway.key,
        max_retries=0,
        default_headers={"x-fake-usage": "input=900,output=40"},
    )
    with client.messages.stream(
        model="local/llama-3.1-8b", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Say hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("word0") and final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 900 and final.usage.output_tokens == 40
    sent = orjson.loads(gateway.last_upstream().body)
    assert gateway.last_upstream().path == "/v1/chat/completions"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    row = gateway.wait_rows(1)[0]
    assert row["input_tokens"] == 900 and row["output_tokens"] == 40 and row["cost_usd"] != "0"
    assert "translated anthropic.messages -> openai.chat" in row["policy"]


def test_refusals_reach_the_client_as_a_400_in_its_dialect(gateway: Any) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": gateway.key},
        json={
            "model": "local/llama-3.1-8b",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text"}}]}],
        },
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "'document' block cannot be sent to this model" in error["error"]["message"]


# -- OpenAI Chat clients served by an Anthropic model ----------------------------------------------------


def test_a_chat_request_translates_to_anthropic_messages() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "stop": "END",
        "temperature": 1.4,
        "seed": 3,
        "user": "u1",
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": TOOL["input_schema"]}}],
        "tool_choice": "required",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"a"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"b"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "A"},
            {"role": "tool", "tool_call_id": "c2", "content": "B"},
        ],
    }
    out, notes = chat_translate_request(body, "claude-sonnet-4-5")
    assert notes == ["seed", "max_tokens set to 4096", "temperature 1.4 clamped to 1"]
    assert out["system"] == "Be terse.\n\nUse tools." and out["max_tokens"] == 4096 and out["temperature"] == 1.0
    assert out["stop_sequences"] == ["END"] and out["metadata"] == {"user_id": "u1"}
    assert out["tool_choice"] == {"type": "any"} and out["tools"][0]["input_schema"] == TOOL["input_schema"]
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "read_file", "input": {"path": "a"}},
                {"type": "tool_use", "id": "c2", "name": "read_file", "input": {"path": "b"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "A"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "B"},
            ],
        },
    ]


@pytest.mark.parametrize(
    "extra, why",
    [
        ({"n": 2}, "one choice"),
        ({"logprobs": True}, "log-probabilities"),
        ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ],
)
def test_chat_features_without_an_anthropic_equivalent_are_refused(extra: dict[str, Any], why: str) -> None:
    with pytest.raises(Untranslatable, match=why):
        chat_translate_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}, "m")


def test_openai_sdk_is_served_by_an_anthropic_model(gateway: Any) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=gateway.key,
        max_retries=0,
        default_headers={"x-fake-usage": "input=1000,cache_read=600,output=30"},
    )
    answer = client.chat.completions.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content.startswith("word0") and answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 1000 and answer.usage.prompt_tokens_details.cached_tokens == 600
    assert answer.usage.total_tokens == 1030
    assert gateway.last_upstream().path == "/v1/messages"
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("word0")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == 1000 and chunks[-1].usage.completion_tokens == 30
    rows = gateway.wait_rows(2)
    for row in rows:
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (400, 600, 30)
        assert "translated openai.chat -> anthropic.messages" in row["policy"]
    assert rows[0]["cost_usd"] == rows[1]["cost_usd"] != "0"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": [{"type": "tool_use", "name": "x", "input": {}}]}],  # no id
        [{"role": "user", "content": [{"type": "tool_result", "content": "r"}]}],  # no tool_use_id
        [{"role": "user", "content": ["just a string in a list"]}],
    ],
)
def test_malformed_content_for_a_translated_model_is_a_400_not_a_500(gateway: Any, messages: list[Any]) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": gateway.key},
        json={"model": "local/llama-3.1-8b", "max_tokens": 10, "messages": messages},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert gateway.wait_rows(1)[0]["status"] == 400


# -- OpenAI Responses clients (Codex) served by an Anthropic model ------------------------------------


def test_a_codex_turn_translates_to_anthropic_messages() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "instructions": "You are Codex.",
        "store": False,
        "stream": True,
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "name": "shell", "description": "Run", "parameters": TOOL["input_schema"]}],
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be safe."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files"}]},
            {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA"},
            {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"path":"."}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
        ],
    }
    out, notes = responses_translate_request(body, "claude-sonnet-4-5")
    assert notes == ["reasoning", "store", "parallel_tool_calls", "1 reasoning item(s)", "max_tokens set to 4096"]
    cached = {"type": "ephemeral"}
    assert out["system"] == [{"type": "text", "text": "You are Codex.\n\nBe safe.", "cache_control": cached}]
    assert out["stream"] is True
    assert out["tools"][0] == {
        "name": "shell",
        "input_schema": TOOL["input_schema"],
        "description": "Run",
        "cache_control": cached,
    }
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "List files", "cache_control": cached}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "shell", "input": {"path": "."}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt", "cache_control": cached}],
        },
    ]


def test_openai_responses_client_is_served_by_an_anthropic_model(gateway: Any) -> None:
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=gateway.key,
        max_retries=0,
        default_headers={"x-fake-usage": "input=2000,cache_read=1500,output=25"},
    )
    answer = client.responses.create(model="claude-sonnet-4-5", input="hi", max_output_tokens=50)
    assert answer.output_text.startswith("word0") and answer.status == "completed"
    assert answer.usage.input_tokens == 2000 and answer.usage.input_tokens_details.cached_tokens == 1500
    assert gateway.last_upstream().path == "/v1/messages"
    with client.responses.stream(model="claude-sonnet-4-5", input="hi", max_output_tokens=50) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text.startswith("word0") and final.output_text == text
    assert final.usage.output_tokens == 25 and final.status == "completed"
    rows = gateway.wait_rows(2)
    for row in rows:
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (500, 1500, 25)
        assert "translated openai.responses -> anthropic.messages" in row["policy"]


def test_an_anthropic_tool_stream_becomes_responses_events() -> None:
    def event(name: str, payload: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **payload}) + b"\n\n"

    upstream = b"".join(
        [
            event("message_start", {"message": {"id": "m1", "model": "claude", "usage": {"input_tokens": 10}}}),
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Listing."}}),
            event("content_block_stop", {"index": 0}),
            event(
                "content_block_start",
                {"index": 1, "content_block": {"type": "tool_use", "id": "tu_1", "name": "shell", "input": {}}},
            ),
            event(
                "content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"cmd":'}}
            ),
            event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "ls"}'}}),
            event("content_block_stop", {"index": 1}),
            event("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            event("message_stop", {}),
        ]
    )
    translator = ResponsesStreamTranslator(10)
    out = translator.feed(upstream) + translator.finish({"input_tokens": 10, "output_tokens": 7})
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in out.split(b"\n\n") if e]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(1, 14))
    final = openai.types.responses.Response.model_validate(events[-1]["response"])
    assert final.output_text == "Listing."
    call = final.output[1]
    assert call.type == "function_call" and call.call_id == "tu_1" and orjson.loads(call.arguments) == {"cmd": "ls"}
    assert final.usage.input_tokens == 10 and final.usage.output_tokens == 7


def test_translated_answers_validate_strictly_against_the_sdk_models() -> None:
    message = {
        "id": "m2",
        "model": "claude",
        "stop_reason": "tool_use",
        "content": [
            {"type": "text", "text": "Ok."},
            {"type": "tool_use", "id": "tu_2", "name": "shell", "input": {"cmd": "pwd"}},
        ],
        "usage": {
            "input_tokens": 5,
            "cache_read_input_tokens": 20,
            "cache_creation_input_tokens": 3,
            "output_tokens": 4,
        },
    }
    chat = openai.types.chat.ChatCompletion.model_validate(chat_translate_response(message))
    assert chat.choices[0].finish_reason == "tool_calls" and chat.usage.prompt_tokens == 28
    assert chat.choices[0].message.tool_calls[0].function.arguments == '{"cmd":"pwd"}'
    response = openai.types.responses.Response.model_validate(responses_translate_response(message))
    assert response.output_text == "Ok." and response.usage.input_tokens_details.cached_tokens == 20


def test_a_claude_code_request_to_a_local_chat_server_carries_only_what_it_accepts(gateway: Any) -> None:
    """Claude Code's shape (system messages between turns, metadata.user_id JSON with a device id, thinking)
    translated for an OpenAI-compatible server: no user, no reasoning_effort, one system message first."""
    body = {
        "model": "local/llama-3.1-8b",
        "max_tokens": 200,
        "stream": False,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "metadata": {"user_id": '{"device_id":"' + "d" * 64 + '","account_uuid":"","session_id":"5b0c"}'},
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "fix the bug"}]},
            {"role": "system", "content": "<system-reminder>plan mode is off</system-reminder>"},
            {"role": "assistant", "content": [{"type": "text", "text": "Looking."}]},
            {"role": "user", "content": [{"type": "text", "text": "go on"}]},
        ],
    }
    import httpx2 as httpx
    import orjson as json_

    response = httpx.post(
        gateway.url + "/v1/messages", json=body, headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 200, response.text
    sent = json_.loads(gateway.last_upstream().body)
    assert "user" not in sent and "reasoning_effort" not in sent
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert (
        "plan mode is off" in sent["messages"][0]["content"]
        and "You are Claude Code." in sent["messages"][0]["content"]
    )
    assert "d" * 64 not in gateway.last_upstream().body.decode()  # the device id never leaves
    row = gateway.row(response.headers["request-id"])
    assert "user dropped" in row["policy"] and "system messages moved to the start" in row["policy"]
