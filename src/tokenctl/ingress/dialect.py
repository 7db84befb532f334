"""The three client dialects: how each renders errors (as a body and inside a stream) and meters usage.

Anthropic routes answer ``{"type":"error","error":{"type","message"}}``; OpenAI routes answer
``{"error":{"message","type","code","param"}}``. A stream that fails after it started ends with the
dialect's own error event (Anthropic ``event: error``, Chat ``data: {"error":…}`` without ``[DONE]``,
Responses ``event: response.failed``), never with a clean end of stream, which SDKs would accept
silently as a complete answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tokenctl.errors import GatewayError
from tokenctl.metering import usage as usage_extractors
from tokenctl.metering.stream import AnthropicStreamMeter, ChatStreamMeter, ResponsesStreamMeter, StreamMeter
from tokenctl.types import Usage

# OpenAI-style (type, code) for each of our error kinds.
_OPENAI_KINDS = {
    "invalid_request_error": ("invalid_request_error", "invalid_request"),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", "model_not_allowed"),
    "not_found_error": ("invalid_request_error", "model_not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "timeout_error": ("server_error", "upstream_timeout"),
    "api_error": ("server_error", "upstream_error"),
    "billing_error": ("budget_exceeded", "budget_exceeded"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
}


def anthropic_error_body(kind: str, message: str, request_id: str | None = None, code: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def openai_error_body(kind: str, message: str, request_id: str | None = None, code: str | None = None) -> bytes:
    err_type, default_code = _OPENAI_KINDS.get(kind, ("server_error", kind))
    code = code or default_code
    return orjson.dumps({"error": {"message": message, "type": err_type, "code": code, "param": None}})


@dataclass(frozen=True)
class Dialect:
    api: str
    family: str  # "anthropic" | "openai"
    error_body: Callable[..., bytes]
    extract_usage: Callable[[dict[str, Any]], Usage] | None
    new_meter: Callable[[bool], StreamMeter] | None

    def render_error(self, exc: GatewayError, request_id: str) -> bytes:
        return self.error_body(exc.kind, exc.message, request_id, exc.code)

    def stream_error_event(self, message: str, meter: StreamMeter | None, request_id: str) -> bytes:
        """The in-stream error event that ends a failed stream."""
        if self.api == "openai.responses":
            response: dict[str, Any] = {
                "id": (meter.response_id if meter else None) or f"resp_{request_id}",
                "object": "response",
                "status": "failed",
                "model": meter.response_model if meter else None,
                "output": [],
                "error": {"code": "server_error", "message": message},
            }
            payload = orjson.dumps({"type": "response.failed", "response": response})
            return b"event: response.failed\ndata: " + payload + b"\n\n"
        if self.family == "openai":
            return b"data: " + openai_error_body("api_error", message) + b"\n\n"
        return b"event: error\ndata: " + anthropic_error_body("api_error", message) + b"\n\n"


ANTHROPIC_MESSAGES = Dialect(
    "anthropic.messages",
    "anthropic",
    anthropic_error_body,
    usage_extractors.from_anthropic,
    lambda _drop: AnthropicStreamMeter(),
)
ANTHROPIC_COUNT_TOKENS = Dialect("anthropic.count_tokens", "anthropic", anthropic_error_body, None, None)
OPENAI_CHAT = Dialect(
    "openai.chat",
    "openai",
    openai_error_body,
    usage_extractors.from_openai_chat,
    ChatStreamMeter,
)
OPENAI_RESPONSES = Dialect(
    "openai.responses",
    "openai",
    openai_error_body,
    usage_extractors.from_openai_responses,
    lambda _drop: ResponsesStreamMeter(),
)
OPENAI_MODELS = Dialect("openai.models", "openai", openai_error_body, None, None)
ANTHROPIC_MODELS = Dialect("anthropic.models", "anthropic", anthropic_error_body, None, None)

DIALECTS = {d.api: d for d in (ANTHROPIC_MESSAGES, ANTHROPIC_COUNT_TOKENS, OPENAI_CHAT, OPENAI_RESPONSES)}
