"""Runaway loops: an agent calling the same tool with the same arguments over and over, or a script starting
the agent again and again with the same prompt (a "Ralph loop": ``while :; do cat PROMPT.md | claude; done``).

Every turn of an agent resends its whole history, so the loop is visible in the request itself: the trailing
run of identical tool calls (same name, same arguments) at the end of the conversation. A ``loops:`` rule
acts when that run reaches ``repeated_tool_calls``:

- ``alert``: an audit entry and a webhook, once per session and run length reached;
- ``pause``: the request is refused (402, shown once by Claude Code) with a message naming the rule and the
  command that resumes the session. ``tokenctl loops resume SESSION`` lets it go on for another
  ``repeated_tool_calls`` repeats, so a real loop is paused again and a false alarm costs one command;
- ``throttle``: while the rule holds, the subject gets ``throttle_per_minute`` requests a minute; the rest are
  answered 429 with ``Retry-After`` (clients wait and retry), so a loop slows to a trickle instead of stopping.

A session running unattended (``unattended_minutes: N``): requests keep coming, all of them tool-result steps,
N minutes after the user last wrote (in this process's memory: a replica counts from when it first saw
the session). Resuming it allows another N minutes.

Spend velocity: ``spend_per_hour_usd: N`` acts when a session (or a key's requests without one) settled N
dollars within the last 60 minutes; ``spend_per_hour_x_baseline: K`` when a key spent K times its own usual
hour (the median of its active hours over the last 14 days, read from the ledger by the watcher) and at least
``min_usd``. Both count in the budget store, per minute, so a fleet on Redis sums every replica's spend; a key
with fewer than 10 active hours in the ledger has no baseline yet and the K× rule does not act on it.

A Ralph loop starts a new session each time, so nothing within one session repeats: a rule with
``same_first_prompt_sessions: N`` counts the distinct sessions of one key whose first user message is the
same (compared by digest) within ``window_minutes``, in the budget store (shared by a fleet), and acts on the
Nth; its subject is ``key:<key id>:<prompt digest>``.

Evidence kept in the audit log: the rule, the tool's name and the count, never arguments or prompt text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from tokenctl.validate import ConfigError, choice, reject_unknown

LOOP_ACTIONS = ("alert", "pause", "throttle")
DETECTORS = (
    "repeated_tool_calls",
    "same_first_prompt_sessions",
    "unattended_minutes",
    "near_identical_turns",
    "spend_per_hour_usd",
    "spend_per_hour_x_baseline",
)
_FIELDS = {"name", "scope", "match", "window_minutes", "action", "throttle_per_minute", "min_usd", *DETECTORS}
_SCOPES = ("org", "team", "user", "project", "key")


@dataclass(frozen=True, slots=True)
class LoopRule:
    name: str
    scope: str
    match: str | None
    repeated_tool_calls: int | None  # the same tool call, same arguments, this many times in a row
    action: str = "pause"
    same_first_prompt_sessions: int | None = None  # this many sessions of one key with one first prompt …
    window_minutes: int = 60  # … within this window
    unattended_minutes: int | None = None  # a session this long without the user writing
    near_identical_turns: int | None = None  # the model's answers nearly the same this many times in a row
    spend_per_hour_usd: int | None = None  # the subject spent this many dollars within the last 60 minutes
    spend_per_hour_x_baseline: int | None = None  # a key spent this many times its usual hour's spend ...
    min_usd: int = 5  # ... and at least this many dollars, within the last 60 minutes
    throttle_per_minute: int = 2  # the throttle action's rate while the rule holds

    @property
    def threshold(self) -> int:
        return (
            self.repeated_tool_calls
            or self.same_first_prompt_sessions
            or self.unattended_minutes
            or self.near_identical_turns
            or self.spend_per_hour_usd
            or (self.min_usd if self.spend_per_hour_x_baseline else 0)  # a resumed key may spend this much more
        )


def parse_loop(raw: Any, where: str) -> LoopRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    reject_unknown(raw, _FIELDS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: required")
    counts = {k: raw.get(k) for k in DETECTORS if k in raw}
    if len(counts) != 1:
        raise ConfigError(f"{where}: set one of {', '.join(DETECTORS)}")
    ((field, count),) = counts.items()
    least = 1 if field in ("unattended_minutes", "spend_per_hour_usd") else 2
    if not isinstance(count, int) or isinstance(count, bool) or count < least:
        raise ConfigError(f"{where}.{field}: a whole number, at least {least}")
    per_minute = raw.get("throttle_per_minute", 2)
    if not isinstance(per_minute, int) or isinstance(per_minute, bool) or per_minute < 1:
        raise ConfigError(f"{where}.throttle_per_minute: a whole number, at least 1")
    min_usd = raw.get("min_usd", 5)
    if "min_usd" in raw and field != "spend_per_hour_x_baseline":
        raise ConfigError(f"{where}.min_usd: only for spend_per_hour_x_baseline")
    if not isinstance(min_usd, int) or isinstance(min_usd, bool) or min_usd < 1:
        raise ConfigError(f"{where}.min_usd: a whole number of dollars, at least 1")
    window = raw.get("window_minutes", 60)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ConfigError(f"{where}.window_minutes: a whole number of minutes, at least 1")
    match = raw.get("match")
    return LoopRule(
        name=name,
        scope=choice(raw, "scope", _SCOPES, "org", where),
        match=None if match is None else str(match),
        repeated_tool_calls=count if field == "repeated_tool_calls" else None,
        action=choice(raw, "action", LOOP_ACTIONS, "pause", where),
        same_first_prompt_sessions=count if field == "same_first_prompt_sessions" else None,
        window_minutes=window,
        unattended_minutes=count if field == "unattended_minutes" else None,
        near_identical_turns=count if field == "near_identical_turns" else None,
        spend_per_hour_usd=count if field == "spend_per_hour_usd" else None,
        spend_per_hour_x_baseline=count if field == "spend_per_hour_x_baseline" else None,
        min_usd=min_usd,
        throttle_per_minute=per_minute,
    )


def parse_loops(raw: Any) -> tuple[LoopRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("loops: must be a list of rules")
    rules = tuple(parse_loop(r, f"loops[{i}]") for i, r in enumerate(raw))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigError(f"loops: duplicate rule names in {names}")
    return rules


# -- what the request shows ------------------------------------------------------------------------


def _canonical(arguments: Any) -> str:
    """The same arguments give the same digest whatever their key order or spacing."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return hashlib.sha256(arguments.encode()).hexdigest()[:16]
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _calls_newest_first(body: dict[str, Any], api: str) -> Iterator[tuple[str, Any]]:
    """(tool name, raw arguments) for each tool call in the history, newest first."""
    if api == "openai.responses":
        items = body.get("input")
        for item in reversed(items) if isinstance(items, list) else ():
            if isinstance(item, dict) and item.get("type") in ("function_call", "custom_tool_call"):
                args = item.get("arguments") if item.get("type") == "function_call" else item.get("input")
                yield str(item.get("name")), args
        return
    messages = body.get("messages")
    for message in reversed(messages) if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        for call in reversed(calls) if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                yield str(function.get("name")), function.get("arguments")
        content = message.get("content")
        for block in reversed(content) if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                yield str(block.get("name")), block.get("input")


