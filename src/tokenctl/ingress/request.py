"""Reading and checking a request body before anything is sent upstream."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tokenctl.errors import BadRequest, PayloadTooLarge

_TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_MESSAGES_APIS = ("anthropic.messages", "anthropic.count_tokens", "openai.chat")


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(request.content_length, max_bytes)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(None, max_bytes) from exc


def _too_large(size: int | None, max_bytes: int) -> PayloadTooLarge:
    got = f" ({size:,} bytes)" if size else ""
    return PayloadTooLarge(f"request body too large{got}: this gateway accepts at most {max_bytes:,} bytes")


def parse_body(raw: bytes, api: str) -> dict[str, Any]:
    """The JSON object, with the fields tokenctl relies on checked. Unknown fields are left alone."""
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required and must be a non-empty string")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    for name in _TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BadRequest(f"'{name}' must be a non-negative integer")
    if api in _MESSAGES_APIS and not isinstance(body.get("messages"), list):
        raise BadRequest("'messages' is required and must be an array")
    if api == "openai.responses" and "input" in body and not isinstance(body["input"], (str, list)):
        raise BadRequest("'input' must be a string or an array")
    return body
