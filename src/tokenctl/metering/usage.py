"""Usage extraction: one function per API flavour turns a provider usage object into ``Usage``.

Conventions (see docs/metering.md):
- Anthropic ``input_tokens`` excludes cache reads and writes; the split of cache
  writes by TTL comes from ``cache_creation``; when that split is absent all
  writes count as 5-minute writes.
- OpenAI ``prompt_tokens`` / ``input_tokens`` *include* cached tokens; we subtract
  cache reads and writes to get uncached input.
- Reasoning tokens are a subset of output tokens everywhere; never added twice.
"""

from __future__ import annotations

from typing import Any

from tokenctl.types import Usage


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_anthropic(raw: dict[str, Any]) -> Usage:
    cache_write = _int(raw.get("cache_creation_input_tokens"))
    split = raw.get("cache_creation")
    write_1h = _int(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else 0
    write_1h = min(write_1h, cache_write) if cache_write else write_1h
    cache_write = max(cache_write, write_1h)
    details = raw.get("output_tokens_details")
    reasoning = _int(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    server_tools = raw.get("server_tool_use")
    searches = _int(server_tools.get("web_search_requests")) if isinstance(server_tools, dict) else 0
    output = _int(raw.get("output_tokens"))
    return Usage(
        input_tokens=_int(raw.get("input_tokens")),
        cache_read_tokens=_int(raw.get("cache_read_input_tokens")),
        cache_write_5m_tokens=cache_write - write_1h,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        web_search_requests=searches,
    )


def merge_anthropic_stream(start: dict[str, Any] | None, delta: dict[str, Any] | None) -> dict[str, Any]:
    """Final streamed usage: ``message_start`` usage overlaid with non-null fields of the last ``message_delta``."""
    merged: dict[str, Any] = dict(start or {})
    for key, value in (delta or {}).items():
        if value is not None:
            merged[key] = value
    return merged


def _from_openai_inclusive(input_total: int, details: Any, output: int, out_details: Any) -> Usage:
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    written = _int(details.get("cache_write_tokens")) if isinstance(details, dict) else 0
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    audio_in = _int(details.get("audio_tokens")) if isinstance(details, dict) else 0
    audio_out = _int(out_details.get("audio_tokens")) if isinstance(out_details, dict) else 0
    cached = min(cached, input_total)
    written = min(written, input_total - cached)
    uncached = input_total - cached - written
    return Usage(
        input_tokens=uncached,
        cache_read_tokens=cached,
        cache_write_5m_tokens=written,
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        audio_input_tokens=min(audio_in, uncached),
        audio_output_tokens=min(audio_out, output - min(reasoning, output)),
    )


def from_openai_chat(raw: dict[str, Any]) -> Usage:
    return _from_openai_inclusive(
        _int(raw.get("prompt_tokens")),
        raw.get("prompt_tokens_details"),
        _int(raw.get("completion_tokens")),
        raw.get("completion_tokens_details"),
    )


def from_openai_responses(raw: dict[str, Any]) -> Usage:
    return _from_openai_inclusive(
        _int(raw.get("input_tokens")),
        raw.get("input_tokens_details"),
        _int(raw.get("output_tokens")),
        raw.get("output_tokens_details"),
    )


EXTRACTORS = {
    "anthropic.messages": from_anthropic,
    "openai.chat": from_openai_chat,
    "openai.responses": from_openai_responses,
}
