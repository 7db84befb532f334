"""What an agent session's history says about how the model is doing: the signals that escalate a session.

Everything is read from the request body, which carries the whole conversation, so a replica that has
never seen the session reads the same signals. Nothing here keeps or returns prompt text.

- ``failing_results``: tool results in a row, at the end of the conversation, that report a failure
  (Anthropic ``is_error`` where the client sends it, as Claude Code does; otherwise the output's text:
  a non-zero exit code, a traceback, failing tests, an error line);
- ``repeated_calls``: the latest tool call made this many times in a row with the same arguments;
- ``gave_up``: the model's latest text says it cannot do the task;
- ``re_asked``: the newest user message repeats an earlier one (the user asking again).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tokenctl.policy.loops import trailing_repeats

# (substring that must be there, pattern that confirms it) on the lower-cased output: the substring test keeps
# the common case, an output with none of them, at a few microseconds per kilobyte
_FAILURE_CHECKS: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    ("exit", re.compile(r"exit(?:ed with)? (?:code|status)[: ]*[1-9]")),
    ("traceback (most recent call last)", None),
    ("failed", re.compile(r"^failed\b|\b[1-9]\d* failed\b", re.MULTILINE)),
    ("error", re.compile(r"\b[1-9]\d* errors?\b|^error(?:\[\w+\])?:|error: ", re.MULTILINE)),
    ("fatal:", None),
    ("command not found", None),
    ("no such file or directory", None),
    ("permission denied", None),
)
_GIVES_UP = re.compile(
    r"\b(?:I (?:can ?not|can't|cannot|am unable to|am not able to|'m unable to|'m not able to|was unable to|"
    r"wasn't able to|could not|couldn't) (?:find|fix|solve|complete|determine|figure|resolve|do|get|make|"
    r"reproduce|access|proceed|help)|I don't know how to|I'm stuck|I am stuck)",
    re.IGNORECASE,
)
_RESULT_TYPES = frozenset({"tool_result", "function_call_output", "custom_tool_call_output", "mcp_tool_result"})
_SCAN_CHARS = 4000  # the start and end of a long tool output say whether it failed
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class Signals:
    failing_results: int = 0
    repeated_calls: int = 0
    repeated_tool: str | None = None
    gave_up: bool = False
    re_asked: bool = False


def read_signals(body: dict[str, Any], api: str) -> Signals:
    items = _history(body, api)
    runs, tool = trailing_repeats(body, api)
    return Signals(
        failing_results=_trailing_failures(items),
        repeated_calls=runs if runs > 1 else 0,
        repeated_tool=tool if runs > 1 else None,
        gave_up=_latest_assistant_gives_up(items),
        re_asked=_user_asks_again(items),
    )


def _history(body: dict[str, Any], api: str) -> list[Any]:
    """The conversation as sent (not copied: the walkers below read it from its end and skip what is not
    a mapping)."""
    items = body.get("input") if api == "openai.responses" else body.get("messages")
    return items if isinstance(items, list) else []


# -- tool results ----------------------------------------------------------------------------------


def _trailing_failures(items: list[Any]) -> int:
    """Failed tool results in a row from the newest back; a success or a user's own message ends the run."""
    count = 0
    for failed in _results_newest_first(items):
        if failed is None:
            break
        if not failed:
            break
        count += 1
    return count


def _results_newest_first(items: list[Any]) -> Iterator[bool | None]:
    """For each tool result, newest first: did it fail? ``None`` marks a user turn (the run stops there)."""
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        kind, role = item.get("type"), item.get("role")
        if kind in _RESULT_TYPES:
            yield _failed(item.get("output"), None)
        elif role == "tool":  # Chat Completions
            yield _failed(item.get("content"), None)
        elif role == "user":
            content = item.get("content")
            blocks = content if isinstance(content, list) else [content]
            results = [b for b in blocks if isinstance(b, dict) and b.get("type") in _RESULT_TYPES]
            if len(results) < len(blocks):  # the user wrote something: a new turn
                yield None
                return
            for block in reversed(results):
                flag = block.get("is_error")
                yield _failed(block.get("content"), flag if isinstance(flag, bool) else None)


def _failed(output: Any, flagged: bool | None) -> bool:
    """A tool result's own ``is_error`` decides when the client sends one (Claude Code does); else its text."""
    if flagged is not None:
        return flagged
    text = _text(output)
    if len(text) > 2 * _SCAN_CHARS:
        text = text[:_SCAN_CHARS] + "\n" + text[-_SCAN_CHARS:]
    low = text.lower()
    return any(key in low and (pattern is None or pattern.search(low)) for key, pattern in _FAILURE_CHECKS)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return ""


# -- the model's and the user's words --------------------------------------------------------------


def _latest_assistant_gives_up(items: list[Any]) -> bool:
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "assistant":
            text = _text(item.get("content"))
            if text:
                return bool(_GIVES_UP.search(text[-_SCAN_CHARS:]))
    return False


def user_texts(items: list[Any]) -> list[str]:
    """The text of each message the user wrote (tool results are not the user's words), oldest first."""
    texts = []
    for item in items:
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            words = [
                str(b.get("text", ""))
                for b in content
                if isinstance(b, dict) and b.get("type") in ("text", "input_text") and not _is_reminder(b)
            ]
            if words:
                texts.append("\n".join(words))
    return texts


def _is_reminder(block: dict[str, Any]) -> bool:
    """Claude Code and Codex add system reminders and environment context as user text blocks."""
    text = str(block.get("text", "")).lstrip()
    return text.startswith(("<system-reminder>", "<environment_context>", "<user_instructions>", "# AGENTS.md"))


def _user_asks_again(items: list[Any]) -> bool:
    if not items or not isinstance(items[-1], dict) or items[-1].get("role") != "user":
        return False
    if not user_texts(items[-1:]):  # tool results, not the user's words
        return False
    texts = user_texts(items)
    if len(texts) < 2:
        return False
    newest = _words(texts[-1])
    if len(newest) < 4:  # "yes", "go on": not a question asked again
        return False
    return any(_similar(newest, _words(earlier)) for earlier in texts[-4:-1])


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()[:_SCAN_CHARS]))


def _similar(a: set[str], b: set[str]) -> bool:
    return bool(a and b) and len(a & b) / len(a | b) >= 0.8
