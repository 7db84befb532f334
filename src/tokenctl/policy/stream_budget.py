"""Stream-metered reservations: a streamed answer whose output the gateway can follow reserves its input and a
first step of output when it is admitted, then grows its reservation a step at a time as the output arrives.

The relay counts the output as it passes (``StreamMeter.output_tokens_upper``: one token per 3 bytes of text,
more than most text has) and asks for the next step half a step before the reservation is used up. When a
budget has no room for it, the answer ends there with the dialect's in-stream error naming the budget: a hard
cap stops a stream mid-answer instead of being passed by whatever the stream goes on to cost.

What cannot be followed reserves its whole worst case at admission, as before: output the provider bills but
does not stream (OpenAI reasoning models' hidden reasoning, Anthropic thinking without a stated budget), and
answers that are not streamed, except Anthropic Messages requests to an Anthropic provider: those are streamed
upstream and put together for the client (``providers/assemble.py``), so a budget stops them too, with a 402. Anthropic extended thinking with ``budget_tokens`` reserves that budget up front
plus the first step (the thinking it streams is a summary of what it bills). Anthropic's ``message_start``
carries the real input count: a reservation that estimated less is grown to it before any output flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SHOWN_OPENAI = ("gpt-4", "gpt-3.5", "chatgpt-4o")  # OpenAI models without hidden reasoning


@dataclass(slots=True)
class StreamBudget:
    step_tokens: int  # output tokens per step
    step_nanos: int  # what one step of output costs
    covered_tokens: int  # output tokens the reservation covers now
    limit_tokens: int  # the request's output limit: nothing to reserve beyond it
    input_nanos: int  # what the reservation holds for the input (Anthropic's message_start is compared with it)
    input_checked: bool = False
    steps: int = 0  # top-ups taken (the ledger notes them)
    assemble: bool = False  # the client asked for JSON: streamed upstream, put together for it

    def wants_more(self, seen_tokens: int) -> bool:
        """Half a step before the covered output is used up (never beyond the request's own limit)."""
        return self.covered_tokens < self.limit_tokens and seen_tokens >= self.covered_tokens - self.step_tokens // 2


def first_share(
    body: dict[str, Any], api: str, provider_kind: str, model: str, limit: int, step: int, streamed: bool = True
) -> int | None:
    """Output tokens to reserve at admission when the stream can be followed (``streamed``: it is, or will be,
    streamed upstream); None: reserve the whole limit."""
    if not streamed or step <= 0:
        return None
    hidden = hidden_output(body, api, provider_kind, model)
    return None if hidden is None else min(limit, hidden + step)


def hidden_output(body: dict[str, Any], api: str, provider_kind: str, model: str) -> int | None:
    """Output the answer may bill without streaming it: 0 when all of it is shown, Anthropic's thinking
    ``budget_tokens``, or None when nothing bounds it below the request's whole output limit."""
    if provider_kind == "openai" and not model.startswith(_SHOWN_OPENAI):
        return None  # o-series, gpt-5*, codex models: reasoning tokens are billed, not streamed
    if api.startswith("openai.") and (body.get("reasoning_effort") or body.get("reasoning")):
        return None  # asked to reason, with no budget in tokens
    thinking = body.get("thinking")
    if thinking is None or api != "anthropic.messages":
        return 0
    if not isinstance(thinking, dict) or thinking.get("type") == "disabled":
        return 0
    budget = thinking.get("budget_tokens")
    if thinking.get("type") == "enabled" and isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return budget
    return None  # adaptive thinking: no stated bound
