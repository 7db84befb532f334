"""Cross-dialect serving: each supported (client API, provider API) pair and how to translate it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from tokenctl.translate import anthropic_to_chat, chat_to_anthropic, responses_to_anthropic, responses_to_chat
from tokenctl.translate.responses_tools import ResponsesTools


class StreamTranslator(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def finish(self, usage: dict[str, Any] | None, estimate: tuple[int, int] = ...) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Translation:
    # (client body, upstream model, output limit when the client sets none) -> (body, what was dropped)
    request: Callable[[dict[str, Any], str, int], tuple[dict[str, Any], list[str]]]
    # (provider answer, the request's stream translator: what the answer needs from the request) -> answer
    response: Callable[[dict[str, Any], StreamTranslator], dict[str, Any]]
    stream: Callable[[int, dict[str, Any]], StreamTranslator]  # (estimated input tokens, client body)


TRANSLATIONS = {
    ("anthropic.messages", "openai.chat"): Translation(
        lambda body, model, limit: anthropic_to_chat.translate_request(body, model),  # Anthropic sets a limit
        lambda answer, translator: anthropic_to_chat.translate_response(answer),
        lambda estimated, body: anthropic_to_chat.StreamTranslator(estimated),
    ),
    ("openai.chat", "anthropic.messages"): Translation(
        chat_to_anthropic.translate_request,
        lambda answer, translator: chat_to_anthropic.translate_response(answer),
        lambda estimated, body: chat_to_anthropic.StreamTranslator(estimated, _include_usage(body)),
    ),
    ("openai.responses", "anthropic.messages"): Translation(
        responses_to_anthropic.translate_request,
        lambda answer, translator: responses_to_anthropic.translate_response(answer, _tools(translator)),
        lambda estimated, body: responses_to_anthropic.StreamTranslator(estimated, body),
    ),
    ("openai.responses", "openai.chat"): Translation(
        responses_to_chat.translate_request,
        lambda answer, translator: responses_to_chat.translate_response(answer, _tools(translator)),
        lambda estimated, body: responses_to_chat.StreamTranslator(estimated, body),
    ),
}


def _tools(translator: StreamTranslator) -> ResponsesTools:
    return cast(ResponsesTools, getattr(translator, "tools", None) or ResponsesTools())


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