def trailing_repeats(body: dict[str, Any], api: str) -> tuple[int, str | None]:
    """How many times the latest tool call was made in a row with the same arguments, and the tool's name.

    Walks the history from its end and stops at the first different call, so an ordinary turn costs one or
    two digests however long the session is."""
    calls = _calls_newest_first(body, api)
    latest = next(calls, None)
    if latest is None:
        return 0, None
    name, digest, run = latest[0], _canonical(latest[1]), 1
    for other_name, args in calls:
        if other_name != name or _canonical(args) != digest:
            break
        run += 1
    return run, name


def trailing_similar_answers(body: dict[str, Any], api: str, limit: int = 50) -> int:
    """How many of the model's latest answers in a row are nearly the same text (word sets 80 % alike), up to
    ``limit`` (the largest count a rule asks for: walking further would change no decision).

    Only answers with some text count (a tool call alone is the repeated-call detector's); any answer that
    differs ends the run, so an ordinary session costs one or two comparisons."""
    items = body.get("input") if api == "openai.responses" else body.get("messages")
    latest: set[str] | None = None
    run = 0
    for item in reversed(items) if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("role") != "assistant":
            continue
        text = _text(item.get("content"))
        if len(text) < 20:
            continue
        words = _word_set(text)
        if latest is None:
            latest = words
        elif len(latest & words) < 0.8 * len(latest | words):
            break
        run += 1
        if run >= limit:
            break
    return run


def _word_set(text: str) -> set[str]:
    return set(text.lower()[:4000].split())


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "\n".join(parts)


def first_prompt_digest(body: dict[str, Any], api: str) -> str | None:
    """A digest of the conversation's first user message (the prompt a script feeds each new session)."""
    turns = body.get("input") if api == "openai.responses" else body.get("messages")
    if isinstance(turns, str):
        text = turns
    else:
        first = (
            next(
                (t for t in turns if isinstance(t, dict) and t.get("role") == "user"),
                None,
            )
            if isinstance(turns, list)
            else None
        )
        text = _text(first.get("content")) if first else ""
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else None
