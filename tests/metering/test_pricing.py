"""Costs: hand-computed figures, agreement with genai-prices, the override file and its errors."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price, data_snapshot

from tokenctl.config import ProviderConfig
from tokenctl.metering import usage as extract
from tokenctl.metering.pricing import PriceBook, PriceFileError
from tokenctl.types import Usage


def provider(name: str, kind: str = "anthropic", pricing: str | None = "anthropic") -> ProviderConfig:
    return ProviderConfig(
        name=name, kind=kind, base_url="http://x", api_key_env=None, models=("*",), pricing_provider=pricing
    )


ANTHROPIC = provider("anthropic")
OPENAI = provider("openai", "openai", "openai")


def test_anthropic_cache_read_and_write_hand_computed() -> None:
    # usage-and-pricing.md: claude-sonnet-4-20250514, 10k uncached + 50k read + 2k write, 1k output → $0.0675
    usage = extract.from_anthropic(
        {
            "input_tokens": 10_000,
            "cache_read_input_tokens": 50_000,
            "cache_creation_input_tokens": 2_000,
            "output_tokens": 1_000,
        }
    )
    assert usage.input_total == 62_000
    assert PriceBook().cost(ANTHROPIC, "claude-sonnet-4-20250514", usage).total == Decimal("0.0675")


def test_anthropic_5m_and_1h_cache_writes_priced_separately() -> None:
    # claude-opus-4-1: $15 in, $75 out, read $1.50, 5m write $18.75, 1h write $30 → $0.25875
    usage = extract.from_anthropic(
        {
            "input_tokens": 1_000,
            "cache_read_input_tokens": 20_000,
            "cache_creation_input_tokens": 7_000,
            "cache_creation": {"ephemeral_5m_input_tokens": 3_000, "ephemeral_1h_input_tokens": 4_000},
            "output_tokens": 500,
        }
    )
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (3_000, 4_000)
    assert PriceBook().cost(ANTHROPIC, "claude-opus-4-1", usage).total == Decimal("0.25875")


def test_openai_cached_input_and_reasoning_hand_computed() -> None:
    usage = extract.from_openai_chat(
        {"prompt_tokens": 1_000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 200}}
    )
    assert PriceBook().cost(OPENAI, "gpt-4o", usage).total == Decimal("0.00325")
    reasoning = extract.from_openai_responses(
        {
            "input_tokens": 2_000,
            "input_tokens_details": {"cached_tokens": 1_000},
            "output_tokens": 500,
            "output_tokens_details": {"reasoning_tokens": 300},
        }
    )
    assert (reasoning.output_tokens, reasoning.reasoning_tokens) == (500, 300)  # never added twice
    assert PriceBook().cost(OPENAI, "o3", reasoning).total == Decimal("0.0065")


def test_long_context_tier_prices_the_whole_request() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=1_000)  # sonnet 4.5 above 200k: $6 / $22.50
    assert PriceBook().cost(ANTHROPIC, "claude-sonnet-4-5", usage).total == Decimal("1.8225")


def test_matches_genai_prices_for_every_anthropic_and_openai_model() -> None:
    rng = random.Random(7)
    book = PriceBook()
    checked = 0
    for pid, prov in (("anthropic", ANTHROPIC), ("openai", OPENAI)):
        models = next(p for p in data_snapshot.get_snapshot().providers if p.id == pid).models
        for model in models:
            for _ in range(3):
                u = Usage(
                    input_tokens=rng.randint(0, 300_000),
                    cache_read_tokens=rng.choice([0, rng.randint(1, 90_000)]),
                    cache_write_5m_tokens=rng.choice([0, rng.randint(1, 5_000)]),
                    cache_write_1h_tokens=rng.choice([0, rng.randint(1, 5_000)]),
                    output_tokens=rng.randint(0, 30_000),
                )
                u.reasoning_tokens = rng.randint(0, u.output_tokens)
                u.audio_input_tokens = rng.choice([0, rng.randint(0, u.input_tokens)])  # of the uncached input
                u.audio_output_tokens = rng.choice([0, rng.randint(0, u.output_tokens - u.reasoning_tokens)])
                theirs = GenaiUsage(
                    input_tokens=u.input_total,
                    cache_read_tokens=u.cache_read_tokens,
                    cache_write_tokens=u.cache_write_tokens,
                    cache_write_1h_tokens=u.cache_write_1h_tokens,
                    output_tokens=u.output_tokens,
                    output_reasoning_tokens=u.reasoning_tokens,
                    input_audio_tokens=u.audio_input_tokens,
                    output_audio_tokens=u.audio_output_tokens,
                    cache_audio_read_tokens=0,  # tokenctl's audio input is uncached audio
                )
                try:
                    expected = calc_price(theirs, model.id, provider_id=pid).total_price
                except LookupError:
                    continue
                assert book.cost(prov, model.id, u).total == expected, model.id
                checked += 1
    assert checked > 300


def write(tmp_path, text: str) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return str(path)


def test_override_discount_per_token_and_gpu_hour(tmp_path) -> None:
    book = PriceBook.from_file(
        write(
            tmp_path,
            """
models:
  - {match: "claude-sonnet-*", provider: anthropic, discount: 0.2}
  - {match: "llama*", provider: vllm, input_per_mtok: 0.1, output_per_mtok: 0.4}
  - {match: "qwen3-32b", gpu_hour_usd: 3.60, input_tokens_per_second: 10000, output_tokens_per_second: 1000}
