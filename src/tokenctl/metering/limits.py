"""What known models can do, from their providers' documentation: the most output tokens they write in one
answer, and whether they have Anthropic's web search server tool.

A translation to an API that requires an output limit (Anthropic Messages) uses the budget's own assumption
(``enforcement.default_max_output_tokens``) when the client sets none, never more than the model allows: the
request then cannot write more than its reservation covered. Newer or unknown models are not listed.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

# Longest pattern first wins; names as sent upstream (dated snapshots match their family).
OUTPUT_LIMITS: tuple[tuple[str, int], ...] = (
    ("claude-3-haiku*", 4_096),
    ("claude-3-opus*", 4_096),
    ("claude-3-sonnet*", 4_096),
    ("claude-3-5-*", 8_192),
    ("claude-3-7-sonnet*", 64_000),
    ("claude-opus-4-0*", 32_000),
    ("claude-opus-4-1*", 32_000),
    ("claude-opus-4-2025*", 32_000),
    ("claude-opus-4", 32_000),
    ("claude-opus-4-5*", 64_000),
    ("claude-sonnet-4*", 64_000),
    ("claude-haiku-4*", 64_000),
)


def known_output_limit(model: str) -> int | None:
    matches = [(len(pattern), limit) for pattern, limit in OUTPUT_LIMITS if fnmatchcase(model, pattern)]
    return max(matches)[1] if matches else None


def output_limit_for(model: str, assumed: int) -> int:
    """The output limit to send when the client set none: what budgets assumed, within the model's own."""
    known = known_output_limit(model)
    return min(assumed, known) if known else assumed


# Anthropic's web search server tool (web_search_20250305), billed per search (genai-prices: web searches).
WEB_SEARCH_MODELS = (
    "claude-3-5-sonnet*",
    "claude-3-5-haiku*",
    "claude-3-7-sonnet*",
    "claude-sonnet-4*",
    "claude-opus-4*",
    "claude-haiku-4*",
    "claude-sonnet-5*",
    "claude-opus-5*",
    "claude-haiku-5*",
)
WEB_SEARCHES_PER_REQUEST = 5  # max_uses tokenctl sets when it offers the tool: bounds what one request spends


def has_web_search(model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in WEB_SEARCH_MODELS)
