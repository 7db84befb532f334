"""Turn boundaries: is this request the start of a new user turn, or a step inside an agent's turn?

Inside a turn an agent sends its tool results back (Anthropic ``tool_result`` blocks, Chat ``tool``
messages, Responses ``function_call_output`` items); a new turn ends with a user message that
has text or images of its own. Switching model only at a new turn keeps the prompt cache of the
steps in between.
"""

from __future__ import annotations

from typing import Any

_TOOL_RESULT_BLOCKS = frozenset(
    {"tool_result", "function_call_output", "custom_tool_call_output", "mcp_tool_result", "web_search_tool_result"}
)


def at_turn_boundary(body: dict[str, Any], api: str) -> bool:
    if api == "openai.responses":
        items = body.get("input")
        if isinstance(items, str) or not items:
            return True
        return _is_user_turn(items[-1])
    messages = body.get("messages")
    for message in reversed(messages) if isinstance(messages, list) else ():  # the newest non-system message
        if isinstance(message, dict) and message.get("role") != "system":
            return _is_user_turn(message)
    return True


def _is_user_turn(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    if item.get("type") in _TOOL_RESULT_BLOCKS or item.get("role") != "user":
        return False
    content = item.get("content")
    if isinstance(content, list):
        return any(isinstance(b, dict) and b.get("type") not in _TOOL_RESULT_BLOCKS for b in content)
    return True
