"""Prices: genai-prices (pinned, bundled, offline) plus an override file.

genai-prices' own ``calc_price`` costs ~60 µs a call, too much for the request
path, so each model's price is *compiled* once per minute (prices can depend on
date and time of day) into a ``TokenPrices`` record and applied with a few
Decimal operations. ``tests/metering/test_pricing.py`` checks that the result
equals ``genai_prices.calc_price`` for every Anthropic and OpenAI model.

Override file (YAML), rules tried in order, first match wins::

    models:
      - match: "claude-*"            # glob on the model name sent upstream
        provider: anthropic          # optional: a tokenctl provider name
        discount: 0.12               # negotiated: effective = list x (1 - 0.12)
      - match: "llama3.1:8b"
        provider: ollama
        input_per_mtok: 0.05         # USD per million tokens
        output_per_mtok: 0.10
      - match: "qwen3-32b"
        provider: vllm
        gpu_hour_usd: 2.40           # a GPU-hour spread over measured throughput
        input_tokens_per_second: 12000
        output_tokens_per_second: 900
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from tokenctl.config import ProviderConfig
from tokenctl.types import Cost, Usage

log = logging.getLogger("tokenctl.pricing")

GENAI_PRICES_SOURCE = f"genai-prices {genai_prices.__version__}"
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1000)
_ZERO = Decimal(0)
_SECONDS_PER_HOUR = Decimal(3600)


class PriceFileError(ValueError):
    """The override file is invalid; the message names the rule and field."""


Price = Decimal | TieredPrices | None


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """USD per million tokens (per thousand for searches and requests); ``None`` = not priced separately."""

    input: Price
    output: Price
    cache_read: Price = None
    cache_write: Price = None
    cache_write_1h: Price = None
    output_reasoning: Price = None
    web_searches_k: Price = None
    requests_k: Price = None
    input_audio: Price = None
    output_audio: Price = None

    def cost(self, usage: Usage) -> Decimal:
        """Apply genai-prices' leaf rules: a token type without its own price is charged as its parent."""
        total_in = usage.input_total
        read = usage.cache_read_tokens if self.cache_read is not None else 0
        write_1h = usage.cache_write_1h_tokens if self.cache_write_1h is not None else 0
        write = (usage.cache_write_tokens - write_1h) if self.cache_write is not None else 0
        uncached = total_in - read - write - write_1h
        reasoning = usage.reasoning_tokens if self.output_reasoning is not None else 0
        audio_in = min(usage.audio_input_tokens, uncached) if self.input_audio is not None else 0
        audio_out = (
            min(usage.audio_output_tokens, usage.output_tokens - reasoning) if self.output_audio is not None else 0
        )
        output = usage.output_tokens - reasoning - audio_out
        per_m = _at(self.input, total_in) * (uncached - audio_in) + _at(self.output, total_in) * output
        for price, tokens in (
            (self.input_audio, audio_in),
            (self.cache_read, read),
            (self.cache_write, write),
            (self.cache_write_1h, write_1h),
            (self.output_reasoning, reasoning),
            (self.output_audio, audio_out),
        ):
            if tokens:  # most requests have none of most kinds: nothing to look up or multiply
                per_m += _at(price, total_in) * tokens
        per_k = _at(self.requests_k, total_in)
        if usage.web_search_requests:
            per_k += _at(self.web_searches_k, total_in) * usage.web_search_requests
        return per_m / _MILLION + per_k / _THOUSAND

    def worst_rates(self, total_in: int, audio_io: tuple[bool, bool]) -> WorstRates:
        """The prices a worst case is computed with at ``total_in`` input tokens (long-context tiers applied):
        the dearest way the input may be billed (plain, audio, 5-minute or 1-hour cache writes, each charged as
        its parent when it has no price of its own, as ``cost`` does) and the output's price."""
        plain = self.input_audio if audio_io[0] and self.input_audio is not None else self.input
        write = self.cache_write if self.cache_write is not None else self.input
        write_1h = self.cache_write_1h if self.cache_write_1h is not None else write
        output = self.output_audio if audio_io[1] and self.output_audio is not None else self.output
        return WorstRates(
            max(_at(plain, total_in), _at(write, total_in), _at(write_1h, total_in)),
            _at(output, total_in),
            _at(self.web_searches_k, total_in),
            _at(self.requests_k, total_in),
        )


