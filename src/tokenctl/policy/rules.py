"""Budget, model-policy and approval rules: what the YAML ``budgets:``, ``policies:`` and ``approvals:`` say.

Every rule names a *scope* (org, team, user, project, key, session) and optionally a
``match``: with a match the rule covers that one team/user/…; without one, every member of
the scope gets the rule for itself (``scope: team`` + ``limit_usd: 500`` = $500 per team).
The same parsers read rules created live through the CLI or the admin API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenctl.validate import ConfigError, choice, money, optional_integer, reject_unknown, string_list

SCOPES = ("org", "team", "user", "project", "key", "session")
ACTIONS = ("block", "downgrade", "notify")
CALENDAR_PERIODS = ("daily", "weekly", "monthly", "lifetime")
EFFORT_LEVELS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_ROLLING = re.compile(r"^rolling_(\d+)([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period (aligned in the configured time zone), a rolling window, or the whole lifetime."""

    kind: str  # daily | weekly | monthly | lifetime | rolling
    seconds: int = 0  # rolling windows only

    @property
    def label(self) -> str:
        if self.kind != "rolling":
            return self.kind
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.seconds % size == 0:
                return f"rolling_{self.seconds // size}{unit}"
        return f"rolling_{self.seconds}s"


@dataclass(frozen=True, slots=True)
class BudgetRule:
    name: str
    scope: str
    match: str | None
    limit: Decimal
    period: Period
    action: str = "block"
    downgrade_to: str | None = None
    downgrade_at: Decimal = Decimal(1)  # share of the limit at which a downgrade starts
    notify_at: tuple[int, ...] = (50, 80, 100)
    pool: bool = False  # drawn on only by budgets that overflow into it
    member_cap: Decimal | None = None  # pools: most one member may draw per period
    overflow_to: str | None = None  # name of a pool used when this budget is exhausted
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "scope": self.scope,
            "limit_usd": str(self.limit),
            "period": self.period.label,
            "action": self.action,
        }
        if self.match is not None:
            out["match"] = self.match
        if self.action == "downgrade":
            out["downgrade_to"] = self.downgrade_to
            out["downgrade_at_percent"] = int(self.downgrade_at * 100)
        out["notify_at_percent"] = list(self.notify_at)
        if self.pool:
            out["pool"] = True
            if self.member_cap is not None:
                out["member_cap_usd"] = str(self.member_cap)
        if self.overflow_to:
            out["overflow_to"] = self.overflow_to
        out["source"] = self.source
        return out


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    name: str
    scope: str
    match: str | None
    allow_models: tuple[str, ...] = ()
    deny_models: tuple[str, ...] = ()
    rewrite: tuple[tuple[str, str], ...] = ()  # (requested model glob, model to use instead)
    max_tokens: int | None = None
    max_effort: str | None = None
    max_thinking_tokens: int | None = None
    max_request_bytes: int | None = None
    max_input_tokens: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "scope": self.scope}
        if self.match is not None:
            out["match"] = self.match
        for field in ("allow_models", "deny_models"):
            if getattr(self, field):
                out[field] = list(getattr(self, field))
        if self.rewrite:
            out["rewrite"] = dict(self.rewrite)
        for field in (
            "max_tokens",
            "max_effort",
            "max_thinking_tokens",
            "max_request_bytes",
            "max_input_tokens",
            "requests_per_minute",
            "tokens_per_minute",
        ):
            if getattr(self, field) is not None:
                out[field] = getattr(self, field)
        out["source"] = self.source
        return out


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    name: str
    scope: str
    match: str | None
    above_usd: Decimal | None = None
    above_input_tokens: int | None = None
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "scope": self.scope}
        if self.match is not None:
            out["match"] = self.match
        if self.above_usd is not None:
            out["above_usd"] = str(self.above_usd)
        if self.above_input_tokens is not None:
            out["above_input_tokens"] = self.above_input_tokens
        out["source"] = self.source
        return out


_SCOPED = {"name", "scope", "match"}
BUDGET_FIELDS = _SCOPED | {
    "limit_usd",
    "period",
    "action",
    "downgrade_to",
    "downgrade_at_percent",
    "notify_at_percent",
    "pool",
    "member_cap_usd",
    "overflow_to",
}
POLICY_FIELDS = _SCOPED | {
    "allow_models",
    "deny_models",
    "rewrite",
    "max_tokens",
    "max_effort",
    "max_thinking_tokens",
    "max_request_bytes",
    "max_input_tokens",
    "requests_per_minute",
    "tokens_per_minute",
}
APPROVAL_FIELDS = _SCOPED | {"above_usd", "above_input_tokens"}


