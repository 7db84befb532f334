"""Settling a finished request: usage from what the provider reported (or an estimate), then its cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenctl.ledger.record import LedgerEntry
from tokenctl.metering.pricing import PriceBook
from tokenctl.types import ZERO_COST, Cost, Usage


def settle(
    entry: LedgerEntry,
    extract: Callable[[dict[str, Any]], Usage] | None,
    prices: PriceBook,
    estimated_input: int = 0,
    estimated_output: int | None = None,
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
    if estimated_output is not None:
        usage.output_tokens = max(usage.output_tokens, estimated_output)
        estimated = True
        if usage.input_total == 0:
            usage.input_tokens = estimated_input
    entry.usage = usage
    if usage.input_total == 0 and usage.output_tokens == 0:
        entry.cost = ZERO_COST
        return
    cost = _price(prices, entry, usage)
    entry.cost = Cost(cost.total, cost.list_total, cost.priced, cost.source, cost.is_estimate or estimated)


def _price(prices: PriceBook, entry: LedgerEntry, usage: Usage) -> Cost:
    assert entry.route is not None
    cost = prices.cost(entry.route.provider, entry.route.upstream_model, usage)
    if not cost.priced and entry.response_model and entry.response_model != entry.route.upstream_model:
        cost = prices.cost(entry.route.provider, entry.response_model, usage)
    return cost
