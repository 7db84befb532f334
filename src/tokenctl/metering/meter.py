"""Settling a finished request: usage from what the provider reported (or an estimate), then its cost."""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tokenctl.ledger.record import LedgerEntry
from tokenctl.metering.pricing import PriceBook
from tokenctl.types import ZERO_COST, Cost, Usage


class ReasoningHistory:
    """The hidden reasoning each model billed on its last complete answers in this process.

    A stream cut before the provider's final usage (the client left, the connection broke) was still billed for
    the reasoning the model did, which OpenAI models never stream: without a count, the row and the budget would
    miss it. It is estimated as the median of the model's last ``KEEP`` complete answers (0 for a model that
    does not reason), and the row says so."""

    KEEP = 50
    MAX_MODELS = 500

    def __init__(self) -> None:
        self._seen: OrderedDict[str, deque[int]] = OrderedDict()

    def note(self, model: str, reasoning_tokens: int) -> None:
        seen = self._seen.get(model)
        if seen is None:
            seen = self._seen[model] = deque(maxlen=self.KEEP)
            if len(self._seen) > self.MAX_MODELS:
                self._seen.popitem(last=False)
        seen.append(reasoning_tokens)

    def typical(self, model: str) -> int:
        seen = self._seen.get(model)
        return int(statistics.median(seen)) if seen else 0


def settle(
    entry: LedgerEntry,
    extract: Callable[[dict[str, Any]], Usage] | None,
    prices: PriceBook,
    estimated_input: int = 0,
    estimated_output: int | None = None,
    reasoning: ReasoningHistory | None = None,
) -> None:
    """Fill ``entry.usage`` and ``entry.cost``.

    ``estimated_output`` is given when a stream ended before the provider's final usage
    (client gone, stream cut): output is then estimated from the content relayed, input
    from the request size if the provider never reported it, and the row is marked.
    """
    entry.price_version = prices.version
    if extract is None or entry.route is None:
        entry.cost = ZERO_COST
        return
    usage = extract(entry.raw_usage) if isinstance(entry.raw_usage, dict) else Usage()
    estimated = False
    model = entry.route.upstream_model
    if estimated_output is not None:
        usage.output_tokens = max(usage.output_tokens, estimated_output)
        estimated = True
        if usage.input_total == 0:
            usage.input_tokens = estimated_input
        hidden = reasoning.typical(model) if reasoning is not None else 0
        if hidden > usage.reasoning_tokens:  # billed but never streamed: the model's usual reasoning
            usage.output_tokens += hidden - usage.reasoning_tokens
            usage.reasoning_tokens = hidden
            note = f"reasoning estimated: {hidden} tokens (the median of {model}'s last complete answers)"
            entry.policy = [*(entry.policy or []), note]
    elif reasoning is not None and entry.status == 200 and not entry.partial and usage.output_tokens:
        reasoning.note(model, usage.reasoning_tokens)
    entry.usage = usage
    if usage.input_total == 0 and usage.output_tokens == 0:
        entry.cost = ZERO_COST
        return
    cost = _price(prices, entry, usage)
    if estimated and not cost.is_estimate:
        cost = Cost(cost.total, cost.list_total, cost.priced, cost.source, True)
    entry.cost = cost
    if cost.priced:
        _price_alternatives(prices, entry, usage)


def _price_alternatives(prices: PriceBook, entry: LedgerEntry, usage: Usage) -> None:
    """What caching saved, and what the model the client asked for would have cost: the dashboard's savings."""
    if usage.cache_read_tokens or usage.cache_write_tokens:
        uncached = replace(
            usage, input_tokens=usage.input_total, cache_read_tokens=0, cache_write_5m_tokens=0, cache_write_1h_tokens=0
        )
        entry.uncached_cost = _price(prices, entry, uncached).total
    original = entry.original_route
    if original is not None and entry.route is not None and original.upstream_model != entry.route.upstream_model:
        alternative = prices.cost(original.provider, original.upstream_model, usage, entry.service_tier)
        if alternative.priced:
            entry.counterfactual_cost = alternative.total
    would = entry.would_route
    if would is not None:  # a routing dry run: what the same answer would have cost where routing would send it
        projected = prices.cost(would.provider, would.upstream_model, usage)
        if projected.priced:
            entry.would_cost = projected.total


def _price(prices: PriceBook, entry: LedgerEntry, usage: Usage) -> Cost:
    assert entry.route is not None
    tier = entry.service_tier
    cost = prices.cost(entry.route.provider, entry.route.upstream_model, usage, tier)
    if not cost.priced and entry.response_model and entry.response_model != entry.route.upstream_model:
        cost = prices.cost(entry.route.provider, entry.response_model, usage, tier)
    if tier not in (None, "default", "auto") and f"service_tier {tier}" not in (entry.policy or []):
        entry.policy = [*(entry.policy or []), f"service_tier {tier}"]  # priced at that tier's rates
    return cost