def parse_period(value: Any, where: str) -> Period:
    if value in CALENDAR_PERIODS:
        return Period(value)
    m = _ROLLING.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) == 0:
        raise ConfigError(
            f"{where}.period: must be daily, weekly, monthly, lifetime or rolling_<N>m|h|d such as rolling_24h "
            f"(got {value!r})"
        )
    return Period("rolling", int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def _scoped(raw: Any, allowed: set[str], where: str) -> tuple[str, str, str | None]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    reject_unknown(raw, allowed, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.name: required; letters, digits and _ . : - (at most 64)")
    scope = choice(raw, "scope", SCOPES, None, where)
    match = raw.get("match")
    if match is not None and (not isinstance(match, str) or not match):
        raise ConfigError(f"{where}.match: must be a non-empty string (omit it to cover every {scope})")
    if scope == "org" and match is not None:
        raise ConfigError(f"{where}.match: an org rule covers everything; remove match")
    return name, scope, match


def parse_budget(raw: Any, where: str, source: str = "config") -> BudgetRule:
    name, scope, match = _scoped(raw, BUDGET_FIELDS, where)
    limit = money(raw, "limit_usd", where, required=True)
    assert limit is not None
    action = choice(raw, "action", ACTIONS, "block", where)
    downgrade_to = raw.get("downgrade_to")
    if action == "downgrade" and (not isinstance(downgrade_to, str) or not downgrade_to):
        raise ConfigError(f"{where}.downgrade_to: required for action downgrade, the model to switch to")
    if action != "downgrade" and downgrade_to is not None:
        raise ConfigError(f"{where}.downgrade_to: only used with action: downgrade")
    downgrade_at = _percent(raw.get("downgrade_at_percent", 100), f"{where}.downgrade_at_percent")
    notify = raw.get("notify_at_percent", [50, 80, 100])
    if not isinstance(notify, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1000 for n in notify
    ):
        raise ConfigError(f"{where}.notify_at_percent: must be a list of percentages such as [50, 80, 100]")
    pool = raw.get("pool", False)
    if not isinstance(pool, bool):
        raise ConfigError(f"{where}.pool: must be true or false")
    member_cap = money(raw, "member_cap_usd", where)
    if member_cap is not None and not pool:
        raise ConfigError(f"{where}.member_cap_usd: only for pools (pool: true)")
    if pool and scope in ("user", "key", "session"):
        raise ConfigError(f"{where}.pool: a pool is shared by a team, project or org, not a {scope}")
    overflow = raw.get("overflow_to")
    if overflow is not None and (not isinstance(overflow, str) or pool):
        raise ConfigError(f"{where}.overflow_to: the name of a pool budget (and a pool cannot overflow)")
    return BudgetRule(
        name=name,
        scope=scope,
        match=match,
        limit=limit,
        period=parse_period(raw.get("period", "monthly"), where),
        action=action,
        downgrade_to=downgrade_to,
        downgrade_at=downgrade_at / 100,
        notify_at=tuple(sorted(set(notify))),
        pool=pool,
        member_cap=member_cap,
        overflow_to=overflow,
        source=source,
    )


def _percent(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100:
        raise ConfigError(f"{where}: must be a percentage between 0 and 100")
    return Decimal(str(value))


def parse_policy(raw: Any, where: str, source: str = "config") -> ModelPolicy:
    name, scope, match = _scoped(raw, POLICY_FIELDS, where)
    rewrite = raw.get("rewrite", {}) or {}
    if not isinstance(rewrite, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in rewrite.items()
    ):
        raise ConfigError(f"{where}.rewrite: must map requested models (or globs) to the model to use instead")
    effort = raw.get("max_effort")
    if effort is not None and effort not in EFFORT_LEVELS:
        raise ConfigError(f"{where}.max_effort: must be one of {', '.join(EFFORT_LEVELS)}")
    return ModelPolicy(
        name=name,
        scope=scope,
        match=match,
        allow_models=string_list(raw, "allow_models", where),
        deny_models=string_list(raw, "deny_models", where),
        rewrite=tuple(rewrite.items()),
        max_tokens=optional_integer(raw, "max_tokens", where, 1),
        max_effort=effort,
        max_thinking_tokens=optional_integer(raw, "max_thinking_tokens", where, 1024),
        max_request_bytes=optional_integer(raw, "max_request_bytes", where, 1),
        max_input_tokens=optional_integer(raw, "max_input_tokens", where, 1),
        requests_per_minute=optional_integer(raw, "requests_per_minute", where, 1),
        tokens_per_minute=optional_integer(raw, "tokens_per_minute", where, 1),
        source=source,
    )


def parse_approval(raw: Any, where: str, source: str = "config") -> ApprovalRule:
    name, scope, match = _scoped(raw, APPROVAL_FIELDS, where)
    rule = ApprovalRule(
        name=name,
        scope=scope,
        match=match,
        above_usd=money(raw, "above_usd", where),
        above_input_tokens=optional_integer(raw, "above_input_tokens", where, 1),
        source=source,
    )
    if rule.above_usd is None and rule.above_input_tokens is None:
        raise ConfigError(f"{where}: give above_usd, above_input_tokens or both")
    return rule


def parse_rule_list(raw: Any, section: str, parser: Any, source: str = "config") -> tuple[Any, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{section}: must be a list")
    rules = tuple(parser(item, f"{section}[{i}]", source) for i, item in enumerate(raw))
    check_unique_names(rules, section)
    return rules


def check_unique_names(rules: tuple[Any, ...], section: str) -> None:
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{section}: duplicate name(s) {', '.join(dupes)}")


def check_budget_links(budgets: tuple[BudgetRule, ...]) -> None:
    """overflow_to must name a pool that exists."""
    pools = {b.name for b in budgets if b.pool}
    for b in budgets:
        if b.overflow_to and b.overflow_to not in pools:
            raise ConfigError(f"budget {b.name!r}: overflow_to {b.overflow_to!r} is not a budget with pool: true")
