"""Serving an OpenAI Responses client (Codex) from an Anthropic Messages model.

Request: ``instructions`` and developer messages (the system prompt), input messages (text, images),
function and freeform (``custom``) tool calls and their outputs, every tool kind Codex offers as named
functions (``translate/responses_tools.py``), output limit, sampling, stream. Prompt-cache breakpoints are
placed on the tools, the system prompt and the last two user turns, so a Codex session on Claude reads the
cache every turn instead of paying for its whole prompt. Answer and stream: message, ``function_call`` and
``custom_tool_call`` items, status and usage, as Responses objects and events.

Refused with a 400: structured-output schemas, ``previous_response_id`` (the model keeps no conversation);
dropped and named in the ledger row: encrypted reasoning items from an OpenAI model, built-in tools without
an equivalent (``tool_search``; ``web_search`` where the model has no search), ``reasoning``, ``store``, ``include``, ``prompt_cache_key``,
``parallel_tool_calls``, ``text.verbosity``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tokenctl.metering.limits import WEB_SEARCHES_PER_REQUEST, has_web_search
from tokenctl.metering.stream import named_events
from tokenctl.translate.anthropic_to_chat import Untranslatable
from tokenctl.translate.chat_to_anthropic import image_source, inclusive_input
from tokenctl.translate.responses_out import ResponsesStream, message_item, response_object, usage_object
from tokenctl.translate.responses_tools import (
    WEB_SEARCH,
    ResponsesTools,
    call_name,
    custom_arguments,
    output_text,
    read_tools,
)

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
CACHE = {"type": "ephemeral"}
_SKIPPED_ITEMS = ("reasoning", "additional_tools", "web_search_call")


def translate_request(
    body: dict[str, Any], upstream_model: str, max_output: int = 4096
) -> tuple[dict[str, Any], list[str]]:
    """``max_output``: the output limit when the client sets none (Anthropic requires one)."""
    notes = [k for k in _DROPPED if k in body]
    if body.get("previous_response_id"):
        raise Untranslatable("previous_response_id: this model keeps no server-side conversation; send the input")
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict) and text["format"].get("type") != "text":
        raise Untranslatable(
            f"text.format {text['format'].get('type')!r}: not available on this model through tokenctl"
        )
    tools = read_tools(body)
    system, messages, skipped = _input(body.get("input"), tools)
    notes += [f"{count} {kind} item(s)" for kind, count in skipped.items()]
    if body.get("instructions"):
        system = [str(body["instructions"]), *system]
    limit = body.get("max_output_tokens")
    if limit is None:
        notes.append(f"max_tokens set to {max_output}")
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": limit or max_output, "messages": messages}
    if system:
        out["system"] = [{"type": "text", "text": "\n\n".join(system)}]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = min(float(body[name]), 1.0)
    if tools.web_search and has_web_search(upstream_model):
        search = {"type": "web_search_20250305", "name": WEB_SEARCH, "max_uses": WEB_SEARCHES_PER_REQUEST}
        out["tools"] = [search]
    elif tools.web_search:
        notes.append(f"web_search tool not offered ({upstream_model} has no web search)")
    if tools.functions:
        out["tools"] = [*out.get("tools", []), *(_tool(f.name, f.description, f.parameters) for f in tools.functions)]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
            out["tool_choice"] = {"type": "tool", "name": tools.exposed(str(choice.get("name")))}
        elif choice in ("auto", "required", "none"):
            out["tool_choice"] = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    notes += tools.dropped
    if body.get("stream") is True:
        out["stream"] = True
    place_cache_breakpoints(out)
    return out, notes


def _input(items: Any, tools: ResponsesTools) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    if isinstance(items, str):
        return [], [{"role": "user", "content": [{"type": "text", "text": items}]}], {}
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for item in items or []:
        kind = item.get("type", "message")
        if kind in _SKIPPED_ITEMS:
            if kind != "additional_tools":  # read as tools already
                skipped[kind] = skipped.get(kind, 0) + 1
        elif kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                system.append(_text(item.get("content")))
            else:
                _append(messages, "assistant" if role == "assistant" else "user", _content(item.get("content")))
        elif kind in ("function_call", "custom_tool_call"):
            arguments = custom_arguments(item.get("input")) if kind == "custom_tool_call" else item.get("arguments")
            call = {"type": "tool_use", "id": item.get("call_id"), "name": call_name(item, tools)}
            _append(messages, "assistant", [{**call, "input": _arguments(arguments, item)}])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            result = {
                "type": "tool_result",
                "tool_use_id": item.get("call_id"),
                "content": output_text(item.get("output")),
            }
            _append(messages, "user", [result])
        else:
            raise Untranslatable(f"input: a {kind!r} item cannot be sent to this model")
    return system, messages, skipped


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


def _arguments(raw: Any, item: dict[str, Any]) -> Any:
    try:
        return orjson.loads(raw or "{}")
    except orjson.JSONDecodeError as exc:
        raise Untranslatable(f"input: tool call {item.get('call_id')} has arguments that are not JSON") from exc


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "input_schema": parameters}
    if description:
        out["description"] = description
    return out


def place_cache_breakpoints(body: dict[str, Any]) -> None:
    """Mark the stable prefix for Anthropic's prompt cache: the last tool, the system prompt, and the last
    block of the last two user turns (4 breakpoints, Anthropic's maximum). Each turn then reads what the one
    before wrote instead of paying full input price for the whole conversation again."""
    if body.get("tools"):
        body["tools"][-1]["cache_control"] = CACHE
    if body.get("system"):
        body["system"][-1]["cache_control"] = CACHE
    users = [m for m in body.get("messages") or [] if m["role"] == "user"]
    for message in users[-2:]:
        blocks = [b for b in message["content"] if b.get("type") != "text" or b.get("text")]
        if blocks:
            blocks[-1]["cache_control"] = CACHE


# -- answers ----------------------------------------------------------------------------------------


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    prompt, read, written = inclusive_input(usage or {})
    return usage_object(prompt, read, written, int((usage or {}).get("output_tokens") or 0))


def translate_response(message: dict[str, Any], tools: ResponsesTools | None = None) -> dict[str, Any]:
    """The Responses object for an Anthropic message; ``tools`` are those the client offered."""
    tools = tools or ResponsesTools()
    mid = str(message.get("id", ""))
    blocks = message.get("content") or []
    output: list[dict[str, Any]] = []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    if text:
        output.append(message_item(f"msg_{mid}", text))
    for b in blocks:
        if b.get("type") in ("tool_use", "server_tool_use"):
            arguments = orjson.dumps(b.get("input", {})).decode()
            output.append(tools.call_item(str(b.get("name")), str(b.get("id")), arguments))
    stop = message.get("stop_reason")
    return response_object(
        f"resp_{mid}",
        message.get("model"),
        output,
        status="incomplete" if stop == "max_tokens" else "completed",
        usage=responses_usage(message.get("usage") or {}),
        created=int(time.time()),
    )


class StreamTranslator:
    """Anthropic stream events in, Responses stream events out."""

    def __init__(self, estimated_input_tokens: int, client_body: dict[str, Any] | None = None) -> None:
        self.tools = read_tools(client_body or {})  # kept for the answer: the request body is let go early
        self.out = ResponsesStream(self.tools)
        self.stop: str | None = None

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._on(name, payload) for name, payload in named_events(data))

    def _on(self, name: bytes, payload: dict[str, Any]) -> bytes:
        index = payload.get("index", 0)
        if name == b"message_start":
            message = payload.get("message") or {}
            return self.out.start(f"resp_{message.get('id', '')}", message.get("model"))
        if name == b"content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use"):  # a server tool: the provider's web search
                return self.out.call(index, str(block.get("id")), str(block.get("name")))
            return b""  # text opens with its first delta; thinking is not shown to Responses clients
        if name == b"content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self.out.text(index, delta.get("text", ""))
            if delta.get("type") == "input_json_delta":
                return self.out.arguments(index, delta.get("partial_json", ""))
            return b""
        if name == b"content_block_stop":
            return self.out.close(index)
        if name == b"message_delta":
            self.stop = (payload.get("delta") or {}).get("stop_reason") or self.stop
        return b""

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = (0, 0)) -> bytes:
        if usage is None:
            usage = {"input_tokens": estimate[0], "output_tokens": estimate[1]}
        start = b"" if self.out.started else self.out.start("resp_", None)
        return start + self.out.finish(incomplete=self.stop == "max_tokens", usage=responses_usage(usage))
