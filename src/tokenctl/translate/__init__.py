"""Cross-dialect serving: each supported (client API, provider API) pair and how to translate it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tokenctl.translate import anthropic_to_chat, chat_to_anthropic, responses_to_anthropic


class StreamTranslator(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = ...) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Translation:
    request: Callable[[dict[str, Any], str], tuple[dict[str, Any], list[str]]]
    response: Callable[[dict[str, Any]], dict[str, Any]]
    stream: Callable[[int, dict[str, Any]], StreamTranslator]  # (estimated input tokens, client body)


TRANSLATIONS = {
    ("anthropic.messages", "openai.chat"): Translation(
        anthropic_to_chat.translate_request,
        anthropic_to_chat.translate_response,
        lambda estimated, body: anthropic_to_chat.StreamTranslator(estimated),
    ),
    ("openai.chat", "anthropic.messages"): Translation(
        chat_to_anthropic.translate_request,
        chat_to_anthropic.translate_response,
        lambda estimated, body: chat_to_anthropic.StreamTranslator(estimated, _include_usage(body)),
    ),
    ("openai.responses", "anthropic.messages"): Translation(
        responses_to_anthropic.translate_request,
        responses_to_anthropic.translate_response,
        lambda estimated, body: responses_to_anthropic.StreamTranslator(estimated),
    ),
}


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
