"""Reading usage out of a relayed SSE stream without parsing every event.

Each meter is fed complete events (the bytes between blank lines) in the order
the upstream sent them and returns the bytes to forward (normally the same bytes).
Only the few events that carry usage, the model or the end of the stream are
JSON-parsed; content deltas are only counted, so a partial stream can still be
estimated. Per event the cost is a ``startswith`` and a few comparisons.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from tokenctl.metering.usage import merge_anthropic_stream

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def event_name(event: bytes) -> bytes:
    """The ``event:`` field of one SSE event, or b'' when it has none."""
    if not event.startswith(b"event:"):
        return b""
    end = event.find(b"\n")
    return event[6 : end if end >= 0 else None].strip()


def event_data(event: bytes) -> bytes:
    """The ``data:`` payload of one SSE event (several data lines are joined with newlines)."""
    start = 0 if event.startswith(b"data:") else event.find(b"\ndata:") + 1
    if start == 0 and not event.startswith(b"data:"):
        return b""
    end = event.find(b"\n", start)
    if end < 0 or not event[end:].strip():  # one data line, the last (the usual event): no split needed
        return event[start + 5 : end if end >= 0 else None].lstrip(b" ")
    lines = [line[5:].lstrip(b" ") for line in event[start:].split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def named_events(data: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(event name, JSON payload) for each named SSE event in ``data``; unparseable ones are skipped."""
    for event in data.split(b"\n\n"):
        name = event_name(event)
        if not name:
            continue
        try:
            payload = orjson.loads(event_data(event) or b"{}")
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            yield name, payload


