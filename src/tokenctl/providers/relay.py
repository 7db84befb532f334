"""The provider stage: sending a prepared request upstream and relaying the answer: JSON, SSE stream, or upstream error.

SSE events are written to the client as soon as each one is complete, with the upstream's
framing. A stream that fails after it started ends with the dialect's in-stream error event.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tokenctl.cache.key import CACHE_HEADER
from tokenctl.errors import GatewayError, UpstreamError, UpstreamTimeout
from tokenctl.gateway import CacheFill, Call
from tokenctl.metering.stream import StreamMeter
from tokenctl.policy.enforce import Admission
from tokenctl.providers.assemble import MessageAssembler
from tokenctl.providers.upstream import DROP_RESPONSE_HEADERS, UpstreamRequest
from tokenctl.text import header_text


class UpstreamAuthFailed(UpstreamError):
    """The provider refused the gateway's provider key: a gateway configuration problem."""

    retryable = False


class FallbackNeeded(Exception):
    """The deployment failed before sending anything to the client: another one may be tried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


RETRY_ELSEWHERE = frozenset({429, 500, 502, 503, 504, 529})


async def forward(call: Call, up: UpstreamRequest, retry_allowed: bool = False) -> web.StreamResponse:
    """Send and relay. With ``retry_allowed``, failures before the first byte raise FallbackNeeded instead."""
    provider = call.entry.route.provider  # type: ignore[union-attr]
    try:
        resp = await call.gw.http.post(
            up.url, data=up.body, headers=up.headers, timeout=up.timeout, allow_redirects=False
        )
    except TimeoutError as exc:
        if retry_allowed:
            raise FallbackNeeded("timed out before answering") from exc
        raise UpstreamTimeout(
            f"provider {provider.name!r} did not answer within {provider.timeout_seconds:g}s"
        ) from exc
    except aiohttp.ClientError as exc:
        if _out_of_descriptors(exc):
            raise UpstreamError(
                "tokenctl has run out of file descriptors (too many open connections for its open-file limit); "
                "the gateway's administrator must raise `ulimit -n`"
            ) from exc
        if retry_allowed:
            raise FallbackNeeded(f"unreachable ({type(exc).__name__})") from exc
        raise UpstreamError(f"provider {provider.name!r} is unreachable ({type(exc).__name__})") from exc
    try:
        call.entry.upstream_request_id = header_text(
            resp.headers.get("request-id") or resp.headers.get("x-request-id"), 200
        )
        if retry_allowed and resp.status in RETRY_ELSEWHERE:
            raise FallbackNeeded(f"answered {resp.status}")
        call.answer_started(up)
        if resp.status >= 400:
            return await _relay_upstream_error(call, resp)
        followed = call.admission.stream if call.admission is not None else None
        if resp.content_type == "text/event-stream" and followed is not None and followed.assemble:
            return await _relay_assembled(call, resp)
        if resp.content_type == "text/event-stream" and call.upstream_dialect.new_meter is not None:
            return await _relay_stream(call, resp, up.injected_stream_usage)
        return await _relay_json(call, resp)
    finally:
        resp.close()


def _out_of_descriptors(exc: BaseException) -> bool:
    """The gateway's own descriptor limit, not the provider, is why the connection failed."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno in (errno.EMFILE, errno.ENFILE):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def response_headers(resp: aiohttp.ClientResponse, request_id: str) -> dict[str, str]:
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in DROP_RESPONSE_HEADERS}
    upstream_id = resp.headers.get("request-id") or resp.headers.get("x-request-id")
    if upstream_id:
        headers["x-upstream-request-id"] = upstream_id
    headers["request-id"] = request_id
    headers["x-request-id"] = request_id
    return headers


async def _read_all(call: Call, resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"provider {resp.url.host} stopped answering mid-response") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"provider connection failed mid-response ({type(exc).__name__})") from exc


