"""The routing stage: which tier serves a request, and the deployments to try in order.

Order of decisions for a request whose model is in ``routed_models`` (others pass through):
1. the ``x-tokenctl-route`` header: ``off`` serves the model asked for, a tier name picks that tier;
2. an agent session keeps the tier its first request got, unless steps 3–5 now pick a cheaper tier whose
   price for the whole context uncached is below this tier's price for it from the cache (the switch
   pays for the lost prompt cache on its first turn);
3. the first matching rule (tool, request kind, team, project, input size);
4. the classifier (cheap tier below the threshold, premium tier at or above it);
5. the default tier.
The decision is written into the ledger row; the served model's cost is compared with the model
asked for (the savings the dashboard shows).
"""

from __future__ import annotations

import fnmatch
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tokenctl.errors import GatewayError
from tokenctl.metering.pricing import PriceBook
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.classifier import Classifier
from tokenctl.routing.settings import RouteRule, RoutingConfig
from tokenctl.types import Attribution, Principal, Route, Usage

log = logging.getLogger("tokenctl.routing")
ROUTE_HEADER = "x-tokenctl-route"
_MAX_SESSIONS = 100_000


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing rules look at."""

    principal: Principal
    attribution: Attribution | None
    kind: str
    input_tokens: int
    text: str
    header: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str
    reason: str
    routes: tuple[Route, ...]  # the deployments to try, in order (the tier's, then its escalation tiers')


class Router:
    def __init__(
        self,
        settings: RoutingConfig,
        catalog: Catalog,
        classifier: Classifier | None = None,
        prices: PriceBook | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.classifier = classifier
        self.prices = prices
        self.threshold = _threshold(settings, classifier)
        self._routed: dict[str, bool] = {}  # model name -> matches routed_models (fnmatch is slow per request)
        self._tier_routes: dict[tuple[str, str, str], tuple[Route, ...]] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def applies_to(self, requested_model: str, principal: Principal) -> bool:
        """Routing is on, the model is a routed one, the key's team and project are routed, it did not opt in."""
        s = self.settings
        if not s.enabled or principal.opt_in or not self._is_routed(requested_model):
            return False
        return (not s.teams or principal.team in s.teams) and (not s.projects or principal.project in s.projects)

    def _is_routed(self, model: str) -> bool:
        routed = self._routed.get(model)
        if routed is None:
            if len(self._routed) > 10_000:
                self._routed.clear()
            routed = self._routed[model] = any(fnmatch.fnmatchcase(model, p) for p in self.settings.routed_models)
        return routed

    def choose(self, requested: Route, api: str, facts: Facts) -> Decision | None:
        """None: serve the route asked for (routing off for this request, or no tier can serve it)."""
        if facts.header == "off":
            return None
        picked = self._from_header(facts)
        if picked is None:
            picked = self._pick_tier(facts)
            pinned = self._pinned(facts)
            if pinned is not None and picked is not None:
                picked = self._stay_or_switch(pinned, picked, requested, api, facts.input_tokens)
        if picked is None:
            return None
        tier, reason = picked
        routes = self._routes(tier, requested, api)
        if not routes:
            log.warning(
                "routing: tier %r has no deployment that speaks %s; serving %s", tier, api, requested.upstream_model
            )
            return None
        session = facts.attribution.session_id if facts.attribution else None
        if session and self.settings.sticky_sessions:
            self._remember(session, tier)
        return Decision(tier, reason, routes)

    def _from_header(self, facts: Facts) -> tuple[str, str] | None:
        if facts.header and facts.header in self.settings.tiers:
            return facts.header, f"header {ROUTE_HEADER}: {facts.header}"
        return None

    def _pinned(self, facts: Facts) -> str | None:
        session = facts.attribution.session_id if facts.attribution else None
        if not session or not self.settings.sticky_sessions or session not in self._sessions:
            return None
        self._sessions.move_to_end(session)
        return self._sessions[session]

    def _stay_or_switch(
        self, pinned: str, fresh: tuple[str, str], requested: Route, api: str, context_tokens: int
    ) -> tuple[str, str]:
        """Keep a session on its tier unless moving pays for the prompt cache it throws away."""
        if fresh[0] == pinned:
            return pinned, f"the session stays on its tier ({fresh[1]})"
        here, there = self._routes(pinned, requested, api), self._routes(fresh[0], requested, api)
        if not here or not there or self.prices is None:
            return pinned, "the session stays on its tier (keeps its prompt cache)"
        cached_here = self.prices.cost(
            here[0].provider, here[0].upstream_model, Usage(cache_read_tokens=context_tokens)
        ).total
        uncached_there = self.prices.cost(
            there[0].provider, there[0].upstream_model, Usage(input_tokens=context_tokens)
        ).total
        if uncached_there < cached_here:
            return fresh[0], (
                f"session moved from {pinned}: ${uncached_there:.4f} for the context uncached there "
                f"< ${cached_here:.4f} cached here ({fresh[1]})"
            )
        return pinned, (
            f"the session stays on its tier: moving to {fresh[0]} would cost ${uncached_there:.4f} "
            f"uncached vs ${cached_here:.4f} cached here"
        )

    def _pick_tier(self, facts: Facts) -> tuple[str, str] | None:
        for rule in self.settings.rules:
            if _matches(rule, facts):
                return rule.tier, rule.describe()
        if self.classifier is not None and self.settings.classifier is not None:
            c, threshold = self.settings.classifier, self.threshold
            score = self.classifier.score(facts.text)
            if score >= threshold:
                return c.premium_tier, f"classifier {score:.3f} >= {threshold:.3f}"
            return c.cheap_tier, f"classifier {score:.3f} < {threshold:.3f}"
        if self.settings.default_tier:
            return self.settings.default_tier, "default tier"
        return None

    def _routes(self, tier: str, requested: Route, api: str) -> tuple[Route, ...]:
        key = (tier, requested.requested_model, api)
        cached = self._tier_routes.get(key)
        if cached is None:
            if len(self._tier_routes) > 10_000:
                self._tier_routes.clear()
            cached = self._tier_routes[key] = self._resolve_tier(tier, requested, api)
        return cached

    def _resolve_tier(self, tier: str, requested: Route, api: str) -> tuple[Route, ...]:
        routes: list[Route] = []
        seen: set[str] = set()
        name: str | None = tier
        while name is not None and name not in seen:
            seen.add(name)
            for model in self.settings.tiers[name].models:
                try:
                    target = self.catalog.resolve(model, api)
                except GatewayError:
                    continue  # this deployment does not speak the client's API (or is not configured)
                routes.append(
                    Route(target.provider, requested.requested_model, target.upstream_model, target.upstream_api)
                )
            name = self.settings.tiers[name].escalate_to
        return tuple(routes)

    def _remember(self, session: str, tier: str) -> None:
        self._sessions[session] = tier
        self._sessions.move_to_end(session)
        if len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)