def _load(event: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class StreamMeter:
    """What a meter knows at any point of the stream."""

    # Bytes of JSON framing around the text of one content delta, for estimating output of cut streams.
    delta_overhead = 100

    def __init__(self) -> None:
        self.raw_usage: dict[str, Any] | None = None
        self.terminal = False  # the stream reached its proper end (or the upstream's own error event)
        self.upstream_error: str | None = None
        self.response_model: str | None = None
        self.service_tier: str | None = None  # the tier an OpenAI provider says it served the request at
        self.response_id: str | None = None
        self.deltas = 0
        self.delta_bytes = 0

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    @property
    def output_known(self) -> bool:
        """Whether the provider's own output count arrived (otherwise it is estimated)."""
        return self.raw_usage is not None

    def estimated_output_tokens(self) -> int:
        text_bytes = max(0, self.delta_bytes - self.delta_overhead * self.deltas)
        return max(self.deltas, text_bytes // 4)

    def output_tokens_upper(self) -> int:
        """The output so far, counted high (a token per 3 bytes of text: prose and code have more): what a
        stream-metered reservation must already cover."""
        text_bytes = max(0, self.delta_bytes - self.delta_overhead * self.deltas)
        return max(self.deltas, text_bytes // 3)

    def start_usage(self) -> dict[str, Any] | None:
        """The provider's input count, when it sends one before the output (Anthropic's ``message_start``)."""
        return None

    def _note_error(self, event: bytes) -> None:
        self.terminal = True
        payload = _load(event) or {}
        error = payload.get("error")
        if not isinstance(error, dict) and isinstance(payload.get("response"), dict):
            error = payload["response"].get("error")
        message = error.get("message") if isinstance(error, dict) else payload.get("message")
        self.upstream_error = str(message or "upstream sent an error event")[:500]


class AnthropicStreamMeter(StreamMeter):
    delta_overhead = 95

    def __init__(self) -> None:
        super().__init__()
        self._start_usage: dict[str, Any] | None = None
        self._delta_usage: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        for event in data.split(b"\n\n"):
            if event.startswith(b"event: content_block_delta"):
                self.deltas += 1
                self.delta_bytes += len(event)
                continue
            name = event_name(event)
            if name == b"content_block_delta":
                self.deltas += 1
                self.delta_bytes += len(event)
            elif name == b"message_start":
                self._on_start(event)
            elif name == b"message_delta":
                self._on_delta(event)
            elif name == b"message_stop":
                self.terminal = True
            elif name == b"error":
                self._note_error(event)
        return data

    def _on_start(self, event: bytes) -> None:
        message = (_load(event) or {}).get("message")
        if isinstance(message, dict):
            usage = message.get("usage")
            self._start_usage = usage if isinstance(usage, dict) else None
            self.response_model = message.get("model") if isinstance(message.get("model"), str) else None
            self.response_id = message.get("id") if isinstance(message.get("id"), str) else None
            self.raw_usage = merge_anthropic_stream(self._start_usage, self._delta_usage)

    def _on_delta(self, event: bytes) -> None:
        usage = (_load(event) or {}).get("usage")
        if isinstance(usage, dict):
            self._delta_usage = usage  # cumulative: the last one wins
            self.raw_usage = merge_anthropic_stream(self._start_usage, self._delta_usage)

    @property
    def output_known(self) -> bool:
        return self._delta_usage is not None

    def start_usage(self) -> dict[str, Any] | None:
        return self._start_usage


class ChatStreamMeter(StreamMeter):
    """OpenAI Chat Completions: ``data:`` lines only; usage in a final chunk when ``include_usage`` is on."""

    delta_overhead = 150

    def __init__(self, drop_usage_chunk: bool = False) -> None:
        super().__init__()
        self._drop_usage_chunk = drop_usage_chunk  # we asked for usage on the client's behalf: hide that chunk

    def feed(self, data: bytes) -> bytes:
        dropped = None
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if self.response_model is None:
                self._first_chunk(event)
            if _USAGE_OBJECT.search(event):
                if self._on_usage(event):
                    dropped = event
            elif event.startswith((b"data: [DONE]", b"data:[DONE]")):
                self.terminal = True
            elif event.startswith((b'data: {"error"', b'data:{"error"')):
                self._note_error(event)
            else:
                self.deltas += 1
                self.delta_bytes += len(event)
        if dropped is not None:
            return data.replace(dropped + b"\n\n", b"", 1)
        return data

    def estimated_output_tokens(self) -> int:
        """Chat servers send about one token per chunk (chunk sizes vary too much between servers for bytes)."""
        return self.deltas

    def _first_chunk(self, event: bytes) -> None:
        match = _MODEL.search(event)
        if match:
            self.response_model = match.group(1).decode()

    def _on_usage(self, event: bytes) -> bool:
        """Record usage; True when this chunk should be hidden from the client."""
        chunk = _load(event) or {}
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.raw_usage = usage
        if isinstance(chunk.get("service_tier"), str):
            self.service_tier = chunk["service_tier"]
        if isinstance(chunk.get("id"), str):
            self.response_id = chunk["id"]
        return self._drop_usage_chunk and bool(_EMPTY_CHOICES.search(event))


_RESPONSES_TERMINAL = {b"response.completed", b"response.incomplete"}


class ResponsesStreamMeter(StreamMeter):
    """OpenAI Responses: typed events; usage in ``response.completed`` / ``incomplete`` / ``failed``."""

    delta_overhead = 120

    def feed(self, data: bytes) -> bytes:
        for event in data.split(b"\n\n"):
            if not event:
                continue
            name = event_name(event)
            if name.endswith(b".delta"):
                self.deltas += 1
                self.delta_bytes += len(event)
            elif name in _RESPONSES_TERMINAL:
                self._on_final(event)
                self.terminal = True
            elif name == b"response.failed":
                self._on_final(event)
                self._note_error(event)
            elif name == b"error":
                self._note_error(event)
            elif name == b"response.created" and self.response_id is None:
                self._on_created(event)
        return data

    def _on_created(self, event: bytes) -> None:
        response = (_load(event) or {}).get("response")
        if isinstance(response, dict):
            self.response_id = response.get("id")
            self.response_model = response.get("model")

    def _on_final(self, event: bytes) -> None:
        response = (_load(event) or {}).get("response")
        if isinstance(response, dict):
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.raw_usage = usage
            self.response_model = response.get("model") or self.response_model
            self.response_id = response.get("id") or self.response_id
            if isinstance(response.get("service_tier"), str):
                self.service_tier = response["service_tier"]