def _load_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _relay_json(call: Call, resp: aiohttp.ClientResponse) -> web.Response:
    data = await _read_all(call, resp)
    entry = call.entry
    entry.status = resp.status
    parsed = _load_object(data)
    if parsed is not None and call.upstream_dialect.extract_usage is not None:
        usage = parsed.get("usage")
        entry.raw_usage = usage if isinstance(usage, dict) else None
        model = parsed.get("model")
        entry.response_model = model if isinstance(model, str) else None
        tier = parsed.get("service_tier")
        entry.service_tier = tier if isinstance(tier, str) else None
    headers = response_headers(resp, call.request_id)
    if call.translation is not None:
        if parsed is None:
            raise UpstreamError("the provider's answer was not JSON; it cannot be translated")
        assert call.translator is not None
        data = orjson.dumps(call.translation.response(parsed, call.translator))
        headers["content-type"] = "application/json"
        headers.pop("content-length", None)
    if call.cache_fill is not None:
        call.cache_fill.chunks.append(data)
        call.cache_fill.content_type = headers.get("content-type", "application/json")
        call.cache_fill.complete = True
    if call.entry.response_cache is not None:
        headers[CACHE_HEADER] = call.entry.response_cache  # miss or bypass
    return web.Response(body=data, status=resp.status, headers=headers)


async def _relay_assembled(call: Call, resp: aiohttp.ClientResponse) -> web.Response:
    """A non-streaming request streamed upstream: metered and its reservation grown event by event, then the
    answer put together as the JSON the client asked for; a budget with no room for more ends it with the
    budget's 402 (nothing was sent yet), the partial output metered."""
    admission, enforcer = call.admission, call.gw.enforcer
    assert admission is not None and call.upstream_dialect.new_meter is not None
    meter = call.meter = call.upstream_dialect.new_meter(False)
    entry, message = call.entry, MessageAssembler()
    entry.status = resp.status
    try:
        async for block in _event_blocks(resp):
            for event in block.split(b"\n\n"):
                if not event:
                    continue
                meter.feed(event)
                if enforcer.keep_up_due(admission, meter):
                    stop = await enforcer.keep_up(admission, entry, meter)
                    if stop is not None:
                        entry.partial = True
                        raise stop
                message.add_event(event)
    finally:
        entry.raw_usage, entry.service_tier = meter.raw_usage, meter.service_tier
        entry.response_model = meter.response_model
    headers = response_headers(resp, call.request_id)
    headers["content-type"] = "application/json"
    if message.error is not None:  # the provider's own error, as it would have answered it without streaming
        entry.outcome, entry.error = "upstream_error", _redacted_error(500, message.error)
        overloaded = (message.error.get("error") or {}).get("type") == "overloaded_error"
        entry.status = 529 if overloaded else 500
        return web.Response(body=orjson.dumps(message.error), status=entry.status, headers=headers)
    if not meter.terminal:
        entry.partial = True
        raise UpstreamError("the provider closed the answer before it was complete")
    data = orjson.dumps(message.document())
    if call.cache_fill is not None:
        call.cache_fill.chunks.append(data)
        call.cache_fill.content_type = "application/json"
        call.cache_fill.complete = True
    if entry.response_cache is not None:
        headers[CACHE_HEADER] = entry.response_cache
    return web.Response(body=data, status=resp.status, headers=headers)


class _EventSplitter:
    """Upstream chunks in, complete SSE events out: each chunk's complete events together, each ending with its
    blank line (CRLF framing normalised); a partial event waits for the chunk that completes it."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        if self.pending:
            chunk = self.pending + chunk
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            self.pending = chunk
            return b""
        self.pending = chunk[cut + 2 :]
        return chunk[: cut + 2]

    def rest(self) -> bytes:
        """What is left when the upstream ends: a last event without its blank line, completed."""
        return self.pending + b"\n\n" if self.pending.strip() else b""


async def _event_blocks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The complete SSE events of an upstream answer as they arrive (one step of the iterator per chunk)."""
    events = _EventSplitter()
    try:
        async for chunk in resp.content.iter_any():
            block = events.feed(chunk)
            if block:
                yield block
    except TimeoutError as exc:
        raise UpstreamTimeout("the provider stopped sending (read timeout)") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"provider connection failed mid-answer ({type(exc).__name__})") from exc
    last = events.rest()
    if last:
        yield last


