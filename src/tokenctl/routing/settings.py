"""The ``routing:`` section of the config: tiers, rules, the classifier, and who routing applies to.

routing:
  routed_models: [auto, claude-sonnet-4-5]   # requests for these names (or globs) are routed
  teams: [payments]                          # optional: only these teams are routed
  projects: [checkout]                       # optional: only these projects are routed
  tiers:
    economy: {models: [claude-haiku-4-5, local/llama-3.1-8b], escalate_to: premium}
    premium: {models: [claude-sonnet-4-5]}
  rules:                                     # first match wins
    - {tier: economy, kind: title}
    - {tier: economy, max_input_tokens: 1500, tool: claude-code}
  classifier: {cheap_tier: economy, premium_tier: premium, threshold: 0.19}   # optional
  default_tier: premium
  sticky_sessions: true
  mode: route                                # or dry_run: serve the model asked for, record what routing would do
  escalation:                                # a session on another tier moves to this one when it struggles
    to: premium
    failing_tool_results: 3                  # tool results in a row that failed (0: off)
    repeated_tool_calls: 3                   # the same call with the same arguments (0: off)
    gave_up: true                            # the model says it cannot do it
    re_asked: true                           # the user asks the same thing again
    at_once_max_usd: 0.25                    # switch mid-turn when the context costs at most this uncached there
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenctl.validate import (
    ConfigError,
    boolean,
    choice,
    integer,
    money,
    optional_integer,
    reject_unknown,
    section,
    string_list,
)

KINDS = ("title", "probe", "agent", "chat")
ROUTING_FIELDS = {
    "tiers",
    "routed_models",
    "teams",
    "projects",
    "rules",
    "classifier",
    "default_tier",
    "sticky_sessions",
    "mode",
    "escalation",
}
MODES = ("route", "dry_run")
ESCALATION_FIELDS = {"to", "failing_tool_results", "repeated_tool_calls", "gave_up", "re_asked", "at_once_max_usd"}
TIER_FIELDS = {"models", "escalate_to"}
RULE_FIELDS = {"tier", "tool", "kind", "team", "project", "min_input_tokens", "max_input_tokens"}
CLASSIFIER_FIELDS = {
    "cheap_tier",
    "premium_tier",
    "threshold",
    "premium_share",
    "model",
    "calibration_window",
    "calibration_warmup",
}


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    models: tuple[str, ...]  # deployments, tried in order when one fails before answering
    escalate_to: str | None = None  # the tier tried after all of these failed


@dataclass(frozen=True, slots=True)
class RouteRule:
    tier: str
    tool: str | None = None
    kind: str | None = None
    team: str | None = None
    project: str | None = None
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None

    def describe(self) -> str:
        parts = [
            f"{k}{v}"
            for k, v in (
                ("tool=", self.tool),
                ("kind=", self.kind),
                ("team=", self.team),
                ("project=", self.project),
                ("input>=", self.min_input_tokens),
                ("input<=", self.max_input_tokens),
            )
            if v is not None
        ]
        return "rule " + (" ".join(parts) or "(always)")


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    cheap_tier: str
    premium_tier: str
    threshold: float | None = None  # None: from premium_share, else the model's own threshold
    premium_share: float | None = None  # the share of this deployment's recent user turns sent to premium
    model_path: str | None = None
    calibration_window: int = 2000  # premium_share is a quantile of this many recent scores ...
    calibration_warmup: int = 200  # ... once there are this many; before, of the training prompts' scores


@dataclass(frozen=True, slots=True)
class EscalationSettings:
    to: str
    failing_tool_results: int = 3
    repeated_tool_calls: int = 3
    gave_up: bool = True
    re_asked: bool = True
    at_once_max_usd: Decimal = Decimal("0.25")


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    tiers: dict[str, Tier] = field(default_factory=dict)
    routed_models: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()
    classifier: ClassifierSettings | None = None
    default_tier: str | None = None
    sticky_sessions: bool = True
    mode: str = "route"
    escalation: EscalationSettings | None = None

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry_run"

    @property
    def enabled(self) -> bool:
        return bool(self.tiers and self.routed_models)


def parse_routing(raw: dict[str, Any]) -> RoutingConfig:
    where = "routing"
    reject_unknown(raw, ROUTING_FIELDS, where)
    if not raw:
        return RoutingConfig()
    tiers = {name: _tier(name, spec) for name, spec in section(raw, "tiers").items()}
    if not tiers:
        raise ConfigError("routing.tiers: define at least one tier")
    rules = tuple(_rule(r, i) for i, r in enumerate(raw.get("rules") or []))
    classifier = _classifier(raw["classifier"]) if raw.get("classifier") else None
    config = RoutingConfig(
        tiers,
        string_list(raw, "routed_models", where),
        string_list(raw, "teams", where),
        string_list(raw, "projects", where),
        rules,
        classifier,
        raw.get("default_tier"),
        bool(raw.get("sticky_sessions", True)),
        choice(raw, "mode", MODES, "route", where),
        _escalation(raw["escalation"], classifier) if raw.get("escalation") else None,
    )
    _check_tier_names(config)
    return config


def _tier(name: str, spec: Any) -> Tier:
    where = f"routing.tiers.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping with models")
    reject_unknown(spec, TIER_FIELDS, where)
    models = string_list(spec, "models", where)
    if not models:
        raise ConfigError(f"{where}.models: list at least one model")
    return Tier(name, models, spec.get("escalate_to"))


def _rule(raw: Any, index: int) -> RouteRule:
    where = f"routing.rules[{index}]"
    if not isinstance(raw, dict) or "tier" not in raw:
        raise ConfigError(f"{where}: must be a mapping with a tier")
    reject_unknown(raw, RULE_FIELDS, where)
    if raw.get("kind") is not None and raw["kind"] not in KINDS:
        raise ConfigError(f"{where}.kind: one of {', '.join(KINDS)}")
    return RouteRule(
        str(raw["tier"]),
        raw.get("tool"),
        raw.get("kind"),
        raw.get("team"),
        raw.get("project"),
        optional_integer(raw, "min_input_tokens", where),
        optional_integer(raw, "max_input_tokens", where),
    )


def _classifier(raw: Any) -> ClassifierSettings:
    where = "routing.classifier"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    reject_unknown(raw, CLASSIFIER_FIELDS, where)
    for key in ("cheap_tier", "premium_tier"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(f"{where}.{key}: name a tier")
    threshold, share = raw.get("threshold"), raw.get("premium_share")
    for key, value in (("threshold", threshold), ("premium_share", share)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise ConfigError(f"{where}.{key}: a number from 0 to 1")
    if threshold is not None and share is not None:
        raise ConfigError(f"{where}: set threshold or premium_share, not both")
    window = integer(raw, "calibration_window", 2000, where)
    warmup = integer(raw, "calibration_warmup", 200, where)
    if window < 1 or not 0 <= warmup <= window:
        raise ConfigError(f"{where}: calibration_window must be at least 1 and calibration_warmup from 0 to it")
    return ClassifierSettings(
        raw["cheap_tier"],
        raw["premium_tier"],
        None if threshold is None else float(threshold),
        None if share is None else float(share),
        raw.get("model"),
        window,
        warmup,
    )


def _escalation(raw: Any, classifier: ClassifierSettings | None) -> EscalationSettings:
    where = "routing.escalation"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping")
    reject_unknown(raw, ESCALATION_FIELDS, where)
    to = raw.get("to") or (classifier.premium_tier if classifier else None)
    if not isinstance(to, str):
        raise ConfigError(f"{where}.to: name the tier a struggling session moves to")
    at_once = money(raw, "at_once_max_usd", where)
    return EscalationSettings(
        to,
        integer(raw, "failing_tool_results", 3, where),
        integer(raw, "repeated_tool_calls", 3, where),
        boolean(raw, "gave_up", True, where),
        boolean(raw, "re_asked", True, where),
        Decimal("0.25") if at_once is None else at_once,
    )


def _check_tier_names(config: RoutingConfig) -> None:
    named = [("default_tier", config.default_tier)]
    if config.escalation:
        named.append(("escalation.to", config.escalation.to))
    named += [(f"tiers.{t.name}.escalate_to", t.escalate_to) for t in config.tiers.values()]
    named += [(f"rules[{i}].tier", r.tier) for i, r in enumerate(config.rules)]
    if config.classifier:
        named += [
            ("classifier.cheap_tier", config.classifier.cheap_tier),
            ("classifier.premium_tier", config.classifier.premium_tier),
        ]
    for where, name in named:
        if name is not None and name not in config.tiers:
            raise ConfigError(f"routing.{where}: no tier {name!r}; tiers: {', '.join(config.tiers)}")