@dataclass(frozen=True, slots=True)
class WorstRates:
    """USD per million input and output tokens, per thousand searches and requests, for one request's worst
    case: its cost is linear in the tokens, so it is priced once and each amount is a few multiplications."""

    input_m: Decimal
    output_m: Decimal
    searches_k: Decimal
    requests_k: Decimal

    def cost(self, in_tokens: int, out_tokens: int, searches: int) -> Decimal:
        per_m = self.input_m * in_tokens + self.output_m * out_tokens
        return per_m / _MILLION + (self.searches_k * searches + self.requests_k) / _THOUSAND

    def scaled(self, factor: Decimal) -> WorstRates:
        return WorstRates(
            self.input_m * factor, self.output_m * factor, self.searches_k * factor, self.requests_k * factor
        )


NO_PRICE = WorstRates(_ZERO, _ZERO, _ZERO, _ZERO)


def _at(price: Price, total_input: int) -> Decimal:
    if price is None:
        return _ZERO
    if isinstance(price, Decimal):
        return price
    applicable = price.base
    for tier in reversed(price.tiers):
        if total_input > tier.start:
            applicable = tier.price
            break
    return applicable


_GENAI_KEYS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_reasoning_mtok": "output_reasoning",
    "web_searches_kcount": "web_searches_k",
    "requests_kcount": "requests_k",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
}


def _priced_tier(service_tier: str | None) -> str | None:
    """The tier to price at: None (the standard price) for no tier, ``default`` or ``auto``."""
    if not isinstance(service_tier, str) or service_tier in ("default", "auto", ""):
        return None
    return service_tier


def compile_genai_price(model_price: Any) -> TokenPrices:
    """Keep the price keys tokenctl reports usage for (text, caching, reasoning, audio, searches); others
    (images…) are charged at their parent's price."""
    fields = {ours: getattr(model_price, theirs, None) for theirs, ours in _GENAI_KEYS.items()}
    return TokenPrices(**fields)


@dataclass(frozen=True, slots=True)
class OverrideRule:
    match: str
    provider: str | None
    discount: Decimal | None = None
    prices: TokenPrices | None = None

    def applies(self, provider: str, model: str) -> bool:
        return (self.provider is None or self.provider == provider) and fnmatch.fnmatchcase(model, self.match)


def load_overrides(path: str | None) -> tuple[list[OverrideRule], str | None]:
    """Read and validate the override file; returns the rules and a short content hash."""
    if not path:
        return [], None
    p = Path(path)
    try:
        text = p.read_text()
        raw = yaml.safe_load(text) or {}
    except FileNotFoundError as exc:
        raise PriceFileError(f"price override file not found: {p}") from exc
    except yaml.YAMLError as exc:
        raise PriceFileError(f"{p}: not valid YAML: {exc}") from exc
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    if not isinstance(raw, dict) or not isinstance(raw.get("models", []), list):
        raise PriceFileError(f"{p}: expected a mapping with a 'models' list")
    return [_parse_rule(rule, i, p) for i, rule in enumerate(raw.get("models", []))], digest


_PER_MTOK_FIELDS = {
    "input_per_mtok": "input",
    "output_per_mtok": "output",
    "cache_read_per_mtok": "cache_read",
    "cache_write_per_mtok": "cache_write",
    "cache_write_1h_per_mtok": "cache_write_1h",
}
_GPU_FIELDS = {"gpu_hour_usd", "tokens_per_second", "input_tokens_per_second", "output_tokens_per_second"}