async def _relay_upstream_error(call: Call, resp: aiohttp.ClientResponse) -> web.Response:
    data = await _read_all(call, resp)
    entry = call.entry
    entry.outcome = "upstream_error"
    parsed = _load_object(data)
    entry.error = _redacted_error(resp.status, parsed)
    if resp.status in (401, 403):
        name = entry.route.provider.name if entry.route else "?"
        raise UpstreamAuthFailed(
            f"provider {name!r} refused the gateway's provider key ({resp.status}); "
            f"the gateway administrator must fix the provider key"
        )
    entry.status = resp.status
    headers = response_headers(resp, call.request_id)
    if parsed is not None and _in_dialect(parsed, call.dialect.family):
        return web.Response(body=data, status=resp.status, headers=headers)
    message = _error_message(parsed) or data[:500].decode("utf-8", "replace") or f"upstream returned HTTP {resp.status}"
    kind = "invalid_request_error" if resp.status < 500 else "api_error"
    headers["content-type"] = "application/json"
    body = call.dialect.error_body(kind, f"upstream error {resp.status}: {message}", call.request_id)
    return web.Response(body=body, status=resp.status, headers=headers)


_QUOTED = re.compile(r"""(["'`]).*?\1|\{.*\}""", re.S)


def _redacted_error(status: int, parsed: dict[str, Any] | None) -> str:
    """What the ledger keeps of an upstream error: its type and a short message with quoted parts removed
    (a provider that echoes the request would otherwise put prompt text in the ledger)."""
    error = parsed.get("error") if parsed else None
    kind = error.get("type") or error.get("code") if isinstance(error, dict) else None
    message = _error_message(parsed) or ""
    message = _QUOTED.sub("…", message)[:160]
    return f"upstream {status}" + (f" {kind}" if isinstance(kind, str) else "") + (f": {message}" if message else "")


def _in_dialect(parsed: dict[str, Any], family: str) -> bool:
    error = parsed.get("error")
    if family == "anthropic":
        return parsed.get("type") == "error" and isinstance(error, dict)
    return isinstance(error, dict) and "message" in error


def _error_message(parsed: dict[str, Any] | None) -> str | None:
    if parsed is None:
        return None
    error = parsed.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    message = parsed.get("message") or parsed.get("detail")
    return str(message) if message else None


class _ClientGone(Exception):
    pass


