"""A fake LLM provider: a real HTTP server speaking Anthropic Messages, OpenAI Chat Completions and
OpenAI Responses, streaming and not, with scripted usage and faults.

Used by the test suite, the benchmark and ``tokenctl fake-provider`` (a demo upstream needing no
API key). Requests are scripted with headers, which tokenctl forwards like any unknown header:

``x-fake-usage: input=1200,cache_read=800,cache_write_5m=100,cache_write_1h=50,output=40,reasoning=10``
    Token counts to report. ``input`` is the *total* input (cache included); unset counts default to
    input = body bytes / 4, output = chunks + reasoning, no cache.
``x-fake-chunks: 20``
    Number of text deltas in the answer (default 8).
``x-fake-word-bytes: 400``
    Each delta's text padded to this many bytes (a long answer); unset output = chunks x bytes / 4.
``x-fake-fault: <fault>``
    ``status:429`` (also 500, 503, 529, any code: an error in the API's own error shape, with
    ``retry-after: 1`` for 429/529), ``slow:<ms>`` (wait before answering), ``cut:<n>`` (close the
    connection abruptly after n events, or mid-body when not streaming), ``eof:<n>`` (end the stream
    cleanly after n events without its final event), ``error-event:<n>`` (the API's in-stream error
    event after n events), ``text-error:<code>`` (a non-JSON error body), ``stall:<ms>`` (pause
    between events), ``echo:<code>`` (an error whose message quotes the request body).
``x-fake-fault-model: <model>``
    Apply ``x-fake-fault`` only to requests for this model (fallback tests: one deployment fails).

Every request received is kept in ``FakeProvider.received`` (method, path, headers, raw body).
It also takes Slack-style webhooks: ``POST /hooks/<name>`` with ``{"text": …}`` is kept in ``hooks``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_ids = itertools.count(1)


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    usage: dict[str, int]
    chunks: int = 8
    fault: str | None = None
    fault_arg: str | None = None
    stall_ms: int = 0
    tool: str | None = None  # x-fake-tool: answer a fresh user turn with a call to this tool
    # (x-fake-tool-until: TEXT on Anthropic requests: call it again until a tool result contains TEXT)
    tool_input: dict[str, Any] = field(default_factory=dict)  # x-fake-tool-input (JSON)
    tool_result: str | None = None  # the tool result the request carries, echoed back as "got: …"
    service_tier: str = "default"  # what OpenAI answers say they were served at: the request's tier, echoed
    word_bytes: int = 0  # x-fake-word-bytes: each text delta this long

    @property
    def fault_after(self) -> int:
        return int(self.fault_arg or 0)


@dataclass
class FakeProvider:
    keep_requests: bool = True
    received: list[Received] = field(default_factory=list)
    hooks: list[tuple[str, str]] = field(default_factory=list)  # (hook name, text)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/hooks/{name}", self.webhook)
        return app

    # -- endpoints ----------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        if (early := await self._early_fault(request, script, "anthropic")) is not None:
            return early
        model = body.get("model", "fake")
        if script.tool:
            script.tool_result = _last_tool_result(body)
            until = request.headers.get("x-fake-tool-until")
            if script.tool_result is not None and (until is None or until in script.tool_result):
                script.tool = None  # the tool ran (and, with x-fake-tool-until, said so): answer its result
        if body.get("stream"):
            return await self._stream(request, script, _anthropic_events(model, script), "anthropic")
        return await self._json(request, script, _anthropic_message(model, script))

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.hooks.append((request.match_info["name"], str(body.get("text", ""))))
        return web.Response(text="ok")

    async def count_tokens(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self._keep(request, raw)
        return web.json_response({"input_tokens": max(1, len(raw) // 4)})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        if (early := await self._early_fault(request, script, "openai")) is not None:
            return early
        model = body.get("model", "fake")
        if script.tool:
            script.tool_result = _last_chat_tool_result(body)
            if script.tool_result is not None:
                script.tool = None  # the tool ran: answer its result
        if body.get("stream"):
            options = body.get("stream_options") or {}
            events = _chat_events(model, script, include_usage=bool(options.get("include_usage")))
            return await self._stream(request, script, events, "chat")
        return await self._json(request, script, _chat_completion(model, script))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        if (early := await self._early_fault(request, script, "openai")) is not None:
            return early
        model = body.get("model", "fake")
        if body.get("stream"):
            return await self._stream(request, script, _responses_events(model, script), "responses")
        return await self._json(request, script, _response_object(model, script, "completed"))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    # -- plumbing -----------------------------------------------------------------------------------

    def _keep(self, request: web.Request, raw: bytes) -> None:
        if self.keep_requests:
            self.received.append(
                Received(request.method, request.path, request.query_string, dict(request.headers), raw)
            )

    async def _receive(self, request: web.Request) -> tuple[dict[str, Any], Script]:
        raw = await request.read()
        self._keep(request, raw)
        body = orjson.loads(raw)
        script = _script(request, len(raw))
        tier = body.get("service_tier")
        if isinstance(tier, str) and tier != "auto":
            script.service_tier = tier
        only_for = request.headers.get("x-fake-fault-model")
        if only_for is not None and body.get("model") != only_for:
            script.fault = script.fault_arg = None  # the fault is scripted for another model
        return body, script

    async def _early_fault(self, request: web.Request, script: Script, family: str) -> web.Response | None:
        if script.fault == "slow":
            await asyncio.sleep(script.fault_after / 1000)
        if script.fault == "status":
            return _error_response(int(script.fault_arg or 500), family)
        if script.fault == "echo":  # a provider whose error message quotes the request, prompt and all
            text = (await request.read()).decode("utf-8", "replace")[:300]
            return _error_response(int(script.fault_arg or 400), family, f"invalid request: '{text}' at messages.0")
        if script.fault == "text-error":
            return web.Response(status=int(script.fault_arg or 502), text="Bad Gateway (upstream proxy)")
        return None

    async def _json(self, request: web.Request, script: Script, payload: dict[str, Any]) -> web.StreamResponse:
        data = orjson.dumps(payload)
        if script.fault == "cut":
            resp = web.StreamResponse(headers={"content-type": "application/json", "content-length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            request.transport.abort()  # type: ignore[union-attr]
            return resp
        return web.Response(
            body=data, content_type="application/json", headers={"request-id": f"fake_req_{next(_ids)}"}
        )

    async def _stream(self, request: web.Request, script: Script, events: list[bytes], api: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "request-id": f"fake_req_{next(_ids)}"})
        await resp.prepare(request)
        try:
            for i, event in enumerate(events):
                if script.fault in ("cut", "eof", "error-event") and i == script.fault_after:
                    return await self._stream_fault(request, resp, script.fault, api)
                await resp.write(event)
                if script.stall_ms:
                    await asyncio.sleep(script.stall_ms / 1000)
            await resp.write_eof()
        except ConnectionError:  # the client (the gateway) went away: normal in disconnect tests
            pass
        return resp

    async def _stream_fault(
        self, request: web.Request, resp: web.StreamResponse, fault: str, api: str
    ) -> web.StreamResponse:
        if fault == "cut":
            request.transport.abort()  # type: ignore[union-attr]
            return resp
        if fault == "error-event":
            await resp.write(_in_stream_error(api))
        await resp.write_eof()
        return resp


def _script(request: web.Request, body_size: int) -> Script:
    usage: dict[str, int] = {}
    for part in request.headers.get("x-fake-usage", "").split(","):
        name, _, value = part.partition("=")
        if name.strip():
            usage[name.strip()] = int(value)
    chunks = int(request.headers.get("x-fake-chunks", "8"))
    usage.setdefault("input", max(1, body_size // 4))
    for name in ("cache_read", "cache_write_5m", "cache_write_1h", "reasoning"):
        usage.setdefault(name, 0)
    word_bytes = int(request.headers.get("x-fake-word-bytes", "0"))
    usage.setdefault("output", chunks * max(1, word_bytes // 4) + usage["reasoning"])
    fault, _, arg = request.headers.get("x-fake-fault", "").partition(":")
    stall = int(arg) if fault == "stall" else 0
    tool_input = orjson.loads(request.headers.get("x-fake-tool-input", "{}"))
    script = Script(usage, chunks, fault or None, arg or None, stall, request.headers.get("x-fake-tool"), tool_input)
    script.word_bytes = word_bytes
    return script


def _last_tool_result(body: dict[str, Any]) -> str | None:
    """The text of the tool result in the conversation's last user turn, if it is one."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                inner = " ".join(str(b.get("text", "")) for b in inner if isinstance(b, dict))
            return str(inner)
    return None