""",
        )
    )
    discounted = book.cost(ANTHROPIC, "claude-sonnet-4-5", Usage(input_tokens=100_000, output_tokens=100_000))
    assert (discounted.list_total, discounted.total) == (Decimal("1.8"), Decimal("1.44"))  # 0.3 + 1.5, 20% off
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert book.cost(provider("vllm", "openai-compatible", None), "llama-3.1-70b", usage).total == Decimal("0.5")
    # $3.60/h = $0.001/s; 1M input at 10k tok/s = 100 s = $0.10; 1M output at 1k tok/s = 1000 s = $1.00
    assert book.cost(provider("gpu", "openai-compatible", None), "qwen3-32b", usage).total == Decimal("1.1")
    assert "overrides" in book.version


def test_unknown_model_is_recorded_unpriced_not_silently_zero() -> None:
    cost = PriceBook().cost(
        provider("local", "openai-compatible", None), "my-finetune", Usage(input_tokens=10, output_tokens=5)
    )
    assert (cost.priced, cost.is_estimate, cost.total, cost.source) == (False, True, Decimal(0), "unpriced")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: [{match: x, discount: 1.5}]", "discount"),
        ("models: [{match: x, input_per_mtok: 1}]", "output_per_mtok"),
        ("models: [{match: x, input_per_mtok: -1, output_per_mtok: 1}]", "non-negative"),
        ("models: [{match: x, input_per_mtok: abc, output_per_mtok: 1}]", "number"),
        ("models: [{match: x, gpu_hour_usd: 2}]", "tokens_per_second"),
        ("models: [{match: x, gpu_hour_usd: 2, tokens_per_second: 0}]", "greater than zero"),
        ("models: [{match: x}]", "exactly one"),
        ("models: [{discount: 0.1}]", "match"),
        ("models: [{match: x, discont: 0.1}]", "unknown field"),
        ("models: {oops", "not valid YAML"),
    ],
)
def test_malformed_override_file_is_rejected_with_a_clear_error(tmp_path, text: str, fragment: str) -> None:
    with pytest.raises(PriceFileError, match=fragment):
        PriceBook.from_file(write(tmp_path, text))


def test_audio_tokens_are_priced_as_audio() -> None:
    """gpt-audio: text at $2.50/$10, audio at $32/$64 per million. OpenAI reports audio inside prompt and
    completion tokens (``*_tokens_details.audio_tokens``); recorded as text they cost a tenth of the bill."""
    from tokenctl.metering.usage import from_openai_chat

    raw = {
        "prompt_tokens": 2000,
        "completion_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 1800},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 1200},
    }
    usage = from_openai_chat(raw)
    assert (usage.audio_input_tokens, usage.audio_output_tokens) == (1800, 1200)
    cost = PriceBook().cost(OPENAI, "gpt-audio", usage).total
    expected = (200 * Decimal("2.5") + 1800 * Decimal(32) + 300 * Decimal(10) + 1200 * Decimal(64)) / 10**6
    assert cost == expected  # $0.1375; as text it would have been $0.02


def test_worst_case_rates_equal_the_full_price_of_every_way_the_input_may_be_billed(tmp_path: Any) -> None:
    """The enforcer prices a worst case once, as linear rates at the request's input size: each amount must be
    what ``cost`` charges for the dearest of plain input, 5-minute and 1-hour cache writes (tiers, service
    tiers, audio, override prices and discounts, the unpriced stand-in included)."""
    overrides = tmp_path / "prices.yaml"
    overrides.write_text(
        "models:\n"
        '  - {match: "my-local-*", input_per_mtok: 0.5, output_per_mtok: 1.5, cache_write_per_mtok: 0.7}\n'
        '  - {match: "claude-haiku-4-5", discount: 0.2}\n'
        '  - {match: "qwen3-32b", gpu_hour_usd: 2.40, input_tokens_per_second: 12000, output_tokens_per_second: 900}\n'
    )
    books = [PriceBook.from_file(str(overrides)), PriceBook.from_file(str(overrides), "claude-sonnet-4-5")]
    models = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "claude-sonnet-4", "gpt-5-mini", "gpt-4o"]
    models += ["gpt-audio", "o3", "my-local-x", "qwen3-32b", "unknown-model"]
    rnd = random.Random(7)
    checked = 0
    for book in books:
        for where in (ANTHROPIC, OPENAI):
            for model in models:
                for _ in range(12):
                    tokens = rnd.choice([0, 1, 999, 199_999, 200_000, 200_001, 1_000_000, rnd.randint(0, 400_000)])
                    out = rnd.choice([0, 32, 64_000, rnd.randint(0, 200_000)])
                    searches, tier = rnd.choice([0, 5]), rnd.choice([None, "priority", "flex"])
                    audio_io = (rnd.random() < 0.5, rnd.random() < 0.5)
                    full = max(
                        book.cost(where, model, _worst_usage(kind, tokens, out, searches, audio_io), tier).total
                        for kind in ("input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens")
                    )
                    rates = book.worst_rates(where, model, tokens, tier, audio_io)
                    assert rates.cost(tokens, out, searches) == full, (where.name, model, tokens, out, tier, audio_io)
                    checked += full > 0
    assert checked > 300  # most cases are priced: the comparison is not between zeros


def _worst_usage(kind: str, tokens: int, out: int, searches: int, audio_io: tuple[bool, bool]) -> Usage:
    audio_in = tokens if audio_io[0] and kind == "input_tokens" else 0
    return Usage(
        output_tokens=out,
        web_search_requests=searches,
        audio_input_tokens=audio_in,
        audio_output_tokens=out if audio_io[1] else 0,
        **{kind: tokens},
    )