def _threshold(settings: RoutingConfig, classifier: Classifier | None) -> float:
    c = settings.classifier
    if classifier is None or c is None:
        return 0.5
    if c.threshold is not None:
        return c.threshold
    if c.premium_share is not None:
        return classifier.threshold_for_share(c.premium_share)
    return classifier.threshold


def _matches(rule: RouteRule, facts: Facts) -> bool:
    a, p = facts.attribution, facts.principal
    return (
        (rule.tool is None or (a is not None and a.tool == rule.tool))
        and (rule.kind is None or facts.kind == rule.kind)
        and (rule.team is None or p.team == rule.team)
        and (rule.project is None or p.project == rule.project)
        and (rule.min_input_tokens is None or facts.input_tokens >= rule.min_input_tokens)
        and (rule.max_input_tokens is None or facts.input_tokens <= rule.max_input_tokens)
    )


# -- request facts ----------------------------------------------------------------------------------


def request_kind(body: dict[str, Any], api: str) -> str:
    """title (a client's title-generation call), probe (max_tokens 1), agent (tools offered) or chat."""
    if _asks_for_title(body):
        return "title"
    limit = body.get("max_tokens", body.get("max_completion_tokens", body.get("max_output_tokens")))
    if limit == 1:
        return "probe"
    return "agent" if body.get("tools") else "chat"


def _asks_for_title(body: dict[str, Any]) -> bool:
    output = body.get("output_config")
    text = body.get("text")
    schema_holder = (output.get("format") if isinstance(output, dict) else None) or (
        text.get("format") if isinstance(text, dict) else None
    )
    if isinstance(schema_holder, dict):
        schema = schema_holder.get("schema")
        props = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(props, dict) and set(props) == {"title"}:
            return True
    metadata = body.get("client_metadata")
    return isinstance(metadata, dict) and "thread_title" in str(metadata.get("x-codex-turn-metadata", ""))


def last_user_text(body: dict[str, Any], api: str) -> str:
    """The newest user message's text: what the classifier judges."""
    items = body.get("input") if api == "openai.responses" else body.get("messages")
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return _text_of(item.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""
