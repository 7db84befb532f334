"""Prompt-cache health: did each turn of a session read the cache it should have, and if not, why?

A turn that is mostly billed as a cache *write* although the session's previous turn had cached a prefix
is a miss. The gateway can tell why, from digests of the request's parts (never their text) compared with
the previous turn's: the model changed, the tools changed, the system prompt changed, an early message
changed, or nothing changed and the gap since the previous turn exceeded the cache lifetime (5 minutes, or
an hour for 1-hour writes). A session whose prefix repeats but that sets no ``cache_control`` at all is
named too. The money lost is what the written tokens cost above reading them.

A session with ``misses`` misses among its last ``of_turns`` turns raises one alarm per cause (audit entry
and webhook). Kept in this process's memory, bounded; Anthropic Messages requests only (OpenAI caches by
itself, without breakpoints to reason about).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from tokenctl.metering.pricing import PriceBook
from tokenctl.types import Route, Usage

_MAX_SESSIONS = 50_000
_MARKER = b'"cache_control":'
_MIN_TOKENS = 1024  # below the smallest cacheable prefix, a write is not a miss worth naming


@dataclass(frozen=True, slots=True)
class Prefix:
    """Digests of what a request's prompt cache is made of, in cache order."""

    conversation: str  # the session and a digest of its first message (a subagent is another conversation)
    model: str
    tools: int
    system: int
    messages: int  # how many
    messages_end: int  # length of the messages' JSON (markers cut out, closing bracket left off) ...
    messages_crc: int  # ... and its CRC-32
    continues: bool | None  # the previous turn's messages are this one's first ones (None: no previous turn)
    breakpoints: bool  # any cache_control at all
    hour: bool  # a 1-hour cache write was asked for


@dataclass(slots=True)
class _Session:
    prefix: Prefix
    at: float
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=20))
    alarmed: set[str] = field(default_factory=set)


def _cleaned(value: Any, found: dict[str, bool]) -> bytes:
    """The part's JSON with its cache_control markers cut out (they move from turn to turn)."""
    if value is None:
        return b""
    raw = orjson.dumps(value)
    if b'"cache_control"' in raw:
        found["breakpoint"] = True
        found["hour"] = found["hour"] or b'"ttl":"1h"' in raw
        raw = _cut_markers(raw)
    return raw


def _cut_markers(raw: bytes) -> bytes:
    """Remove each ``"cache_control":{…}`` member and the comma that joined it to its object (a few per request:
    split on the literal, no regex scan over the whole body)."""
    pieces = raw.split(_MARKER)
    out = [pieces[0]]
    for piece in pieces[1:]:
        rest = piece[piece.find(b"}") + 1 :]  # the marker's own value is a flat object
        if out[-1].endswith(b","):
            out[-1] = out[-1][:-1]
        elif rest.startswith(b","):
            rest = rest[1:]
        out.append(rest)
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    cause: str | None  # None: not a miss
    alarm: str | None = None  # the alarm text, the first time a session crosses the threshold for a cause


class CacheHealth:
    def __init__(self, misses: int = 2, of_turns: int = 3) -> None:
        self.misses, self.of_turns = misses, of_turns
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def prefix(self, session: str, body: dict[str, Any]) -> Prefix:
        """This request's digests: one serialisation of the messages, compared by length with the previous turn's
        (the previous turn's messages, as JSON, are a prefix of this one's when nothing before was edited)."""
        found = {"breakpoint": False, "hour": False}
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        first = zlib.crc32(_cleaned(messages[0], found)) if messages else 0
        conversation = f"{session}:{first:08x}"
        raw = _cleaned(messages, found)[:-1]
        before = self._sessions.get(conversation)
        continues = None
        if before is not None:
            end = before.prefix.messages_end
            continues = len(raw) >= end and zlib.crc32(raw[:end]) == before.prefix.messages_crc
        return Prefix(
            conversation,
            str(body.get("model")),
            zlib.crc32(_cleaned(body.get("tools"), found)),
            zlib.crc32(_cleaned(body.get("system"), found)),
            len(messages),
            len(raw),
            zlib.crc32(raw),
            continues,
            found["breakpoint"],
            found["hour"],
        )

    def observe(self, prefix: Prefix, usage: Usage, now: float) -> Verdict:
        """Judge this turn against the conversation's previous one, then remember it."""
        key = prefix.conversation
        before = self._sessions.get(key)
        cause = _miss_cause(before, prefix, usage, now) if before is not None else None
        state = before or _Session(prefix, now)
        state.prefix, state.at = prefix, now
        state.recent.append(cause is not None)
        self._sessions[key] = state
        self._sessions.move_to_end(key)
        if len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        alarm = None
        window = list(state.recent)[-self.of_turns :]
        if cause is not None and sum(window) >= self.misses and cause not in state.alarmed:
            state.alarmed.add(cause)
            alarm = f"{sum(window)} of the last {len(window)} turns missed the prompt cache: {cause}"
        return Verdict(cause, alarm)


def _miss_cause(before: _Session, now_prefix: Prefix, usage: Usage, now: float) -> str | None:
    prev = before.prefix
    unchanged = _first_change(prev, now_prefix) is None
    if not now_prefix.breakpoints:
        if unchanged and usage.input_tokens >= _MIN_TOKENS and not usage.cache_read_tokens:
            return "no cache_control: the repeated prefix is billed in full every turn"
        return None
    written = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
    if written < _MIN_TOKENS or written <= usage.cache_read_tokens:
        return None  # read most of its prefix (or too small to matter): not a miss
    change = _first_change(prev, now_prefix)
    if change is not None:
        return change
    lifetime = 3600.0 if prev.hour else 300.0
    gap = now - before.at
    if gap > lifetime:
        hint = "" if prev.hour else "; 1-hour cache writes would keep it across such gaps"
        return f"the cache lifetime ran out ({gap:.0f} s since the previous turn > {lifetime:.0f} s{hint})"
    return "the provider did not read the cache (prefix unchanged, within its lifetime)"


def _first_change(prev: Prefix, now: Prefix) -> str | None:
    if prev.model != now.model:
        return f"the model changed ({prev.model} -> {now.model})"
    if prev.tools != now.tools:
        return "the tools changed"
    if prev.system != now.system:
        return "the system prompt changed"
    if now.messages < prev.messages:
        return "the conversation was shortened (compacted)"
    if now.continues is False:
        return "an earlier message changed (the conversation before this turn was edited)"
    return None


def miss_cost(prices: PriceBook, route: Route, usage: Usage) -> Decimal | None:
    """What the turn's cache writes cost above reading the same tokens from the cache."""
    written = Usage(
        cache_write_5m_tokens=usage.cache_write_5m_tokens, cache_write_1h_tokens=usage.cache_write_1h_tokens
    )
    if not written.cache_write_tokens:
        read = Usage(cache_read_tokens=usage.input_tokens)
        full = Usage(input_tokens=usage.input_tokens)  # no cache_control: all of it billed as fresh input
        return _difference(prices, route, full, read)
    as_read = Usage(cache_read_tokens=written.cache_write_tokens)
    return _difference(prices, route, written, as_read)


def _difference(prices: PriceBook, route: Route, paid: Usage, instead: Usage) -> Decimal | None:
    a = prices.cost(route.provider, route.upstream_model, paid)
    b = prices.cost(route.provider, route.upstream_model, instead)
    return a.total - b.total if a.priced and b.priced else None
