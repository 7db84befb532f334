"""Serving an Anthropic Messages client from an OpenAI-compatible Chat Completions model.

Request: system prompt, messages (text, images, tool_use, tool_result), tools and tool_choice,
max_tokens, stop sequences, sampling, stream. Answer and stream: text, tool calls, stop reason and
usage, as Anthropic events (``message_start`` … ``message_stop``).

Content with no Chat equivalent is refused with a 400 that says what and why (thinking blocks from
another model, documents, server tools, images inside tool results). Parameters with no equivalent
(``top_k``, ``cache_control`` hints) are dropped and named in the ledger row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from typing import Any

import orjson

from tokenctl.errors import BadRequest
from tokenctl.metering.stream import event_data

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_PASSED = ("temperature", "top_p")


class Untranslatable(BadRequest):
    """The request uses something the target model's API cannot express."""


def translate_request(body: dict[str, Any], upstream_model: str) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for an Anthropic Messages body, and the parameters dropped on the way."""
    dropped: list[str] = [
        k for k in ("top_k", "container", "mcp_servers", "context_management", "service_tier") if k in body
    ]
    messages = _system(body.get("system"))
    for message in body.get("messages") or []:
        messages += _message(message)
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    out.update({k: body[k] for k in _PASSED if k in body})
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
    effort = _effort(body.get("thinking"))
    if effort:
        out["reasoning_effort"] = effort
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str) and user:  # Claude Code's is JSON with a device and session id: sent as a digest
        out["user"] = "tk-" + hashlib.sha256(user.encode()).hexdigest()[:32]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    if _has_cache_control(body):
        dropped.append("cache_control")
    return out, dropped


def _system(system: Any) -> list[dict[str, Any]]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    return [{"role": "system", "content": "\n\n".join(_text_block(b, "system") for b in system)}]


def _text_block(block: Any, where: str) -> str:
    if isinstance(block, dict) and block.get("type") == "text":
        return str(block.get("text", ""))
    kind = block.get("type") if isinstance(block, dict) else type(block).__name__
    raise Untranslatable(f"{where}: a {kind!r} block cannot be sent to this model (only text)")


def _message(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role == "system":  # Claude Code's per-turn system messages
        return [
            {
                "role": "system",
                "content": content
                if isinstance(content, str)
                else "\n\n".join(_text_block(b, "system message") for b in content or [] if b.get("type") == "text"),
            }
        ]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if role == "assistant":
        return [_assistant(content or [])]
    return _user(content or [])


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    text, calls = [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": orjson.dumps(block.get("input", {})).decode()},
                }
            )
        else:
            raise Untranslatable(
                f"messages: an assistant {kind!r} block (from an Anthropic model) cannot be "
                "replayed to this model; start a new session or keep it on its Anthropic model"
            )
    # "" rather than null beside tool calls: llama.cpp's server (llama-cpp-python) refuses a null content
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        out["tool_calls"] = calls
    return out


def _user(blocks: list[Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": _tool_result_text(block.get("content")),
                }
            )
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        else:
            raise Untranslatable(f"messages: a user {kind!r} block cannot be sent to this model")
    out = results
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _tool_result_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(_text_block(b, "tool_result") for b in content)


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return str(source.get("url"))
    raise Untranslatable(f"messages: an image from a {source.get('type')!r} source cannot be sent to this model")


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise Untranslatable(
            f"tools: the server tool {tool.get('type')!r} ({tool.get('name')}) runs only on Anthropic's platform"
        )
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))


def _effort(thinking: Any) -> str | None:
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
        return None
    budget = thinking.get("budget_tokens") or 8000
    return "low" if budget <= 4000 else "medium" if budget <= 16000 else "high"


def _has_cache_control(body: dict[str, Any]) -> bool:
    return b'"cache_control"' in orjson.dumps(body)


# -- answers ----------------------------------------------------------------------------------------


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": max(0, int(usage.get("prompt_tokens") or 0) - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
    }


def translate_response(answer: dict[str, Any]) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _tool_id(),
                "name": call["function"]["name"],
                "input": _arguments(call["function"].get("arguments")),
            }
        )
    return {
        "id": f"msg_{answer.get('id', secrets.token_hex(8))}",
        "type": "message",
        "role": "assistant",
        "model": answer.get("model"),
        "content": content,
        "stop_reason": _STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(answer.get("usage")),
    }


def _arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_unparsed_arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def chat_chunks(data: bytes) -> Iterator[dict[str, Any]]:
    """The Chat Completions chunks in whole SSE events (``[DONE]``, broken JSON and error objects skipped)."""
    for event in data.split(b"\n\n"):
        payload = event_data(event)
        if not payload or payload == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict) and "error" not in chunk:
            yield chunk


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **payload}) + b"\n\n"


class StreamTranslator:
    """Chat Completions chunks in, Anthropic stream events out."""

    def __init__(self, estimated_input_tokens: int) -> None:
        self.estimated_input = estimated_input_tokens
        self.started = False
        self.index = -1
        self.open_kind: str | None = None  # "text" or "tool"
        self.tool_slots: dict[int, int] = {}  # Chat tool_call index -> our content block index
        self.stop_reason = "end_turn"

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._chunk(chunk) for chunk in chat_chunks(data))

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = bytearray()
        if not self.started:
            self.started = True
            message: dict[str, Any] = {
                "id": f"msg_{chunk.get('id', secrets.token_hex(8))}",
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self.estimated_input, "output_tokens": 0},
            }
            out += _event("message_start", {"message": message})
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._tool(call)
            if choice.get("finish_reason"):
                self.stop_reason = _STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return bytes(out)

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self.open_kind = kind
        return out + _event("content_block_start", {"index": self.index, "content_block": block})

    def _close(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return _event("content_block_stop", {"index": self.index})

    def _text(self, text: str) -> bytes:
        out = b"" if self.open_kind == "text" else self._open("text", {"type": "text", "text": ""})
        return out + _event("content_block_delta", {"index": self.index, "delta": {"type": "text_delta", "text": text}})

    def _tool(self, call: dict[str, Any]) -> bytes:
        slot = call.get("index", 0)
        out = b""
        function = call.get("function") or {}
        if slot not in self.tool_slots:
            out += self._open(
                "tool",
                {"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name", ""), "input": {}},
            )
            self.tool_slots[slot] = self.index
        if function.get("arguments"):
            out += _event(
                "content_block_delta",
                {
                    "index": self.tool_slots[slot],
                    "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
                },
            )
        return out

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = (0, 0)) -> bytes:
        """The closing events, with the real usage (the upstream's final chunk), else ``estimate`` (in, out).

        Some servers never report usage in streams (llama.cpp): the estimate is what the ledger records too.
        """
        if usage is None:
            usage = {"prompt_tokens": estimate[0], "completion_tokens": estimate[1]}
        out = bytearray()
        if not self.started:
            out += self._chunk({"choices": []})
        out += self._close()
        out += _event(
            "message_delta",
            {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None}, "usage": anthropic_usage(usage)},
        )
        out += _event("message_stop", {})
        return bytes(out)
