"""What known models can do, from their providers' documentation: the most output tokens they write in one
answer, and whether they have Anthropic's web search server tool.

A request that sets no output limit can write up to the model's own: budgets reserve for that, and a
translation to an API that requires a limit (Anthropic Messages) sends that, so the request cannot write more
than its reservation covered. Models not listed (newer, self-hosted) are assumed to stop at
``enforcement.default_max_output_tokens``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache

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
    ("gpt-3.5-turbo*", 4_096),
    ("gpt-4o*", 16_384),
    ("gpt-4.1*", 32_768),
    ("gpt-5*", 128_000),
    ("o1*", 100_000),
    ("o3*", 100_000),
    ("o4-mini*", 100_000),
)


@lru_cache(maxsize=4096)  # once per model name, not per request
def known_output_limit(model: str) -> int | None:
    matches = [(len(pattern), limit) for pattern, limit in OUTPUT_LIMITS if fnmatchcase(model, pattern)]
    return max(matches)[1] if matches else None


def output_limit_for(model: str, default: int) -> int:
    """The most a request that sets no output limit can write: the model's own limit when it is known, else
    ``default`` (``enforcement.default_max_output_tokens``). Budgets reserve for this many output tokens, and a
    translation to an API that needs a limit sends this one, so the two always agree."""
    return known_output_limit(model) or default


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


@lru_cache(maxsize=4096)
def has_web_search(model: str) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in WEB_SEARCH_MODELS)
