"""A request's worst-case cost, known before it is sent: what budgets reserve and approvals compare.

Input tokens are estimated from the body size (one token per 3 bytes: JSON, code and tool schemas
tokenize denser than prose's ~4), priced at the higher of the input and cache-write prices.
Output is the request's own limit (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``),
else the model's real one, else ``default_max_output_tokens``, at the output price; web searches the provider may run are priced at
their most (``web_searches``). The total is capped by
``reservation_ceiling_usd``: a request that ends up costing more than its reservation settles its
actual cost, so a hard cap can be passed by at most (actual − reserved) of the last admitted request.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tokenctl.metering.limits import WEB_SEARCHES_PER_REQUEST, known_output_limit
from tokenctl.metering.pricing import PriceBook
from tokenctl.types import Route

BYTES_PER_TOKEN = 3
_OUTPUT_FIELDS = {
    "anthropic.messages": ("max_tokens",),
    "openai.chat": ("max_completion_tokens", "max_tokens"),
    "openai.responses": ("max_output_tokens",),
}


def input_tokens(body_size: int) -> int:
    return body_size // BYTES_PER_TOKEN + 1


def output_limit(body: dict[str, Any], api: str, default: int, model: str | None = None) -> int:
    """The most output the request can produce: its own limit, else the model's (``metering/limits.py``), else
    ``default``; never more than the model allows; times Chat's ``n`` choices."""
    known = known_output_limit(model) if model else None
    limit = 0 if api == "anthropic.count_tokens" else known or default
    for name in _OUTPUT_FIELDS.get(api, ()):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            limit = min(value, known) if known else value
            break
    choices = body.get("n") if api == "openai.chat" else None
    if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
        limit *= choices  # each choice is billed its own output
    return limit


_SERVER_STATE = ("previous_response_id", "conversation")  # Responses: context the provider holds


def input_unknown(body: dict[str, Any], api: str) -> bool:
    """Input the body does not show: server-held context, or documents and images the provider fetches by URL
    or file id. Such a request reserves the stated worst case (``reservation_ceiling_usd``)."""
    if api == "openai.responses" and any(body.get(k) for k in _SERVER_STATE):
        return True
    turns = body.get("messages") if api != "openai.responses" else body.get("input")
    if not isinstance(turns, list):
        return False
    for turn in turns:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list) and any(_fetched(part) for part in content if isinstance(part, dict)):
            return True
    return False


def _fetched(part: dict[str, Any]) -> bool:
    source = part.get("source")
    if isinstance(source, dict) and source.get("type") in ("url", "file"):  # Anthropic image/document
        return True
    if part.get("file_id") or part.get("file_url"):  # Responses input_file / input_image, Chat file
        return True
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    return isinstance(url, str) and not url.startswith("data:")  # a link, not inline bytes


UNBOUNDED_SEARCHES = 10  # assumed for an Anthropic web search tool without max_uses


def web_searches(body: dict[str, Any], api: str) -> int:
    """The most web searches the request can have the provider run (each billed): Anthropic's web search
    server tool (its ``max_uses``), a live Responses ``web_search`` tool (tokenctl sets ``max_uses`` to
    ``WEB_SEARCHES_PER_REQUEST`` when it translates one for Claude), Chat's ``web_search_options`` (one)."""
    if api == "openai.chat":
        return 1 if body.get("web_search_options") is not None else 0
    tools = list(body.get("tools") or []) if isinstance(body.get("tools"), list) else []
    if api == "openai.responses" and isinstance(body.get("input"), list):
        for item in body["input"]:
            if isinstance(item, dict) and item.get("type") == "additional_tools":
                tools += item.get("tools") or []
    most = 0
    for tool in tools:
        kind = str(tool.get("type") or "") if isinstance(tool, dict) else ""
        if api == "anthropic.messages" and kind.startswith("web_search_"):
            uses = tool.get("max_uses")
            most += uses if isinstance(uses, int) and not isinstance(uses, bool) and uses > 0 else UNBOUNDED_SEARCHES
        elif (
            api == "openai.responses" and kind.startswith("web_search") and tool.get("external_web_access") is not False
        ):
            most += WEB_SEARCHES_PER_REQUEST
    return most


def requested_tier(body: dict[str, Any], api: str) -> str | None:
    """The OpenAI service tier the request asks for (``priority`` costs more): its worst case is priced so."""
    tier = body.get("service_tier") if api.startswith("openai.") else None
    return tier if isinstance(tier, str) else None


def audio(body: dict[str, Any], api: str) -> tuple[bool, bool]:
    """(audio in the input, audio asked for in the output): Chat ``input_audio`` parts, ``modalities``."""
    if api != "openai.chat":
        return False, False
    wants = isinstance(body.get("modalities"), list) and "audio" in body["modalities"]
    sends = any(
        isinstance(part, dict) and part.get("type") == "input_audio"
        for message in body.get("messages") or []
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )
    return sends, wants


def worst_case_cost(
    prices: PriceBook,
    route: Route,
    in_tokens: int,
    out_tokens: int,
    searches: int = 0,
    tier: str | None = None,
    audio_io: tuple[bool, bool] = (False, False),
) -> Decimal:
    """USD; 0 for an unpriced model without a stand-in (the enforcer refuses those under a blocking budget).
    ``audio_io``: price the input, the output as audio (dearer than text on the models that take it)."""
    rates = prices.worst_rates(route.provider, route.upstream_model, in_tokens, tier, audio_io)
    return rates.cost(in_tokens, out_tokens, searches)