def _last_chat_tool_result(body: dict[str, Any]) -> str | None:
    """The content of the tool message that ends a Chat conversation, if one does."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if isinstance(last, dict) and last.get("role") == "tool":
        content = last.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")
    return None


def _words(script: Script) -> list[str]:
    if script.tool_result is not None:
        return [f"got: {script.tool_result.strip()[:200]} ", *(f"word{i} " for i in range(1, script.chunks))]
    return [f"word{i} ".ljust(script.word_bytes, "x") for i in range(script.chunks)]


def _sse(event: str | None, payload: dict[str, Any]) -> bytes:
    data = b"data: " + orjson.dumps(payload) + b"\n\n"
    return (b"event: " + event.encode() + b"\n" + data) if event else data


# -- Anthropic ------------------------------------------------------------------------------------


def _anthropic_usage(u: dict[str, int], *, final: bool) -> dict[str, Any]:
    write = u["cache_write_5m"] + u["cache_write_1h"]
    usage: dict[str, Any] = {
        "input_tokens": u["input"] - u["cache_read"] - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": u["cache_read"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": u["cache_write_5m"],
            "ephemeral_1h_input_tokens": u["cache_write_1h"],
        },
        "output_tokens": u["output"] if final else 1,
        "service_tier": "standard",
    }
    if final and u["reasoning"]:
        usage["output_tokens_details"] = {"thinking_tokens": u["reasoning"]}
    return usage


def _anthropic_message(model: str, script: Script) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if script.usage["reasoning"]:
        content.append({"type": "thinking", "thinking": "Let me think.", "signature": "sig_fake_abc"})
    content.append({"type": "text", "text": "".join(_words(script))})
    if script.tool:
        content.append(
            {"type": "tool_use", "id": f"toolu_fake_{next(_ids)}", "name": script.tool, "input": script.tool_input}
        )
    return {
        "id": f"msg_fake_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if script.tool else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(script.usage, final=True),
    }


def _anthropic_events(model: str, script: Script) -> list[bytes]:
    start: dict[str, Any] = {
        "id": f"msg_fake_{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(script.usage, final=False),
    }
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    index = 0
    if script.usage["reasoning"]:
        events += [
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            ),
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": "Let me think."},
                },
            ),
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "signature_delta", "signature": "sig_fake_abc"},
                },
            ),
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ]
        index = 1
    events.append(
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        )
    )
    events.append(_sse("ping", {"type": "ping"}))
    for word in _words(script):
        events.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}},
            )
        )
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    if script.tool:
        tool_block = {"type": "tool_use", "id": f"toolu_fake_{next(_ids)}", "name": script.tool, "input": {}}
        events += [
            _sse(
                "content_block_start", {"type": "content_block_start", "index": index + 1, "content_block": tool_block}
            ),
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index + 1,
                    "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(script.tool_input).decode()},
                },
            ),
            _sse("content_block_stop", {"type": "content_block_stop", "index": index + 1}),
        ]
    final_usage = {"output_tokens": script.usage["output"]}
    if script.usage["reasoning"]:
        final_usage["output_tokens_details"] = {"thinking_tokens": script.usage["reasoning"]}  # type: ignore[assignment]
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use" if script.tool else "end_turn", "stop_sequence": None},
                "usage": final_usage,
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


# -- OpenAI Chat Completions --------------------------------------------------------------------


def _chat_usage(u: dict[str, int]) -> dict[str, Any]:
    details: dict[str, int] = {"cached_tokens": u["cache_read"]}
    if u["cache_write_5m"]:
        details["cache_write_tokens"] = u["cache_write_5m"]
    return {
        "prompt_tokens": u["input"],
        "completion_tokens": u["output"],
        "total_tokens": u["input"] + u["output"],
        "prompt_tokens_details": details,
        "completion_tokens_details": {"reasoning_tokens": u["reasoning"]},
    }


def _chat_tool_call(script: Script) -> dict[str, Any]:
    arguments = orjson.dumps(script.tool_input).decode()
    return {
        "id": f"call_fake_{next(_ids)}",
        "type": "function",
        "function": {"name": script.tool, "arguments": arguments},
    }


def _chat_completion(model: str, script: Script) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(_words(script))}
    if script.tool:
        message["tool_calls"] = [_chat_tool_call(script)]
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if script.tool else "stop"}],
        "usage": _chat_usage(script.usage),
        "service_tier": script.service_tier,
    }


def _chat_events(model: str, script: Script, include_usage: bool) -> list[bytes]:
    base = {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": script.service_tier,
    }
    events = [
        _sse(
            None,
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        )
    ]
    for word in _words(script):
        events.append(
            _sse(None, {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        )
    if script.tool:  # the call's name first, its arguments in two pieces, as servers stream them
        call = _chat_tool_call(script)
        arguments = call["function"]["arguments"]
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": script.tool, "arguments": ""}}
        for piece in ({"tool_calls": [head]}, *_argument_pieces(arguments)):
            events.append(_sse(None, {**base, "choices": [{"index": 0, "delta": piece, "finish_reason": None}]}))
    reason = "tool_calls" if script.tool else "stop"
    events.append(_sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
    if include_usage:
        events.append(_sse(None, {**base, "choices": [], "usage": _chat_usage(script.usage)}))
    events.append(b"data: [DONE]\n\n")
    return events


def _argument_pieces(arguments: str) -> list[dict[str, Any]]:
    half = len(arguments) // 2
    return [
        {"tool_calls": [{"index": 0, "function": {"arguments": part}}]} for part in (arguments[:half], arguments[half:])
    ]


# -- OpenAI Responses -----------------------------------------------------------------------------


def _responses_usage(u: dict[str, int]) -> dict[str, Any]:
    details: dict[str, int] = {"cached_tokens": u["cache_read"]}
    if u["cache_write_5m"]:
        details["cache_write_tokens"] = u["cache_write_5m"]
    return {
        "input_tokens": u["input"],
        "input_tokens_details": details,
        "output_tokens": u["output"],
        "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
        "total_tokens": u["input"] + u["output"],
    }


def _response_object(
    model: str, script: Script, status: str, *, rid: str | None = None, text: str | None = None
) -> dict[str, Any]:
    done = status == "completed"
    output = (
        []
        if not done
        else [
            {
                "type": "message",
                "id": "msg_fake_out",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": text if text is not None else "".join(_words(script)),
                        "annotations": [],
                    }
                ],
            }
        ]
    )
    return {
        "id": rid or f"resp_fake{next(_ids)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _responses_usage(script.usage) if done else None,
        "error": None,
        "incomplete_details": None,
        "service_tier": script.service_tier,
    }


def _responses_events(model: str, script: Script) -> list[bytes]:
    rid = f"resp_fake{next(_ids)}"
    seq = itertools.count()
    text = "".join(_words(script))
    item = {"type": "message", "id": "msg_fake_out", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}

    def ev(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    events = [
        ev("response.created", response=_response_object(model, script, "in_progress", rid=rid)),
        ev("response.in_progress", response=_response_object(model, script, "in_progress", rid=rid)),
        ev("response.output_item.added", output_index=0, item=item),
        ev("response.content_part.added", item_id="msg_fake_out", output_index=0, content_index=0, part=part),
    ]
    for word in _words(script):
        events.append(
            ev(
                "response.output_text.delta",
                item_id="msg_fake_out",
                output_index=0,
                content_index=0,
                delta=word,
                logprobs=[],
            )
        )
    events += [
        ev(
            "response.output_text.done", item_id="msg_fake_out", output_index=0, content_index=0, text=text, logprobs=[]
        ),
        ev(
            "response.content_part.done",
            item_id="msg_fake_out",
            output_index=0,
            content_index=0,
            part={**part, "text": text},
        ),
        ev(
            "response.output_item.done",
            output_index=0,
            item={**item, "status": "completed", "content": [{**part, "text": text}]},
        ),
        ev("response.completed", response=_response_object(model, script, "completed", rid=rid, text=text)),
    ]
    return events


# -- errors -----------------------------------------------------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _error_response(status: int, family: str, message: str | None = None) -> web.Response:
    headers = {"retry-after": "1"} if status in (429, 529) else {}
    message = message or f"fake provider error {status}"
    if family == "anthropic":
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    else:
        body = {
            "error": {
                "message": message,
                "type": "rate_limit_error" if status == 429 else "server_error",
                "code": None,
                "param": None,
            }
        }
    return web.json_response(body, status=status, headers=headers)


def _in_stream_error(api: str) -> bytes:
    if api == "anthropic":
        return _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    if api == "responses":
        return _sse(
            "response.failed",
            {
                "type": "response.failed",
                "response": {
                    "id": "resp_x",
                    "status": "failed",
                    "error": {"code": "server_error", "message": "fake failure"},
                },
            },
        )
    return _sse(None, {"error": {"message": "fake failure", "type": "server_error"}})


async def serve(host: str = "127.0.0.1", port: int = 9090, keep_requests: bool = False) -> None:
    """Run the fake provider until cancelled (used by ``tokenctl fake-provider``)."""
    runner = web.AppRunner(FakeProvider(keep_requests=keep_requests).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
