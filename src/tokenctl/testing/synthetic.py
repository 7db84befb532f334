"""A synthetic ledger: realistic-looking requests for demos, browser tests and the 10M-row dashboard benchmark.

Teams, users (each in one team), projects, tools, agent sessions with growing context and prompt
caching, a few policy downgrades, failures and budget blocks. Costs use a small fixed price table,
so the data does not depend on the pricing library; reports must sum whatever is generated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal

from tokenctl.config import ProviderConfig
from tokenctl.ledger.record import LedgerEntry
from tokenctl.types import Attribution, Cost, Principal, Route, Usage

# USD per million tokens: input, output, cache read, cache write (5 min)
PRICES = {
    "claude-opus-4-1": (Decimal(15), Decimal(75), Decimal("1.5"), Decimal("18.75")),
    "claude-sonnet-4-5": (Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75")),
    "claude-haiku-4-5": (Decimal(1), Decimal(5), Decimal("0.1"), Decimal("1.25")),
    "gpt-5": (Decimal("1.25"), Decimal(10), Decimal("0.125"), Decimal("1.25")),
    "gpt-5-mini": (Decimal("0.25"), Decimal(2), Decimal("0.025"), Decimal("0.25")),
}
_MODEL_WEIGHTS = (
    ("claude-sonnet-4-5", 50),
    ("claude-opus-4-1", 12),
    ("claude-haiku-4-5", 13),
    ("gpt-5", 15),
    ("gpt-5-mini", 10),
)
_TOOLS = (
    ("claude-code", "anthropic.messages"),
    ("codex", "openai.responses"),
    ("cursor", "openai.chat"),
    ("sdk", "anthropic.messages"),
)
_M = Decimal(1_000_000)
_PROVIDERS = {
    "anthropic": ProviderConfig("anthropic", "anthropic", "https://api.anthropic.com", None, (), "anthropic"),
    "openai": ProviderConfig("openai", "openai", "https://api.openai.com", None, (), "openai"),
}


def price(model: str, usage: Usage) -> Decimal:
    p_in, p_out, p_read, p_write = PRICES[model]
    return (
        p_in * usage.input_tokens
        + p_out * usage.output_tokens
        + p_read * usage.cache_read_tokens
        + p_write * usage.cache_write_5m_tokens
    ) / _M


class Org:
    """Who exists: ``teams`` teams with ``users_per_team`` users and two projects each."""

    def __init__(self, teams: int, users_per_team: int) -> None:
        names = ["payments", "search", "mobile", "platform", "data", "growth", "infra", "security", "ml", "web"]
        self.teams = [names[i] if i < len(names) else f"team-{i}" for i in range(teams)]
        self.users = [(f"{t}-dev{j}", t) for t in self.teams for j in range(users_per_team)]
        self.weights = [1.0 / (1 + i % 17) ** 1.2 for i in range(len(self.users))]  # a few heavy spenders


def synthetic_entries(
    n: int, *, start: float, days: float, teams: int = 8, users_per_team: int = 10, seed: int = 7
) -> Iterator[LedgerEntry]:
    """``n`` requests spread over ``days`` days from ``start`` (unix seconds), in time order."""
    rng = random.Random(seed)
    org = Org(teams, users_per_team)
    sessions: dict[str, list[int]] = {}  # user -> [session number, turn, context tokens]
    step = days * 86400 / max(n, 1)
    for i in range(n):
        user, team = rng.choices(org.users, org.weights)[0]
        state = sessions.setdefault(user, [0, 0, 0])
        if state[1] == 0 or rng.random() < 0.04:
            state[:] = [state[0] + 1, 0, rng.randint(3_000, 20_000)]
        state[1] += 1
        state[2] += rng.randint(200, 4_000)
        yield _entry(rng, i, start + i * step, user, team, f"{user}-s{state[0]}", state[2], state[1])


def _entry(
    rng: random.Random, i: int, ts: float, user: str, team: str, session: str, context: int, turn: int
) -> LedgerEntry:
    tool, api = _TOOLS[hash(user) % len(_TOOLS)] if rng.random() < 0.85 else rng.choice(_TOOLS)
    model = rng.choices([m for m, _ in _MODEL_WEIGHTS], [w for _, w in _MODEL_WEIGHTS])[0]
    provider = _PROVIDERS["openai" if model.startswith("gpt") else "anthropic"]
    entry = LedgerEntry(
        request_id=f"req_syn_{i:09d}",
        started_at=ts,
        api=api,
        stream=rng.random() < 0.8,
        duration_ms=rng.uniform(300, 9000),
        ttft_ms=rng.uniform(150, 900),
    )
    entry.principal = Principal(key_id=f"key_{user}", user=user, team=team, project=f"{team}-{'ab'[turn % 2]}")
    entry.attribution = Attribution(tool=tool, tool_version="1.0", session_id=session, device_id=None)
    entry.route = Route(provider, model, model)
    entry.requested_model = model
    roll = rng.random()
    if roll < 0.01:
        entry.status, entry.outcome, entry.error = 402, "rejected", "budget exceeded"
        return entry
    if roll < 0.03:
        entry.status, entry.outcome, entry.error = rng.choice((429, 500, 529)), "upstream_error", "upstream failed"
        return entry
    entry.status = 200
    cached = int(context * rng.uniform(0.6, 0.95)) if turn > 1 else 0
    usage = Usage(
        input_tokens=rng.randint(50, 2_000),
        cache_read_tokens=cached,
        cache_write_5m_tokens=max(0, context - cached - 1_000),
        output_tokens=rng.randint(40, 3_000),
    )
    entry.usage = usage
    if model == "claude-opus-4-1" and rng.random() < 0.2:  # a budget downgrade served it on Sonnet
        entry.original_route, entry.route = entry.route, Route(provider, model, "claude-sonnet-4-5")
        entry.saving_source, entry.policy = "policy", ["downgrade"]
        entry.counterfactual_cost = price(model, usage)
    served = entry.route.upstream_model
    cost = price(served, usage)
    entry.cost = Cost(cost, cost, True, "synthetic")
    entry.uncached_cost = price(served, Usage(input_tokens=usage.input_total, output_tokens=usage.output_tokens))
    return entry
