"""Serving an OpenAI Responses client (Codex) from a Chat Completions model: a local vLLM, Ollama or
llama.cpp server, or any OpenAI-compatible deployment.

Request: ``instructions`` and developer/system messages (one system message first), input messages (text,
images), function and freeform tool calls with their outputs (assistant ``tool_calls`` and ``tool``
messages), every tool kind Codex offers as Chat functions (``translate/responses_tools.py``), output limit,
sampling, ``reasoning.effort`` (``reasoning_effort``, dropped by providers that do not take it), structured
output (``text.format`` json_schema → ``response_format``), stream (with usage). Answer and stream:
message, ``function_call`` and ``custom_tool_call`` items, status, usage.

Refused with a 400: ``previous_response_id`` (the model keeps no conversation). Dropped and named in the
ledger row: encrypted reasoning items, built-in tools, ``store``, ``include``, ``prompt_cache_key``,
``text.verbosity`` and the rest of ``_DROPPED``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from tokenctl.translate.anthropic_to_chat import Untranslatable, chat_chunks
from tokenctl.translate.responses_out import ResponsesStream, message_item, response_object, usage_object
from tokenctl.translate.responses_tools import ResponsesTools, call_name, custom_arguments, output_text, read_tools

_DROPPED = (
    "store",
    "include",
    "prompt_cache_key",
    "service_tier",
    "client_metadata",
    "truncation",
    "background",
)
_SKIPPED_ITEMS = ("reasoning", "web_search_call")


def translate_request(
    body: dict[str, Any], upstream_model: str, max_output: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for a Responses body, and what was dropped. Chat needs no output limit:
    ``max_output`` is not used (the client's own limit, when it sets one, is passed on)."""
    if body.get("previous_response_id"):
        raise Untranslatable("previous_response_id: this model keeps no server-side conversation; send the input")
    notes = [k for k in _DROPPED if k in body]
    tools = read_tools(body)
    system, messages, skipped = _input(body.get("input"), tools)
    notes += [f"{count} {kind} item(s)" for kind, count in skipped.items()]
    if body.get("instructions"):
        system.insert(0, str(body["instructions"]))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if system:
        out["messages"] = [{"role": "system", "content": "\n\n".join(system)}, *messages]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if tools.functions:
        out["tools"] = [
            {"type": "function", "function": {"name": f.name, "description": f.description, "parameters": f.parameters}}
            for f in tools.functions
        ]
        choice = _tool_choice(body.get("tool_choice"), tools)
        if choice is not None:
            out["tool_choice"] = choice
        if body.get("parallel_tool_calls") is False:
            out["parallel_tool_calls"] = False
    notes += tools.dropped
    if tools.web_search:
        notes.append("web_search tool not offered (no equivalent on this model)")
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort in ("minimal", "low", "medium", "high"):
        out["reasoning_effort"] = effort
    notes += _text_options(body.get("text"), out)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out, notes


def _text_options(text: Any, out: dict[str, Any]) -> list[str]:
    if not isinstance(text, dict):
        return []
    notes = ["text.verbosity"] if "verbosity" in text else []
    fmt = text.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    return notes


def _tool_choice(choice: Any, tools: ResponsesTools) -> Any:
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": tools.exposed(str(choice.get("name")))}}
    return choice if choice in ("auto", "required", "none") else None


def _input(items: Any, tools: ResponsesTools) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    if isinstance(items, str):
        return [], [{"role": "user", "content": items}], {}
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for item in items or []:
        kind = item.get("type", "message")
        if kind == "additional_tools":
            continue  # read as tools
        if kind in _SKIPPED_ITEMS:
            skipped[kind] = skipped.get(kind, 0) + 1
        elif kind == "message":
            _message(item, system, messages)
        elif kind in ("function_call", "custom_tool_call"):
            arguments = custom_arguments(item.get("input")) if kind == "custom_tool_call" else item.get("arguments")
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": call_name(item, tools), "arguments": arguments or "{}"},
            }
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                # "" rather than null: llama.cpp's server (llama-cpp-python) refuses a null content
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": output_text(item.get("output"))}
            )
        else:
            raise Untranslatable(f"input: a {kind!r} item cannot be sent to this model")
    return system, messages, skipped


def _message(item: dict[str, Any], system: list[str], messages: list[dict[str, Any]]) -> None:
    role = item.get("role")
    content = item.get("content")
    if role in ("system", "developer"):
        system.append(_text(content))
        return
    if role == "assistant":
        messages.append({"role": "assistant", "content": _text(content)})
        return
    messages.append({"role": "user", "content": _parts(content)})


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(str(p.get("text", "")) for p in content if p.get("type") in ("input_text", "output_text", "text"))


def _parts(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content or []:
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise Untranslatable(f"input: a {kind!r} content part cannot be sent to this model")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # plain text: what every Chat server accepts
    return parts


# -- answers ----------------------------------------------------------------------------------------


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return usage_object(prompt, cached, 0, int(usage.get("completion_tokens") or 0), reasoning)


def translate_response(answer: dict[str, Any], tools: ResponsesTools | None = None) -> dict[str, Any]:
    tools = tools or ResponsesTools()
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    rid = str(answer.get("id") or secrets.token_hex(8))
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(message_item(f"msg_{rid}", str(message["content"])))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(tools.call_item(str(function.get("name")), str(call.get("id") or _call_id()), _json(function)))
    return response_object(
        f"resp_{rid}",
        answer.get("model"),
        output,
        status="incomplete" if choice.get("finish_reason") == "length" else "completed",
        usage=responses_usage(answer.get("usage")),
        created=int(time.time()),
    )


def _json(function: dict[str, Any]) -> str:
    arguments = function.get("arguments")
    if isinstance(arguments, dict):
        return orjson.dumps(arguments).decode()
    return str(arguments or "{}")


def _call_id() -> str:
    return "call_" + secrets.token_hex(12)


class StreamTranslator:
    """Chat Completions chunks in, Responses stream events out."""

    def __init__(self, estimated_input_tokens: int, client_body: dict[str, Any] | None = None) -> None:
        self.tools = read_tools(client_body or {})  # kept for the answer: the request body is let go early
        self.out = ResponsesStream(self.tools)
        self.finish_reason: str | None = None

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._chunk(chunk) for chunk in chat_chunks(data))

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b"" if self.out.started else self.out.start(f"resp_{chunk.get('id', '')}", chunk.get("model"))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self.out.text("text", delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _call(self, call: dict[str, Any]) -> bytes:
        key = ("call", call.get("index", 0))
        function = call.get("function") or {}
        out = b""
        if key not in self.out.blocks:
            out += self.out.close("text")  # text before a call is one message item
            out += self.out.call(key, str(call.get("id") or _call_id()), str(function.get("name") or ""))
        return out + self.out.arguments(key, function.get("arguments") or "")

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = (0, 0)) -> bytes:
        """The closing events, with the real usage (the upstream's final chunk), else ``estimate`` (in, out):
        some servers never report usage in streams (llama.cpp), and the ledger records the estimate too."""
        if usage is None:
            usage = {"prompt_tokens": estimate[0], "completion_tokens": estimate[1]}
        start = b"" if self.out.started else self.out.start(f"resp_{secrets.token_hex(8)}", None)
        return start + self.out.finish(incomplete=self.finish_reason == "length", usage=responses_usage(usage))
