"""Serving an OpenAI Responses client (Codex) from an Anthropic Messages model.

Request: ``instructions``, input messages (text, images), function calls and their outputs, function
tools, output limit, sampling, stream. Answer and stream: message and function-call output items,
status, usage, as Responses objects and events (``response.created`` … ``response.completed``).

Refused with a 400: non-function tools (built-in, custom grammar tools), structured-output schemas;
dropped and named in the ledger row: encrypted reasoning items from an OpenAI model, ``reasoning``,
``store``, ``include``, ``prompt_cache_key``, ``parallel_tool_calls``, ``text.verbosity``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tokenctl.metering.stream import named_events
from tokenctl.translate.anthropic_to_chat import Untranslatable
from tokenctl.translate.chat_to_anthropic import DEFAULT_MAX_TOKENS, image_source, inclusive_input

_DROPPED = (
    "reasoning",
    "store",
    "include",
    "prompt_cache_key",
    "parallel_tool_calls",
    "previous_response_id",
    "service_tier",
    "client_metadata",
    "truncation",
)


def translate_request(body: dict[str, Any], upstream_model: str) -> tuple[dict[str, Any], list[str]]:
    notes = [k for k in _DROPPED if k in body]
    if body.get("previous_response_id"):
        raise Untranslatable("previous_response_id: this model keeps no server-side conversation; send the input")
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict) and text["format"].get("type") != "text":
        raise Untranslatable(
            f"text.format {text['format'].get('type')!r}: not available on this model through tokenctl"
        )
    system, messages, dropped_reasoning = _input(body.get("input"))
    if dropped_reasoning:
        notes.append(f"{dropped_reasoning} reasoning item(s)")
    if body.get("instructions"):
        system = [str(body["instructions"]), *system]
    limit = body.get("max_output_tokens")
    if limit is None:
        notes.append(f"max_tokens defaulted to {DEFAULT_MAX_TOKENS}")
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": limit or DEFAULT_MAX_TOKENS, "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = min(float(body[name]), 1.0)
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function":
            out["tool_choice"] = {"type": "tool", "name": choice.get("name")}
        elif choice in ("auto", "required", "none"):
            out["tool_choice"] = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    if body.get("stream") is True:
        out["stream"] = True
    return out, notes


def _input(items: Any) -> tuple[list[str], list[dict[str, Any]], int]:
    if isinstance(items, str):
        return [], [{"role": "user", "content": [{"type": "text", "text": items}]}], 0
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    reasoning = 0
    for item in items or []:
        kind = item.get("type", "message")
        if kind == "reasoning":
            reasoning += 1
        elif kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system.append(_text(item.get("content")))
            else:
                _append(messages, "assistant" if role == "assistant" else "user", _content(item.get("content")))
        elif kind == "function_call":
            _append(
                messages,
                "assistant",
                [{"type": "tool_use", "id": item.get("call_id"), "name": item.get("name"), "input": _arguments(item)}],
            )
        elif kind == "function_call_output":
            output = item.get("output")
            _append(
                messages,
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else _text(output),
                    }
                ],
            )
        else:
            raise Untranslatable(f"input: a {kind!r} item cannot be sent to this model")
    return system, messages, reasoning


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Consecutive items of one role go into one message (Anthropic turns alternate)."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text", "")) for p in content if p.get("type") in ("input_text", "output_text", "text"))


def _content(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content or []:
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            blocks.append({"type": "image", "source": image_source(part["image_url"])})
        else:
            raise Untranslatable(f"input: a {kind!r} content part cannot be sent to this model")
    return blocks or [{"type": "text", "text": ""}]


def _arguments(item: dict[str, Any]) -> Any:
    try:
        return orjson.loads(item.get("arguments") or "{}")
    except orjson.JSONDecodeError as exc:
        raise Untranslatable(f"input: function call {item.get('call_id')} has arguments that are not JSON") from exc


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(f"tools: a {tool.get('type')!r} tool cannot be sent to this model (function tools only)")
    out = {"name": tool.get("name"), "input_schema": tool.get("parameters") or {"type": "object"}}
    if tool.get("description"):
        out["description"] = tool["description"]
    return out


# -- answers ----------------------------------------------------------------------------------------


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt, read, written = inclusive_input(usage)
    output = int(usage.get("output_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + output,
    }


def _response(
    message_id: str,
    model: Any,
    output: list[dict[str, Any]],
    status: str,
    stop: str | None,
    usage: dict[str, Any] | None,
    created: int,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": f"resp_{message_id}",
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if stop == "max_tokens" else None,
        "usage": None if usage is None else responses_usage(usage),
    }
    return response


def _output_items(blocks: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    if text:
        items.append(
            {
                "type": "message",
                "id": f"msg_{message_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    for b in blocks:
        if b.get("type") == "tool_use":
            items.append(
                {
                    "type": "function_call",
                    "id": f"fc_{b.get('id')}",
                    "call_id": b.get("id"),
                    "name": b.get("name"),
                    "arguments": orjson.dumps(b.get("input", {})).decode(),
                    "status": "completed",
                }
            )
    return items


def translate_response(message: dict[str, Any]) -> dict[str, Any]:
    stop = message.get("stop_reason")
    mid = str(message.get("id", ""))
    return _response(
        mid,
        message.get("model"),
        _output_items(message.get("content") or [], mid),
        "incomplete" if stop == "max_tokens" else "completed",
        stop,
        message.get("usage") or {},
        int(time.time()),
    )


class StreamTranslator:
    """Anthropic stream events in, Responses stream events out."""

    def __init__(self, estimated_input_tokens: int) -> None:
        self.sequence = 0
        self.created = int(time.time())
        self.message_id, self.model = "", None
        self.blocks: dict[int, dict[str, Any]] = {}  # Anthropic block index -> the output item being built
        self.output: list[dict[str, Any]] = []
        self.stop: str | None = None

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        self.sequence += 1
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._on(name, payload) for name, payload in named_events(data))

    def _on(self, name: bytes, payload: dict[str, Any]) -> bytes:
        if name == b"message_start":
            message = payload.get("message") or {}
            self.message_id, self.model = str(message.get("id", "")), message.get("model")
            response = _response(self.message_id, self.model, [], "in_progress", None, None, self.created)
            return self._event("response.created", {"response": response})
        if name == b"content_block_start":
            return self._start_block(payload.get("index", 0), payload.get("content_block") or {})
        if name == b"content_block_delta":
            return self._delta(payload.get("index", 0), payload.get("delta") or {})
        if name == b"content_block_stop":
            return self._stop_block(payload.get("index", 0))
        if name == b"message_delta":
            self.stop = (payload.get("delta") or {}).get("stop_reason") or self.stop
        return b""

    def _start_block(self, index: int, block: dict[str, Any]) -> bytes:
        position = len(self.output)
        item: dict[str, Any]
        if block.get("type") == "text":
            item = {
                "type": "message",
                "id": f"msg_{self.message_id}_{index}",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            self.blocks[index] = {"item": item, "position": position, "text": ""}
            self.output.append(item)
            return self._event("response.output_item.added", {"output_index": position, "item": item}) + self._event(
                "response.content_part.added",
                {
                    "item_id": item["id"],
                    "output_index": position,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
        if block.get("type") == "tool_use":
            item = {
                "type": "function_call",
                "id": f"fc_{block.get('id')}",
                "call_id": block.get("id"),
                "name": block.get("name"),
                "arguments": "",
                "status": "in_progress",
            }
            self.blocks[index] = {"item": item, "position": position, "text": ""}
            self.output.append(item)
            return self._event("response.output_item.added", {"output_index": position, "item": item})
        return b""  # thinking blocks: not shown to Responses clients

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        state = self.blocks.get(index)
        if state is None:
            return b""
        item, position = state["item"], state["position"]
        if delta.get("type") == "text_delta":
            state["text"] += delta.get("text", "")
            return self._event(
                "response.output_text.delta",
                {"item_id": item["id"], "output_index": position, "content_index": 0, "delta": delta.get("text", "")},
            )
        if delta.get("type") == "input_json_delta":
            state["text"] += delta.get("partial_json", "")
            return self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": position, "delta": delta.get("partial_json", "")},
            )
        return b""

    def _stop_block(self, index: int) -> bytes:
        state = self.blocks.get(index)
        if state is None:
            return b""
        item, position, text = state["item"], state["position"], state["text"]
        item["status"] = "completed"
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            item["content"] = [part]
            return (
                self._event(
                    "response.output_text.done",
                    {"item_id": item["id"], "output_index": position, "content_index": 0, "text": text},
                )
                + self._event(
                    "response.content_part.done",
                    {"item_id": item["id"], "output_index": position, "content_index": 0, "part": part},
                )
                + self._event("response.output_item.done", {"output_index": position, "item": item})
            )
        item["arguments"] = text or "{}"
        return self._event(
            "response.function_call_arguments.done",
            {"item_id": item["id"], "output_index": position, "arguments": item["arguments"]},
        ) + self._event("response.output_item.done", {"output_index": position, "item": item})

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = (0, 0)) -> bytes:
        if usage is None:
            usage = {"input_tokens": estimate[0], "output_tokens": estimate[1]}
        status = "incomplete" if self.stop == "max_tokens" else "completed"
        response = _response(self.message_id, self.model, self.output, status, self.stop, usage, self.created)
        return self._event(f"response.{status}", {"response": response})
