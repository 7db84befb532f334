"""Model policies: which models, how big, how much reasoning — applied to one request's body.

Every policy whose scope covers the request applies; the strictest value wins (smallest
``max_tokens``, lowest ``max_effort``), a model must pass every allowlist and no denylist, and the
default-model rewrite of the most specific scope (key > session > user > project > team > org)
is used unless the key is allowed to opt in. Limits *clamp* the request instead of rejecting it,
in each API's own fields, and every change is returned as a decision for the ledger and audit log.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from tokenctl.errors import PolicyDenied
from tokenctl.policy.budget import covers
from tokenctl.policy.rules import EFFORT_LEVELS, ModelPolicy
from tokenctl.types import Principal

_SPECIFICITY = {"key": 0, "session": 1, "user": 2, "project": 3, "team": 4, "org": 5}
_RANK = {level: i for i, level in enumerate(EFFORT_LEVELS)}
# The effort values each API accepts, lowest first.
_ANTHROPIC_EFFORTS = ("low", "medium", "high", "max")
_OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# Thinking budget implied by an effort ceiling when max_thinking_tokens is not set.
_THINKING_FOR_EFFORT = {"none": 1024, "minimal": 1024, "low": 4096, "medium": 16_384, "high": 32_768}


def applicable(policies: Sequence[ModelPolicy], principal: Principal, session_id: str | None) -> list[ModelPolicy]:
    found = [p for p in policies if covers(p, principal, session_id) is not None]
    return sorted(found, key=lambda p: _SPECIFICITY[p.scope])


def _matches(model: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(model, p) for p in patterns)


def check_model(policies: Sequence[ModelPolicy], requested: str, upstream: str) -> None:
    for p in policies:
        if p.deny_models and (_matches(requested, p.deny_models) or _matches(upstream, p.deny_models)):
            raise PolicyDenied(f"tokenctl policy {p.name!r} does not allow model {requested!r}")
        if p.allow_models and not (_matches(requested, p.allow_models) or _matches(upstream, p.allow_models)):
            raise PolicyDenied(
                f"tokenctl policy {p.name!r} does not allow model {requested!r}; allowed: {', '.join(p.allow_models)}"
            )


def rewrite_target(
    policies: Sequence[ModelPolicy], requested: str, principal: Principal
) -> tuple[ModelPolicy, str] | None:
    if principal.opt_in:
        return None
    for p in policies:
        for pattern, target in p.rewrite:
            if fnmatch.fnmatchcase(requested, pattern) and target != requested:
                return p, target
    return None


def check_size(policies: Sequence[ModelPolicy], body_size: int, input_tokens: int) -> None:
    for p in policies:
        if p.max_request_bytes is not None and body_size > p.max_request_bytes:
            raise PolicyDenied(
                f"tokenctl policy {p.name!r}: this request is {body_size:,} bytes, above the limit of "
                f"{p.max_request_bytes:,} bytes; shorten the conversation (for example /compact) and retry"
            )
        if p.max_input_tokens is not None and input_tokens > p.max_input_tokens:
            raise PolicyDenied(
                f"tokenctl policy {p.name!r}: this request has about {input_tokens:,} input tokens, above the limit of "
                f"{p.max_input_tokens:,}; shorten the conversation (for example /compact) and retry"
            )


def _strictest(policies: Sequence[ModelPolicy], field: str) -> tuple[Any, str] | None:
    best: tuple[Any, str] | None = None
    for p in policies:
        value = getattr(p, field)
        if value is None:
            continue
        rank = _RANK[value] if field == "max_effort" else value
        if best is None or rank < (_RANK[best[0]] if field == "max_effort" else best[0]):
            best = (value, p.name)
    return best


def clamp(policies: Sequence[ModelPolicy], body: dict[str, Any], api: str, provider_kind: str) -> list[str]:
    """Lower max_tokens, reasoning effort and thinking budgets to the policies' ceilings. Returns what changed."""
    changes: list[str] = []
    max_tokens = _strictest(policies, "max_tokens")
    if max_tokens is not None:
        changes += _clamp_output(body, api, provider_kind, *max_tokens)
    effort = _strictest(policies, "max_effort")
    if effort is not None:
        changes += _clamp_effort(body, api, *effort)
    thinking = _strictest(policies, "max_thinking_tokens")
    if thinking is None and effort is not None and effort[0] in _THINKING_FOR_EFFORT:
        thinking = (_THINKING_FOR_EFFORT[effort[0]], effort[1])
    if api == "anthropic.messages":
        changes += _clamp_thinking(body, thinking)
    return changes