async def _relay_stream(call: Call, resp: aiohttp.ClientResponse, injected_usage: bool) -> web.StreamResponse:
    assert call.upstream_dialect.new_meter is not None
    meter = call.meter = call.upstream_dialect.new_meter(injected_usage)
    entry = call.entry
    headers = response_headers(resp, call.request_id)
    headers["cache-control"] = "no-cache"
    if call.cache_fill is not None:
        call.cache_fill.stream, call.cache_fill.content_type = True, "text/event-stream"
    if call.entry.response_cache is not None:
        headers[CACHE_HEADER] = call.entry.response_cache
    out = web.StreamResponse(status=resp.status, headers=headers)
    entry.status = resp.status
    try:
        await _prepare(out, call)
        failure = await _pump(call, resp, out)
        if failure is None and not meter.terminal:
            failure = "upstream closed the stream before it was complete"
        if failure is not None:
            entry.outcome, entry.partial, entry.error = "stream_failed", True, failure
            await _write(out, call.dialect.stream_error_event(failure, meter, call.request_id))
        elif meter.upstream_error is not None:
            if call.translator is not None:
                await _record_before_last_bytes(call, meter)
                await _write(out, call.dialect.stream_error_event(meter.upstream_error, meter, call.request_id))
        elif call.translator is not None:
            estimate = (call.body_size // 4, meter.estimated_output_tokens())  # what the ledger records then
            ending = call.translator.finish(meter.raw_usage, estimate)
            await _record_before_last_bytes(call, meter)
            await _write(out, ending, call.cache_fill)
        await _end(out, complete=failure is None)
        if failure is None and call.cache_fill is not None:
            call.cache_fill.complete = True
            await call.fill_cache()
    except _ClientGone:
        if not call.finished:  # once recorded complete, a client that closes on the last event changes nothing
            entry.outcome, entry.partial = "client_disconnected", True
            entry.error = "client disconnected mid-stream"
    finally:
        entry.raw_usage, entry.service_tier = meter.raw_usage, meter.service_tier
        entry.response_model = meter.response_model
    return out


async def _prepare(out: web.StreamResponse, call: Call) -> None:
    try:
        await out.prepare(call.request)
    except (ConnectionError, RuntimeError) as exc:  # the client left before the first byte
        raise _ClientGone() from exc


async def _end(out: web.StreamResponse, complete: bool) -> None:
    """The end of the chunked body. A client that closes right after the final event already has the answer."""
    try:
        await out.write_eof()
    except (ConnectionError, RuntimeError) as exc:
        if not complete:
            raise _ClientGone() from exc


async def _record_before_last_bytes(call: Call, meter: StreamMeter) -> None:
    """The answer is complete upstream: meter, settle and journal it now, before the client has its last bytes,
    so a gateway killed at this moment still has the request in its ledger."""
    entry = call.entry
    entry.raw_usage, entry.response_model = meter.raw_usage, meter.response_model
    entry.service_tier = meter.service_tier
    if meter.upstream_error is not None:
        entry.outcome, entry.error = "upstream_error", meter.upstream_error
    await call.finish()


async def _pump(call: Call, resp: aiohttp.ClientResponse, out: web.StreamResponse) -> str | None:
    """Relay complete events until the upstream ends. Returns why the upstream failed, or None."""
    meter = call.meter
    assert meter is not None
    followed = call.admission if call.admission is not None and call.admission.stream is not None else None
    events = _EventSplitter()
    chunks = resp.content.iter_any()
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            return "upstream stopped sending (read timeout)"
        except aiohttp.ClientError as exc:
            return f"upstream connection failed mid-stream ({type(exc).__name__})"
        block = events.feed(chunk)
        if not block:
            continue
        if call.entry.ttft_ms is None:
            call.entry.ttft_ms = (time.perf_counter() - call.started) * 1000
        stop = None
        if followed is None:
            relayed = meter.feed(block)
        else:
            relayed, stop = await _follow(call, followed, meter, block)
        if stop is not None:  # the budget has no room for more: what it covered, then the reason
            await _write(out, call.translator.feed(relayed) if call.translator is not None else relayed)
            return stop.message
        if call.translator is not None:
            relayed = call.translator.feed(relayed)
        elif meter.terminal and not call.finished:
            await _record_before_last_bytes(call, meter)
        await _write(out, relayed, call.cache_fill)
    last = events.rest()
    if last:
        relayed = meter.feed(last)
        if call.translator is None and meter.terminal and not call.finished:
            await _record_before_last_bytes(call, meter)
        await _write(out, relayed, call.cache_fill)
    return None


async def _follow(
    call: Call, followed: Admission, meter: StreamMeter, block: bytes
) -> tuple[bytes, GatewayError | None]:
    """Meter a stream-metered answer event by event, growing its reservation as it goes: (the events its
    reservation covers, why it must stop or None). The event that needed more than the budget has is not sent."""
    sent: list[bytes] = []
    for event in block.split(b"\n\n"):
        if not event:
            continue
        relayed = meter.feed(event + b"\n\n")
        if call.gw.enforcer.keep_up_due(followed, meter):
            stop = await call.gw.enforcer.keep_up(followed, call.entry, meter)
            if stop is not None:
                return b"".join(sent), stop
        sent.append(relayed)
    return b"".join(sent), None


async def _write(out: web.StreamResponse, data: bytes, fill: CacheFill | None = None) -> None:
    if not data:
        return
    if fill is not None:
        fill.chunks.append(data)
    try:
        await out.write(data)
    except (ConnectionError, RuntimeError) as exc:  # aiohttp: closing transport / closed response
        raise _ClientGone() from exc
