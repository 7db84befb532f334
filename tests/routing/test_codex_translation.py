"""Codex served by models that do not speak Responses: the request shapes the real Codex 0.171 CLI sends
(../shared/captures), translated to Anthropic Messages and to Chat Completions, and the answers back."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import LiveGateway
from tokenctl.metering.limits import output_limit_for
from tokenctl.translate import responses_to_anthropic, responses_to_chat
from tokenctl.translate.anthropic_to_chat import Untranslatable
from tokenctl.translate.responses_tools import read_tools

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "captures"  # copied from shared/captures
_PLACEHOLDER = re.compile(r"<text (\d+) chars>")


def _filled(value: Any) -> Any:
    """The capture with its placeholders replaced by text of the stated length (ids kept as they are)."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: ("lorem ipsum " * (int(m.group(1)) // 12 + 1))[: int(m.group(1))], value)
    if isinstance(value, list):
        return [_filled(v) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v) for k, v in value.items()}
    return value


def _bodies() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in ("codex-cx1.json", "codex-cx_shapes.json", "codex-cx_tool_native.json"):
        capture = orjson.loads((CAPTURES / name).read_bytes())
        for i, request in enumerate(capture["requests"]):
            out.append((f"{name}#{i} {request['body'].get('model')}", _filled(request["body"])))
    return out


def _offered(body: dict[str, Any]) -> tuple[int, set[str]]:
    """How many function and custom tools a body offers (namespaces opened), and the built-in kinds."""
    tools = list(body.get("tools") or [])
    for item in body.get("input") or []:
        if item.get("type") == "additional_tools":
            tools += item["tools"]
    count, builtin = 0, set()
    for tool in tools:
        if tool["type"] == "namespace":
            count += len(tool["tools"])
        elif tool["type"] in ("function", "custom"):
            count += 1
        else:
            builtin.add(tool["type"])
    return count, builtin


@pytest.mark.parametrize("target", ["anthropic", "chat"])
def test_every_captured_codex_request_translates_with_every_tool_offered(target: str) -> None:
    for label, body in _bodies():
        count, builtin = _offered(body)
        if target == "anthropic":
            out, notes = responses_to_anthropic.translate_request(body, "claude-sonnet-4-5", 16_384)
            names = [t["name"] for t in out.get("tools", [])]
        else:
            out, notes = responses_to_chat.translate_request(body, "qwen3-coder")
            names = [t["function"]["name"] for t in out.get("tools", [])]
        assert len(names) == count and len(set(names)) == count, label  # every tool, each name once
        for kind in builtin:  # Codex's web_search asks for no live access, which no provider's search is
            assert any(n.startswith(f"{kind} tool not offered (") for n in notes), (label, kind, notes)
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in names), label  # names every API accepts


def test_tool_kinds_become_functions_and_calls_go_back_in_their_own_kind() -> None:
    body = {
        "tools": [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Patch files",
                "format": {"type": "grammar", "syntax": "lark", "definition": "start: 'x'"},
            },
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "tools": [{"type": "function", "name": "close_agent", "parameters": {"type": "object"}}],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "input": [
            {
                "type": "additional_tools",
                "role": "developer",
                "tools": [{"type": "namespace", "name": "functions", "tools": [{"type": "custom", "name": "exec"}]}],
            }
        ],
    }
    tools = read_tools(body)
    by_name = {f.name: f for f in tools.functions}
    assert set(by_name) == {"exec_command", "apply_patch", "multi_agent_v1__close_agent", "exec"}
    assert "start: 'x'" in by_name["apply_patch"].description and by_name["apply_patch"].parameters["required"] == [
        "input"
    ]
    patch = tools.call_item("apply_patch", "call_1", orjson.dumps({"input": "*** Begin Patch"}).decode())
    assert (
        patch["type"] == "custom_tool_call" and patch["input"] == "*** Begin Patch" and patch["name"] == "apply_patch"
    )
    agent = tools.call_item("multi_agent_v1__close_agent", "call_2", '{"target":"a"}')
    assert agent["type"] == "function_call" and (agent["namespace"], agent["name"]) == ("multi_agent_v1", "close_agent")
    assert tools.call_item("exec_command", "call_3", "{}")["name"] == "exec_command"
    assert tools.dropped == ["web_search tool not offered (external_web_access: false; the model's search is live)"]


