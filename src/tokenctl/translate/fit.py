"""A translated Chat Completions body, fitted to what the provider that receives it accepts.

OpenAI takes ``user``, ``reasoning_effort`` and system messages anywhere in the conversation; many local servers
(llama.cpp, vLLM chat templates, Ollama) reject the first two or a system message after the first turn. What a
provider accepts is its ``chat_fields`` setting (default: all for ``openai``, none for ``openai-compatible``).
"""

from __future__ import annotations

from typing import Any

OPTIONAL_FIELDS = ("user", "reasoning_effort", "system_anywhere")


def fit_chat(body: dict[str, Any], accepts: frozenset[str]) -> list[str]:
    """Drop or move what the provider does not accept, in place; returns what was changed (for the ledger)."""
    changed = [f"{name} dropped" for name in ("user", "reasoning_effort") if name in body and name not in accepts]
    for name in ("user", "reasoning_effort"):
        if name not in accepts:
            body.pop(name, None)
    if "system_anywhere" not in accepts and _system_after_start(body.get("messages")):
        body["messages"] = _systems_first(body["messages"])
        changed.append("system messages moved to the start")
    return changed


def _system_after_start(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    seen_other = False
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system" and seen_other:
            return True
        seen_other = seen_other or role != "system"
    return False


def _systems_first(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One system message at the start with every system text in order; the rest of the conversation as it was."""
    systems = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    text = "\n\n".join(m["content"] if isinstance(m.get("content"), str) else "" for m in systems).strip()
    return ([{"role": "system", "content": text}] if text else []) + rest
