"""The routing stage: which tier serves a request, and the deployments to try in order.

Routing decides per user turn, not per request. In an agent session a request whose newest message is
tool results continues the turn the user started: it stays on the turn's tier, so the prompt cache of
the steps in between keeps paying, and nothing scores the empty text of a tool result.

At a user turn, for a request whose model is in ``routed_models`` (others pass through):
1. the ``x-tokenctl-route`` header: ``off`` serves the model asked for, a tier name picks that tier;
2. a session escalated earlier stays on the escalation tier;
3. an agent session keeps the tier it had, unless steps 4–6 now pick a cheaper tier whose price for the
   whole context uncached is below this tier's price for it from the cache;
4. the first matching rule (tool, request kind, team, project, input size);
5. the classifier on the turn's text (premium at or above the threshold; ``premium_share`` sets the
   threshold from this deployment's own recent scores); a text outside what the classifier knows
   falls back to prompt length;
6. the default tier.
Then the trajectory (``routing.escalation``): a session whose tool results keep failing, whose agent
repeats one call, whose model gives up, or whose user asks again moves to the escalation tier, at
once when rewriting its context there costs little, else at the next user turn.
The decision is written into the ledger row; the served model's cost is compared with the model
asked for (the savings the dashboard shows). In ``mode: dry_run`` the model asked for is served and
the row records what routing would have done and what it would have cost.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenctl.errors import GatewayError
from tokenctl.metering.pricing import PriceBook
from tokenctl.routing.calibrate import LiveThreshold
from tokenctl.routing.catalog import Catalog
from tokenctl.routing.classifier import Classifier
from tokenctl.routing.settings import EscalationSettings, RouteRule, RoutingConfig
from tokenctl.routing.trajectory import Signals, user_texts
from tokenctl.types import Attribution, Principal, Route, Usage

log = logging.getLogger("tokenctl.routing")
ROUTE_HEADER = "x-tokenctl-route"
_MAX_SESSIONS = 100_000
_SHORT_TURN_CHARS = 200  # a newer message this short ("now do the same for bar") is judged with the task
_MIN_WORDS_TO_SCORE = 3  # "yes", "go on": too little text for the classifier; prompt length decides


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing looks at."""

    principal: Principal
    attribution: Attribution | None
    kind: str
    input_tokens: int
    text: str  # the turn's text: what the user wrote (tool results are not scored)
    header: str | None
    new_turn: bool = True  # False: the request sends tool results back inside a turn
    signals: Signals = field(default_factory=Signals)
    session: str | None = None  # the session id, or the key and the conversation's first prompt


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str
    reason: str
    routes: tuple[Route, ...]  # the deployments to try, in order (the tier's, then its escalation tiers')
    escalation: str | None = None  # why the session moved to the escalation tier, on the request that moved it
    score: float | None = None  # the classifier's score, when it judged this turn
    features: tuple[int, ...] = ()  # the hashed features it judged (kept for training on the ledger)


@dataclass(slots=True)
class SessionRoute:
    tier: str
    escalated: str | None = None  # the reason the session was escalated, once it was
    pending: str | None = None  # an escalation waiting for the next user turn