def test_a_native_codex_tool_turn_keeps_its_custom_call_and_output() -> None:
    _, body = next(b for b in _bodies() if b[0].startswith("codex-cx_tool_native.json#1"))
    call, output = body["input"][-2:]
    out, _ = responses_to_anthropic.translate_request(body, "claude-sonnet-4-5", 16_384)
    assistant, user = out["messages"][-2:]
    assert assistant["content"][-1] == {
        "type": "tool_use",
        "id": call["call_id"],
        "name": "exec",
        "input": {"input": call["input"]},
    }
    result = user["content"][-1]
    assert result["tool_use_id"] == call["call_id"] and "capture-tool-ok" in result["content"]
    chat, _ = responses_to_chat.translate_request(body, "qwen3-coder")
    assert chat["messages"][-2]["tool_calls"][0]["function"] == {
        "name": "exec",
        "arguments": orjson.dumps({"input": call["input"]}).decode(),
    }
    assert chat["messages"][-1]["role"] == "tool" and "capture-tool-ok" in chat["messages"][-1]["content"]
    assert output["call_id"] == chat["messages"][-1]["tool_call_id"]


def test_a_codex_session_on_claude_reads_the_prompt_cache_and_gets_a_real_output_limit() -> None:
    _, body = next(b for b in _bodies() if b[0].startswith("codex-cx_tool_native.json#1"))
    out, notes = responses_to_anthropic.translate_request(body, "claude-sonnet-4-5", 16_384)
    marked = orjson.dumps(out).count(b'"cache_control"')
    assert marked == 4  # Anthropic's maximum: tools, system, the last two user turns
    assert "cache_control" in out["tools"][-1] and "cache_control" in out["system"][-1]
    assert "cache_control" in out["messages"][-1]["content"][-1]
    assert out["max_tokens"] == 16_384 and "max_tokens set to 16384" in notes
    assert output_limit_for("claude-3-5-haiku-20241022", 16_384) == 8_192
    assert output_limit_for("claude-opus-4-1", 16_384) == 32_000  # the model's own, as budgets reserve
    assert output_limit_for("claude-sonnet-4-5", 16_384) == 64_000
    assert output_limit_for("some-new-model", 16_384) == 16_384


def test_chat_translation_puts_one_system_message_first_and_passes_the_effort() -> None:
    _, body = next(b for b in _bodies() if b[0].startswith("codex-cx1.json"))
    out, notes = responses_to_chat.translate_request(body, "qwen3-coder")
    roles = [m["role"] for m in out["messages"]]
    assert roles[0] == "system" and "system" not in roles[1:]
    assert out["reasoning_effort"] == body["reasoning"]["effort"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "text.verbosity" in notes and "store" in notes and "prompt_cache_key" in notes
    with pytest.raises(Untranslatable, match="previous_response_id"):
        responses_to_chat.translate_request({**body, "previous_response_id": "resp_1"}, "m")


def _chunks(*payloads: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def _events(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


def test_a_chat_stream_with_text_and_a_custom_call_becomes_responses_events() -> None:
    body = {"tools": [{"type": "custom", "name": "apply_patch"}], "input": "patch it", "stream": True}
    translator = responses_to_chat.StreamTranslator(10, body)
    base = {"id": "c1", "model": "qwen3-coder"}
    arguments = orjson.dumps({"input": "*** Begin Patch\n*** End Patch"}).decode()
    upstream = _chunks(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Patching"}}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_9",
                                "type": "function",
                                "function": {"name": "apply_patch", "arguments": ""},
                            }
                        ]
                    },
                }
            ],
        },
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:10]}}]}}
            ],
        },
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": arguments[10:]}}]}}
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )
    cut = upstream.index(b"\n\n", 200) + 2  # the relay hands over whole events, several at a time
    events = _events(translator.feed(upstream[:cut]) + translator.feed(upstream[cut:]))
    events += _events(
        translator.finish(
            {"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}}
        )
    )
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(1, len(events) + 1))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done[0]["type"] == "message" and done[0]["content"][0]["text"] == "Patching"
    assert done[1] == {
        "type": "custom_tool_call",
        "id": "ctc_call_9",
        "status": "completed",
        "call_id": "call_9",
        "name": "apply_patch",
        "input": "*** Begin Patch\n*** End Patch",
    }
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "custom_tool_call"]
    assert final["usage"]["input_tokens"] == 120 and final["usage"]["input_tokens_details"]["cached_tokens"] == 100