def _parse_rule(raw: Any, index: int, path: Path) -> OverrideRule:
    where = f"{path}: models[{index}]"
    if not isinstance(raw, dict):
        raise PriceFileError(f"{where}: must be a mapping")
    allowed = {"match", "provider", "discount"} | set(_PER_MTOK_FIELDS) | _GPU_FIELDS
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PriceFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    match = raw.get("match")
    if not isinstance(match, str) or not match:
        raise PriceFileError(f"{where}.match: required, a model name or glob")
    provider = raw.get("provider")
    kinds = [bool(set(raw) & {"discount"}), bool(set(raw) & set(_PER_MTOK_FIELDS)), bool(set(raw) & _GPU_FIELDS)]
    if sum(kinds) != 1:
        raise PriceFileError(f"{where}: give exactly one of discount, *_per_mtok prices, or gpu_hour_usd + throughput")
    if "discount" in raw:
        discount = _decimal(raw["discount"], f"{where}.discount")
        if discount > 1:
            raise PriceFileError(f"{where}.discount: a fraction between 0 and 1 (0.12 = 12% off)")
        return OverrideRule(match, provider, discount=discount)
    if kinds[1]:
        if "input_per_mtok" not in raw or "output_per_mtok" not in raw:
            raise PriceFileError(f"{where}: input_per_mtok and output_per_mtok are both required")
        values = {ours: _decimal(raw[k], f"{where}.{k}") for k, ours in _PER_MTOK_FIELDS.items() if k in raw}
        return OverrideRule(match, provider, prices=TokenPrices(**values))
    return OverrideRule(match, provider, prices=_gpu_prices(raw, where))


