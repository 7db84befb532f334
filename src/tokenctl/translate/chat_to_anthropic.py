"""Serving an OpenAI Chat Completions client from an Anthropic Messages model.

Request: system and developer messages, user text and images, assistant tool calls, tool results,
tools and tool_choice, output limit, stop, sampling, stream. Answer and stream: text, tool calls,
finish reason and usage as Chat Completions objects and chunks (ending ``data: [DONE]``).

Refused with a 400: several choices (``n`` > 1), log-probabilities, structured-output schemas,
audio; dropped and named in the ledger row: ``reasoning_effort``, penalties, ``seed``, ``logit_bias``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tokenctl.metering.stream import named_events
from tokenctl.translate.anthropic_to_chat import Untranslatable

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires an output limit; Chat does not
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
_DROPPED = (
    "reasoning_effort",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "logit_bias",
    "parallel_tool_calls",
    "store",
    "service_tier",
    "prompt_cache_key",
    "verbosity",
)


def translate_request(
    body: dict[str, Any], upstream_model: str, max_output: int = DEFAULT_MAX_TOKENS
) -> tuple[dict[str, Any], list[str]]:
    """The Anthropic Messages body for a Chat Completions body, and what was dropped or defaulted.
    ``max_output``: the output limit when the client sets none (Anthropic requires one)."""
    _refuse_unsupported(body)
    notes = [k for k in _DROPPED if k in body]
    system, messages = _messages(body.get("messages") or [])
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is None:
        notes.append(f"max_tokens set to {max_output}")
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": limit or max_output, "messages": messages}
    if system:
        out["system"] = system
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            value = float(body[name])
            if value > 1:
                notes.append(f"{name} {value:g} clamped to 1")
            out[name] = min(value, 1.0)
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    return out, notes


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if (body.get("n") or 1) > 1:
        raise Untranslatable("n: this model answers one choice per request")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise Untranslatable("logprobs: this model does not return log-probabilities")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise Untranslatable(f"response_format {fmt.get('type')!r}: not available on this model through tokenctl")
    if body.get("audio") or body.get("modalities") not in (None, ["text"]):
        raise Untranslatable("audio: this model answers in text only")


def _messages(items: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for item in items:
        role = item.get("role")
        if role in ("system", "developer"):
            system.append(_plain_text(item.get("content"), role))
        elif role == "user":
            out.append({"role": "user", "content": _user_content(item.get("content"))})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _assistant_content(item)})
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": item.get("tool_call_id"),
                "content": _plain_text(item.get("content"), "tool"),
            }
            if out and out[-1]["role"] == "user" and all(b.get("type") == "tool_result" for b in out[-1]["content"]):
                out[-1]["content"].append(result)  # parallel tool results go back in one user turn
            else:
                out.append({"role": "user", "content": [result]})
        else:
            raise Untranslatable(f"messages: role {role!r} cannot be sent to this model")
    return "\n\n".join(s for s in system if s), out


def _plain_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise Untranslatable(f"{where} message: a {part.get('type')!r} part cannot be sent to this model")
        texts.append(part.get("text", ""))
    return "".join(texts)


def _user_content(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or []:
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": image_source(str((part.get("image_url") or {}).get("url", "")))})
        else:
            raise Untranslatable(f"messages: a user {kind!r} part cannot be sent to this model")
    return blocks


def image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media = header[5:].split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media, "data": data}
    return {"type": "url", "url": url}


def _assistant_content(item: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _plain_text(item.get("content"), "assistant")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in item.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise Untranslatable(f"messages: tool call {call.get('id')} has arguments that are not JSON") from exc
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return blocks or [{"type": "text", "text": ""}]


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(f"tools: a {tool.get('type')!r} tool cannot be sent to this model")
    function = tool.get("function") or {}
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(choice)


# -- answers ----------------------------------------------------------------------------------------


def inclusive_input(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(all input tokens, cache reads, cache writes) from Anthropic usage, whose input_tokens excludes the cache."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return int(usage.get("input_tokens") or 0) + read + written, read, written


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Chat-shaped usage: prompt_tokens include cached input; total = prompt + completion."""
    usage = usage or {}
    prompt, read, written = inclusive_input(usage)
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
    }


def translate_response(message: dict[str, Any]) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in message.get("content") or [] if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input", {})).decode()},
        }
        for b in message.get("content") or []
        if b.get("type") == "tool_use"
    ]
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [
            {"index": 0, "message": reply, "finish_reason": _FINISH.get(str(message.get("stop_reason")), "stop")}
        ],
        "usage": chat_usage(message.get("usage")),
    }


class StreamTranslator:
    """Anthropic stream events in, Chat Completions chunks out."""

    def __init__(self, estimated_input_tokens: int, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.id, self.model, self.created = "chatcmpl-tk", None, int(time.time())
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> Chat tool_call index
        self.finish_reason = "stop"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._event(name, payload) for name, payload in named_events(data))

    def _event(self, name: bytes, payload: dict[str, Any]) -> bytes:
        if name == b"message_start":
            message = payload.get("message") or {}
            self.id, self.model = f"chatcmpl-{message.get('id', '')}", message.get("model")
            return self._chunk({"role": "assistant", "content": ""})
        if name == b"content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                slot = self.tool_index.setdefault(payload.get("index", 0), len(self.tool_index))
                return self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": slot,
                                "id": block.get("id"),
                                "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""},
                            }
                        ]
                    }
                )
        elif name == b"content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta.get("type") == "input_json_delta" and payload.get("index") in self.tool_index:
                return self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": self.tool_index[payload["index"]],
                                "function": {"arguments": delta.get("partial_json", "")},
                            }
                        ]
                    }
                )
        elif name == b"message_delta":
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish_reason = _FINISH.get(reason, "stop")
        return b""

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = (0, 0)) -> bytes:
        if usage is None:
            usage = {"input_tokens": estimate[0], "output_tokens": estimate[1]}
        out = self._chunk({}, self.finish_reason)
        if self.include_usage:
            chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage(usage),
            }
            out += b"data: " + orjson.dumps(chunk) + b"\n\n"
        return out + b"data: [DONE]\n\n"