def test_a_chat_answer_with_a_function_call_becomes_a_responses_object() -> None:
    tools = read_tools({"tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]})
    answer = {
        "id": "c2",
        "model": "qwen3-coder",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "exec_command", "arguments": '{"cmd":"ls"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7},
    }
    out = responses_to_chat.translate_response(answer, tools)
    assert out["status"] == "completed" and out["usage"]["output_tokens"] == 7
    assert out["output"] == [
        {
            "type": "function_call",
            "id": "fc_call_1",
            "status": "completed",
            "call_id": "call_1",
            "name": "exec_command",
            "arguments": '{"cmd":"ls"}',
        }
    ]


def test_a_responses_client_is_served_by_a_chat_only_local_model(gateway: LiveGateway) -> None:
    """The OpenAI SDK's Responses client against an openai-compatible provider (responses_api: false by
    default): the provider receives Chat Completions; answers, streams and tool calls come back as Responses."""
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=gateway.key,
        max_retries=0,
        default_headers={"x-fake-usage": "input=300,cache_read=100,output=12"},
    )
    answer = client.responses.create(model="llama-3.1-8b", input="hi", instructions="Be brief.")
    assert answer.output_text.startswith("word0") and answer.status == "completed"
    sent = orjson.loads(gateway.last_upstream().body)
    assert gateway.last_upstream().path == "/v1/chat/completions"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    with client.responses.stream(model="llama-3.1-8b", input="hi") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text.startswith("word0") and final.output_text == text and final.usage.output_tokens == 12
    tools = [{"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}}]
    headers = {"x-fake-tool": "exec_command", "x-fake-tool-input": '{"cmd": "ls"}'}
    with client.responses.stream(model="llama-3.1-8b", input="list", tools=tools, extra_headers=headers) as stream:
        called = stream.get_final_response()
    call = next(i for i in called.output if i.type == "function_call")
    assert call.name == "exec_command" and orjson.loads(call.arguments) == {"cmd": "ls"}
    follow = client.responses.create(
        model="llama-3.1-8b",
        tools=tools,
        extra_headers=headers,
        input=[
            {"role": "user", "content": "list"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt b.txt"},
        ],
    )
    assert follow.output_text.startswith("got: a.txt b.txt")
    rows = gateway.wait_rows(4)
    for row in rows:
        assert "translated openai.responses -> openai.chat" in row["policy"]
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (200, 100, 12)


def test_a_live_web_search_runs_as_claudes_server_tool_metered_and_shown_as_a_web_search_call() -> None:
    from tokenctl.config import ProviderConfig
    from tokenctl.metering.pricing import PriceBook
    from tokenctl.policy import estimate
    from tokenctl.types import Route

    body = {"input": "news?", "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}]}
    out, notes = responses_to_anthropic.translate_request(body, "claude-sonnet-4-5", 1000)
    assert out["tools"][0] == {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    old, notes = responses_to_anthropic.translate_request(body, "claude-3-haiku-20240307", 1000)
    assert [t["name"] for t in old["tools"]] == ["f"]
    assert "web_search tool not offered (claude-3-haiku-20240307 has no web search)" in notes
    _, notes = responses_to_chat.translate_request(body, "qwen3-coder")
    assert "web_search tool not offered (no equivalent on this model)" in notes
    # the reservation covers the searches the provider may run: 5 at $10 per 1,000
    provider = ProviderConfig("anthropic", "anthropic", "http://x", None, ("claude-*",), "anthropic")
    route = Route(provider, "claude-sonnet-4-5", "claude-sonnet-4-5")
    prices = PriceBook()
    assert estimate.web_searches(body, "openai.responses") == 5
    with_search = estimate.worst_case_cost(prices, route, 100, 100, searches=5)
    assert with_search - estimate.worst_case_cost(prices, route, 100, 100) == Decimal("0.05")
    assert estimate.web_searches({"tools": [{"type": "web_search_20250305", "max_uses": 3}]}, "anthropic.messages") == 3
    # the answer: the search Claude ran is a web_search_call item, its text a message
    translator = responses_to_anthropic.StreamTranslator(10, body)

    def event(name: str, payload: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **payload}) + b"\n\n"

    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    upstream = b"".join(
        [
            event("message_start", {"message": {"id": "m1", "model": "claude-sonnet-4-5"}}),
            event("content_block_start", {"index": 0, "content_block": search}),
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"query": "tokenctl"}'}},
            ),
            event("content_block_stop", {"index": 0}),
            event(
                "content_block_start",
                {
                    "index": 1,
                    "content_block": {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                },
            ),
            event("content_block_stop", {"index": 1}),
            event("content_block_start", {"index": 2, "content_block": {"type": "text", "text": ""}}),
            event("content_block_delta", {"index": 2, "delta": {"type": "text_delta", "text": "Found it."}}),
            event("content_block_stop", {"index": 2}),
        ]
    )
    events = _events(
        translator.feed(upstream)
        + translator.finish({"input_tokens": 5, "output_tokens": 3, "server_tool_use": {"web_search_requests": 1}})
    )
    final = events[-1]["response"]
    assert final["output"][0] == {
        "type": "web_search_call",
        "id": "ws_srvtoolu_1",
        "status": "completed",
        "action": {"type": "search", "query": "tokenctl"},
    }
    assert final["output"][1]["content"][0]["text"] == "Found it."
