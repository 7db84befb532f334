"""Attribution beyond the key: which tool sent the request, which session, which free-form tags.

Signals (see docs/attribution.md):
- tool: the User-Agent (``claude-cli/…`` Claude Code, ``codex_exec/…``/``codex-tui``/``codex_cli_rs``
  Codex, ``Cursor``, the official SDKs' ``Anthropic/Python`` / ``OpenAI/Python`` / ``…/JS``), and Codex's
  ``originator`` header;
- session: ``x-claude-code-session-id``, the JSON string in Anthropic ``metadata.user_id``
  (``{"device_id", "account_uuid", "session_id"}``, or the older ``user_<hash>_account_…_session_<uuid>``
  form), Codex's ``session-id`` header;
- tags: ``k=v`` pairs, comma-separated, in the tags header (default ``x-tokenctl-tags``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson

from tokenctl.text import header_text
from tokenctl.types import Attribution

_UA_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"claude-cli/([\w.\-]+)"), "claude-code"),
    (re.compile(r"codex[_-](?:exec|tui|cli_rs)/([\w.\-]+)"), "codex"),
    (re.compile(r"cursor/?([\w.\-]*)", re.I), "cursor"),
    (re.compile(r"(?:Async)?Anthropic/Python ([\w.\-]+)"), "anthropic-sdk-python"),
    (re.compile(r"(?:Async)?OpenAI/Python ([\w.\-]+)"), "openai-sdk-python"),
    (re.compile(r"Anthropic/JS ([\w.\-]+)"), "anthropic-sdk-js"),
    (re.compile(r"OpenAI/JS ([\w.\-]+)"), "openai-sdk-js"),
)
_LEGACY_USER_ID = re.compile(r"user_([0-9a-f]+)_account_([\w-]*)_session_([\w-]+)")
_MAX_TAGS = 20
_MAX_TAG_LEN = 100


@lru_cache(maxsize=1024)  # a fleet sends a handful of User-Agents: matched once each, not per request
def detect_tool(user_agent: str, originator: str | None = None) -> tuple[str, str | None]:
    """(tool, version) from the User-Agent; 'other' when nothing matches."""
    if originator and originator.startswith("codex"):
        match = re.search(r"/([\w.\-]+)", user_agent)
        return "codex", match.group(1) if match else None
    for pattern, tool in _UA_RULES:
        match = pattern.search(user_agent)
        if match:
            return tool, match.group(1) or None
    return "other", None


def parse_claude_user_id(value: Any) -> tuple[str | None, str | None]:
    """(device_id, session_id) from Anthropic ``metadata.user_id`` as Claude Code sends it."""
    if not isinstance(value, str) or not value:
        return None, None
    if value.startswith("{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, None
        if isinstance(parsed, dict):
            device, session = parsed.get("device_id"), parsed.get("session_id")
            return (
                device if isinstance(device, str) and device else None,
                session if isinstance(session, str) and session else None,
            )
        return None, None
    legacy = _LEGACY_USER_ID.search(value)
    if legacy:
        return legacy.group(1), legacy.group(3)
    return None, None


def parse_tags(header: str | None) -> dict[str, str]:
    """``team=payments, ticket=PAY-12`` → dict; bare words become ``word=""``; bounded in count and length."""
    if not header:
        return {}
    tags: dict[str, str] = {}
    for part in header.split(","):
        if len(tags) >= _MAX_TAGS:
            break
        key, _, value = part.partition("=")
        key = key.strip()[:_MAX_TAG_LEN]
        if key:
            tags[key] = value.strip()[:_MAX_TAG_LEN]
    return tags


def attribute(headers: Any, body: dict[str, Any], tags_header: str) -> Attribution:
    """Build the attribution from request headers (a case-insensitive mapping) and the parsed body."""
    user_agent = header_text(headers.get("user-agent"), 512) or ""
    tool, version = detect_tool(user_agent, header_text(headers.get("originator"), 64))
    device_id = None
    session_id = header_text(headers.get("x-claude-code-session-id"), 200) or header_text(
        headers.get("session-id"), 200
    )
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        device_id, meta_session = parse_claude_user_id(metadata.get("user_id"))
        session_id = session_id or meta_session
    return Attribution(
        tool=tool,
        tool_version=version[:64] if version else None,
        session_id=session_id[:200] if session_id else None,
        device_id=device_id[:200] if device_id else None,
        tags=parse_tags(header_text(headers.get(tags_header), 4096)),
    )