@dataclass(slots=True)
class _Pick:
    tier: str
    reason: str
    score: float | None = None
    features: tuple[int, ...] = ()


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
        self.live = _live_threshold(settings, classifier)
        self._routed: dict[str, bool] = {}  # model name -> matches routed_models (fnmatch is slow per request)
        self._tier_routes: dict[tuple[str, str, str], tuple[Route, ...]] = {}
        self._sessions: OrderedDict[str, SessionRoute] = OrderedDict()

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
        escalation = None
        if facts.header and facts.header in self.settings.tiers:
            pick: _Pick | None = _Pick(facts.header, f"header {ROUTE_HEADER}: {facts.header}")
        else:
            pick, escalation = self._for_session(requested, api, facts)
        if pick is None:
            return None
        routes = self._routes(pick.tier, requested, api)
        if not routes:
            log.warning(
                "routing: tier %r has no deployment that speaks %s; serving %s",
                pick.tier,
                api,
                requested.upstream_model,
            )
            return None
        return Decision(pick.tier, pick.reason, routes, escalation, pick.score, pick.features)

    # -- sessions and turns ---------------------------------------------------------------------

    def _for_session(self, requested: Route, api: str, facts: Facts) -> tuple[_Pick | None, str | None]:
        """The tier for this request of its session, and the escalation reason when it escalated now."""
        state = self._state(facts.session)
        if state is None:
            pick = self._pick_tier(facts)
            if pick is None:
                return None, None
            state = SessionRoute(pick.tier)
            if not facts.new_turn:
                pick.reason = f"a turn already under way, on the tier its text gets ({pick.reason})"
        elif not facts.new_turn:
            pick = _Pick(state.tier, "continues the turn on its tier")
        elif state.pending:
            state.tier, state.escalated, state.pending = self._escalation_tier(), state.pending, None
            pick = _Pick(state.tier, f"escalated at this turn: {state.escalated}")
        elif state.escalated:
            pick = _Pick(state.tier, f"the session was escalated: {state.escalated}")
        else:
            fresh = self._pick_tier(facts)
            if fresh is None:
                return None, None
            pick = self._stay_or_switch(state.tier, fresh, requested, api, facts.input_tokens)
            state.tier = pick.tier
        escalation = self._escalate(state, pick, requested, api, facts)
        if facts.session and self.settings.sticky_sessions:
            self._remember(facts.session, state)
        return pick, escalation

    def _state(self, session: str | None) -> SessionRoute | None:
        if not session or not self.settings.sticky_sessions:
            return None
        state = self._sessions.get(session)
        if state is not None:
            self._sessions.move_to_end(session)
        return state

    def _stay_or_switch(self, pinned: str, fresh: _Pick, requested: Route, api: str, context_tokens: int) -> _Pick:
        """Keep a session on its tier unless moving pays for the prompt cache it throws away."""
        if fresh.tier == pinned:
            return _Pick(pinned, f"the session stays on its tier ({fresh.reason})", fresh.score, fresh.features)
        here, there = self._routes(pinned, requested, api), self._routes(fresh.tier, requested, api)
        if not here or not there or self.prices is None:
            return _Pick(pinned, "the session stays on its tier (keeps its prompt cache)", fresh.score, fresh.features)
        cached_here = self._context_cost(here[0], context_tokens, cached=True)
        uncached_there = self._context_cost(there[0], context_tokens, cached=False)
        if uncached_there < cached_here:
            reason = (
                f"session moved from {pinned}: ${uncached_there:.4f} for the context uncached there "
                f"< ${cached_here:.4f} cached here ({fresh.reason})"
            )
            return _Pick(fresh.tier, reason, fresh.score, fresh.features)
        reason = (
            f"the session stays on its tier: moving to {fresh.tier} would cost ${uncached_there:.4f} "
            f"uncached vs ${cached_here:.4f} cached here"
        )
        return _Pick(pinned, reason, fresh.score, fresh.features)

    def _context_cost(self, route: Route, tokens: int, *, cached: bool) -> Decimal:
        assert self.prices is not None
        usage = Usage(cache_read_tokens=tokens) if cached else Usage(input_tokens=tokens)
        return self.prices.cost(route.provider, route.upstream_model, usage).total

    # -- escalation ---------------------------------------------------------------------------------

    def _escalation_tier(self) -> str:
        assert self.settings.escalation is not None
        return self.settings.escalation.to

    def _escalate(self, state: SessionRoute, pick: _Pick, requested: Route, api: str, facts: Facts) -> str | None:
        """Move a struggling session to the escalation tier: now, or at its next user turn."""
        settings = self.settings.escalation
        if settings is None or state.tier == settings.to or state.escalated or state.pending:
            return None
        why = struggling(facts.signals, settings, facts.new_turn)
        if why is None:
            return None
        why = f"{why} on {state.tier}"
        cost = self._switch_cost(settings.to, requested, api, facts.input_tokens)
        if facts.new_turn or (cost is not None and cost <= settings.at_once_max_usd):
            state.tier, state.escalated = settings.to, why
            pick.tier = settings.to
            pick.reason = f"escalated to {settings.to}: {why}"
            return why
        state.pending = why
        shown = "unpriced" if cost is None else f"${cost:.4f}"
        pick.reason += (
            f"; escalation to {settings.to} waits for the next user turn: {why} "
            f"(rewriting the context there now would cost {shown} > ${settings.at_once_max_usd})"
        )
        return None

    def _switch_cost(self, tier: str, requested: Route, api: str, context_tokens: int) -> Decimal | None:
        routes = self._routes(tier, requested, api)
        if not routes or self.prices is None:
            return None
        cost = self.prices.cost(routes[0].provider, routes[0].upstream_model, Usage(input_tokens=context_tokens))
        return cost.total if cost.priced else None

    # -- the tier for a user turn -------------------------------------------------------------------

    def _pick_tier(self, facts: Facts) -> _Pick | None:
        for rule in self.settings.rules:
            if _matches(rule, facts):
                return _Pick(rule.tier, rule.describe())
        if self.classifier is not None and self.settings.classifier is not None:
            return self._classify(self.classifier, facts)
        if self.settings.default_tier:
            return _Pick(self.settings.default_tier, "default tier")
        return None

    def _classify(self, classifier: Classifier, facts: Facts) -> _Pick:
        c = self.settings.classifier
        assert c is not None
        words = len(facts.text.split())
        score, coverage, found = classifier.judge(facts.text) if words >= _MIN_WORDS_TO_SCORE else (0.0, 0.0, [])
        if words < _MIN_WORDS_TO_SCORE or coverage < classifier.coverage_floor:
            pick = self._by_length(classifier, facts, words, coverage)
            pick.features = tuple(found)  # kept for training on this deployment's own traffic
            return pick
        threshold = self.threshold
        if self.live is not None:
            threshold = self.live.value()
            self.live.observe(score)
        tier = c.premium_tier if score >= threshold else c.cheap_tier
        sign = ">=" if score >= threshold else "<"
        return _Pick(tier, f"classifier {score:.3f} {sign} {threshold:.3f}", score, tuple(found))

    def _by_length(self, classifier: Classifier, facts: Facts, words: int, coverage: float) -> _Pick:
        """Out of the classifier's domain: the stated rule, longer turns to premium."""
        c = self.settings.classifier
        assert c is not None
        why = (
            f"{words} words"
            if words < _MIN_WORDS_TO_SCORE
            else f"coverage {coverage:.2f} < {classifier.coverage_floor:.2f}"
        )
        limit = classifier.length_threshold_chars
        if limit is None:
            return _Pick(c.premium_tier, f"outside the classifier's domain ({why}): premium")
        size = len(facts.text)
        tier = c.premium_tier if size >= limit else c.cheap_tier
        sign = ">=" if size >= limit else "<"
        return _Pick(tier, f"outside the classifier's domain ({why}): prompt length {size} {sign} {limit} chars")

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

    def _remember(self, session: str, state: SessionRoute) -> None:
        self._sessions[session] = state
        self._sessions.move_to_end(session)
        if len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)


