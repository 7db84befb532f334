"""Answers for a Responses client (Codex) built from another provider's answer: the response object and its
stream of events (``response.created`` … ``response.completed``), whichever API the provider spoke.

The translators from Anthropic Messages and from Chat Completions both describe what arrives in the same
few steps (text, a tool call starting, its arguments, a block closing, the end); this module turns them into
Responses items: ``message``, ``function_call`` (with its ``namespace``) and ``custom_tool_call``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenctl.translate.responses_tools import ResponsesTools


def usage_object(prompt: int, cached: int, written: int, output: int, reasoning: int = 0) -> dict[str, Any]:
    """Responses usage; ``prompt`` includes the cached and cache-written tokens, as OpenAI counts them."""
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def response_object(
    response_id: str,
    model: Any,
    output: list[dict[str, Any]],
    *,
    status: str,
    usage: dict[str, Any] | None,
    created: int,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "usage": usage,
    }


def message_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


@dataclass(slots=True)
class _Open:
    item: dict[str, Any]
    position: int
    text: str = ""
    name: str = ""  # a call: the provider-side tool name
    call_id: str = ""


@dataclass(slots=True)
class ResponsesStream:
    """Writes the Responses events for an answer described step by step. ``key`` identifies a block of the
    provider's answer (an Anthropic content block index, a Chat tool-call slot)."""

    tools: ResponsesTools
    created: int = field(default_factory=lambda: int(time.time()))
    response_id: str = ""
    model: Any = None
    output: list[dict[str, Any]] = field(default_factory=list)
    blocks: dict[Any, _Open] = field(default_factory=dict)
    sequence: int = 0
    started: bool = False

    def event(self, kind: str, payload: dict[str, Any]) -> bytes:
        self.sequence += 1
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self, response_id: str, model: Any) -> bytes:
        self.started, self.response_id, self.model = True, response_id, model
        response = response_object(response_id, model, [], status="in_progress", usage=None, created=self.created)
        return self.event("response.created", {"response": response})

    def text(self, key: Any, delta: str) -> bytes:
        out = b""
        state = self.blocks.get(key)
        if state is None:
            item: dict[str, Any] = {"type": "message", "id": f"msg_{self.response_id}_{len(self.output)}"}
            item.update({"status": "in_progress", "role": "assistant", "content": []})
            state = self._open(key, item)
            out = self.event("response.output_item.added", {"output_index": state.position, "item": item})
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self.event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": state.position, "content_index": 0, "part": part},
            )
        state.text += delta
        where = {"item_id": state.item["id"], "output_index": state.position, "content_index": 0}
        return out + self.event("response.output_text.delta", {**where, "delta": delta})

    def call(self, key: Any, call_id: str, name: str) -> bytes:
        item = self.tools.call_item(name, call_id, "", status="in_progress")
        state = self._open(key, item)
        state.name, state.call_id = name, call_id
        return self.event("response.output_item.added", {"output_index": state.position, "item": item})

    def arguments(self, key: Any, delta: str) -> bytes:
        state = self.blocks.get(key)
        if state is None or not delta:
            return b""
        state.text += delta
        if state.item["type"] != "function_call":  # a freeform call's input is known once its JSON is whole
            return b""
        where = {"item_id": state.item["id"], "output_index": state.position}
        return self.event("response.function_call_arguments.delta", {**where, "delta": delta})

    def close(self, key: Any) -> bytes:
        state = self.blocks.pop(key, None)
        if state is None:
            return b""
        where = {"item_id": state.item["id"], "output_index": state.position}
        if state.item["type"] == "message":
            item = message_item(state.item["id"], state.text)
            self.output[state.position] = item
            part = item["content"][0]
            return (
                self.event("response.output_text.done", {**where, "content_index": 0, "text": state.text})
                + self.event("response.content_part.done", {**where, "content_index": 0, "part": part})
                + self.event("response.output_item.done", {"output_index": state.position, "item": item})
            )
        item = self.tools.call_item(state.name, state.call_id, state.text)
        self.output[state.position] = item
        out = b""
        if item["type"] == "function_call":
            out = self.event("response.function_call_arguments.done", {**where, "arguments": item["arguments"]})
        return out + self.event("response.output_item.done", {"output_index": state.position, "item": item})

    def finish(self, *, incomplete: bool, usage: dict[str, Any]) -> bytes:
        out = b"".join(self.close(key) for key in list(self.blocks))
        status = "incomplete" if incomplete else "completed"
        response = response_object(
            self.response_id, self.model, self.output, status=status, usage=usage, created=self.created
        )
        return out + self.event(f"response.{status}", {"response": response})

    def _open(self, key: Any, item: dict[str, Any]) -> _Open:
        state = _Open(item, len(self.output))
        self.blocks[key] = state
        self.output.append(item)
        return state