def _gpu_prices(raw: dict[str, Any], where: str) -> TokenPrices:
    if "gpu_hour_usd" not in raw:
        raise PriceFileError(f"{where}.gpu_hour_usd: required with throughput fields")
    hourly = _decimal(raw["gpu_hour_usd"], f"{where}.gpu_hour_usd")
    both = raw.get("tokens_per_second")
    tps_in = raw.get("input_tokens_per_second", both)
    tps_out = raw.get("output_tokens_per_second", both)
    if tps_in is None or tps_out is None:
        raise PriceFileError(f"{where}: give tokens_per_second, or input_ and output_tokens_per_second")

    def per_mtok(tps: Any, name: str) -> Decimal:
        rate = _decimal(tps, f"{where}.{name}")
        if rate == 0:
            raise PriceFileError(f"{where}.{name}: must be greater than zero")
        return hourly / _SECONDS_PER_HOUR / rate * _MILLION

    return TokenPrices(
        input=per_mtok(tps_in, "input_tokens_per_second"), output=per_mtok(tps_out, "output_tokens_per_second")
    )


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceFileError(f"{where}: must be a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise PriceFileError(f"{where}: must be a number (got {value!r})") from exc
    if not result.is_finite() or result < 0:
        raise PriceFileError(f"{where}: must be a finite non-negative number")
    return result


class PriceBook:
    """Turns (provider, model, usage) into a ``Cost``. Lookups are cached; warnings for unpriced models once."""

    def __init__(
        self,
        overrides: list[OverrideRule] | None = None,
        overrides_digest: str | None = None,
        unpriced_fallback: str | None = None,
    ) -> None:
        """``unpriced_fallback``: a model whose prices stand in for a model that has none (``enforcement.
        unpriced_models``); such costs are marked unpriced and estimated, with the stand-in named as source."""
        self._rules = overrides or []
        self.unpriced_fallback = unpriced_fallback
        self._snapshot = data_snapshot.get_snapshot()
        self._cache: dict[
            tuple[str, str, str | None, str | None], tuple[int, TokenPrices | None, OverrideRule | None]
        ] = {}
        self._warned: set[tuple[str, str]] = set()
        suffix = f" + overrides {overrides_digest}" if overrides_digest else ""
        self.version = GENAI_PRICES_SOURCE + suffix

    @classmethod
    def from_file(cls, path: str | None, unpriced_fallback: str | None = None) -> PriceBook:
        rules, digest = load_overrides(path)
        return cls(rules, digest, unpriced_fallback)

    def knows(self, provider: ProviderConfig, model: str) -> bool:
        """Whether the model has a price of its own (genai-prices or the override file)."""
        list_prices, rule = self._lookup(provider, model)
        return list_prices is not None or (rule is not None and rule.prices is not None)

    def cost(self, provider: ProviderConfig, model: str, usage: Usage, service_tier: str | None = None) -> Cost:
        """``service_tier``: the tier the provider served the request at (OpenAI ``priority``, ``flex``…),
        priced as genai-prices prices that tier; the standard price for ``default``/``auto``/None."""
        list_prices, rule = self._lookup(provider, model, _priced_tier(service_tier))
        if rule is not None and rule.prices is not None:
            total = rule.prices.cost(usage)
            return Cost(total=total, list_total=total, priced=True, source="override")
        if list_prices is None:
            self._warn_unpriced(provider.name, model)
            fallback = self.unpriced_fallback
            if fallback is not None and fallback != model and self.knows(provider, fallback):
                stand_in = self.cost(provider, fallback, usage)
                return Cost(
                    stand_in.total, stand_in.list_total, priced=False, source=f"priced as {fallback}", is_estimate=True
                )
            return Cost(total=_ZERO, list_total=_ZERO, priced=False, source="unpriced", is_estimate=True)
        list_total = list_prices.cost(usage)
        if rule is not None and rule.discount is not None:
            return Cost(total=list_total * (1 - rule.discount), list_total=list_total, priced=True, source="override")
        return Cost(total=list_total, list_total=list_total, priced=True, source="genai-prices")

    def worst_rates(
        self,
        provider: ProviderConfig,
        model: str,
        total_in: int,
        service_tier: str | None = None,
        audio_io: tuple[bool, bool] = (False, False),
    ) -> WorstRates:
        """What ``cost`` would charge per token for a worst case (see ``TokenPrices.worst_rates``): the override's
        prices or discount, the unpriced stand-in, or nothing for an unpriced model without one."""
        list_prices, rule = self._lookup(provider, model, _priced_tier(service_tier))
        if rule is not None and rule.prices is not None:
            return rule.prices.worst_rates(total_in, audio_io)
        if list_prices is None:
            fallback = self.unpriced_fallback
            if fallback is not None and fallback != model and self.knows(provider, fallback):
                return self.worst_rates(provider, fallback, total_in, None, audio_io)
            return NO_PRICE
        rates = list_prices.worst_rates(total_in, audio_io)
        return rates.scaled(1 - rule.discount) if rule is not None and rule.discount is not None else rates

    def _lookup(
        self, provider: ProviderConfig, model: str, tier: str | None = None
    ) -> tuple[TokenPrices | None, OverrideRule | None]:
        minute = int(time.time() // 60)
        key = (provider.name, model, provider.pricing_provider, tier)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == minute:
            return hit[1], hit[2]
        rule = next((r for r in self._rules if r.applies(provider.name, model)), None)
        prices = self._genai_prices(provider.pricing_provider, model, tier)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (minute, prices, rule)
        return prices, rule

    def _genai_prices(self, pricing_provider: str | None, model: str, tier: str | None = None) -> TokenPrices | None:
        try:
            _, info = self._snapshot.find_provider_model(model, None, pricing_provider, None)
        except LookupError:
            return None
        context = {"service_tier": tier} if tier else None
        return compile_genai_price(info.get_prices(datetime.now(tz=UTC), context))

    def _warn_unpriced(self, provider: str, model: str) -> None:
        if (provider, model) not in self._warned:
            self._warned.add((provider, model))
            log.warning(
                "no price for model %r on provider %r: requests are recorded with cost 0 and marked unpriced; "
                "add it to the price override file",
                model,
                provider,
            )