def _clamp_output(body: dict[str, Any], api: str, provider_kind: str, limit: int, rule: str) -> list[str]:
    if api == "anthropic.messages":
        fields = ["max_tokens"]
    elif api == "openai.responses":
        fields = ["max_output_tokens"]
    else:
        fields = [f for f in ("max_completion_tokens", "max_tokens") if f in body]
        if not fields:
            fields = ["max_completion_tokens" if provider_kind == "openai" else "max_tokens"]
    changes = []
    for name in fields:
        value = body.get(name)
        if not isinstance(value, int) or value > limit:
            body[name] = limit
            changes.append(f"clamp {name} {value if value is not None else 'unset'}->{limit} ({rule})")
    return changes


def _lower(value: Any, ceiling: str, allowed: tuple[str, ...]) -> str | None:
    """The value to send instead, or None if ``value`` is within the ceiling (or not an effort we know)."""
    if not isinstance(value, str) or value not in _RANK or _RANK[value] <= _RANK[ceiling]:
        return None
    fitting = [v for v in allowed if _RANK[v] <= _RANK[ceiling]]
    return fitting[-1] if fitting else allowed[0]


def _clamp_effort(body: dict[str, Any], api: str, ceiling: str, rule: str) -> list[str]:
    changes: list[str] = []

    def apply(container: Any, key: str, allowed: tuple[str, ...], label: str) -> None:
        if not isinstance(container, dict):
            return
        lowered = _lower(container.get(key), ceiling, allowed)
        if lowered is not None:
            changes.append(f"clamp {label} {container[key]}->{lowered} ({rule})")
            container[key] = lowered

    if api == "openai.chat":
        apply(body, "reasoning_effort", _OPENAI_EFFORTS, "reasoning_effort")
        apply(body.get("reasoning"), "effort", _OPENAI_EFFORTS, "reasoning.effort")  # Responses-shaped Cursor body
    elif api == "openai.responses":
        apply(body.get("reasoning"), "effort", _OPENAI_EFFORTS, "reasoning.effort")
    elif api == "anthropic.messages":
        apply(body.get("output_config"), "effort", _ANTHROPIC_EFFORTS, "output_config.effort")
        for message in body.get("messages") or ():  # Claude Code's per-turn output_config in system messages
            if isinstance(message, dict):
                apply(message.get("output_config"), "effort", _ANTHROPIC_EFFORTS, "messages[].output_config.effort")
    return changes


def _clamp_thinking(body: dict[str, Any], thinking: tuple[int, str] | None) -> list[str]:
    config = body.get("thinking")
    if not isinstance(config, dict) or config.get("type") != "enabled":
        return []
    budget = config.get("budget_tokens")
    if not isinstance(budget, int):
        return []
    ceiling, rule = thinking if thinking is not None else (budget, "max_tokens")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens <= ceiling:
        ceiling, rule = max_tokens - 1, rule if thinking and thinking[0] < max_tokens else "max_tokens"
    if budget <= ceiling:
        return []
    if ceiling < 1024:  # the API's minimum thinking budget: no room for thinking at all
        body["thinking"] = {"type": "disabled"}
        return [f"clamp thinking budget_tokens {budget}->disabled ({rule})"]
    config["budget_tokens"] = ceiling
    return [f"clamp thinking.budget_tokens {budget}->{ceiling} ({rule})"]