def struggling(signals: Signals, settings: EscalationSettings, new_turn: bool) -> str | None:
    """Why the session looks stuck, or None."""
    if settings.failing_tool_results and signals.failing_results >= settings.failing_tool_results:
        return f"{signals.failing_results} failing tool results in a row"
    if settings.repeated_tool_calls and signals.repeated_calls >= settings.repeated_tool_calls:
        return f"{signals.repeated_tool} called {signals.repeated_calls} times in a row with the same arguments"
    if new_turn and settings.re_asked and signals.re_asked:
        return "the user asked the same thing again"
    if new_turn and settings.gave_up and signals.gave_up:
        return "the model said it could not do it"
    return None


def _live_threshold(settings: RoutingConfig, classifier: Classifier | None) -> LiveThreshold | None:
    c = settings.classifier
    if classifier is None or c is None or c.premium_share is None:
        return None
    return LiveThreshold(c.premium_share, c.calibration_window, c.calibration_warmup, classifier.threshold_for_share)


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


def turn_text(body: dict[str, Any], api: str) -> str:
    """What the classifier judges: the user's newest message (tool results are not the user's words),
    with the conversation's first message, the task as first stated, when the newest one is short."""
    items = body.get("input") if api == "openai.responses" else body.get("messages")
    if isinstance(items, str):
        return items
    if not isinstance(items, list):
        return ""
    texts = user_texts(items)
    if not texts:
        return ""
    newest = texts[-1]
    if len(texts) > 1 and len(newest) < _SHORT_TURN_CHARS:
        return texts[0] + "\n" + newest
    return newest
