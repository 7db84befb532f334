"""The policy stage of the request path: ``admit`` before a request is sent, ``settle`` when it ends.

``admit`` applies, in order: model policies (allow/deny, default-model rewrite, size limits,
clamps), rate limits, budget downgrades, the approval gate, and finally the budget reservation.
It may change the route and the body, and it raises the ``GatewayError`` that stops a request.
``settle`` charges the actual cost, releases the rest of the reservation and sends threshold
notifications. A request no rule covers costs two dictionary scans and no store call.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenctl.config import Config
from tokenctl.errors import (
    ApprovalRequired,
    BudgetExceeded,
    BudgetStoreUnavailable,
    GatewayError,
    LedgerUnavailable,
    LoopPaused,
    PolicyDenied,
    RateLimited,
    UnpricedModel,
)
from tokenctl.ledger.approvals import HeldRequest
from tokenctl.ledger.audit import AuditEvent
from tokenctl.ledger.record import LedgerEntry
from tokenctl.metering.pricing import PriceBook
from tokenctl.metering.stream import StreamMeter
from tokenctl.metering.usage import from_anthropic
from tokenctl.policy import estimate, models
from tokenctl.policy.approval import ApprovalDesk, fingerprint, triggered_rule
from tokenctl.policy.budget import BudgetAdmission, Budgets, Charge, covers, to_nanos, to_usd
from tokenctl.policy.loops import LoopRule, first_prompt_digest, trailing_repeats, trailing_similar_answers
from tokenctl.policy.notify import Notifier
from tokenctl.policy.rules import ApprovalRule, BudgetRule, ModelPolicy
from tokenctl.policy.store import SpendStore, StoreUnavailable
from tokenctl.policy.stream_budget import StreamBudget, first_share
from tokenctl.policy.turns import at_turn_boundary
from tokenctl.routing.catalog import Catalog
from tokenctl.types import Route

log = logging.getLogger("tokenctl.policy")
_NANOS_PER_USD = 1_000_000_000
EXPECTED_OUTPUT_TOKENS = 4_096  # what approvals expect a key with no answers yet to write

Recorder = Callable[[AuditEvent], None]


@dataclass(frozen=True, slots=True)
class RuleSet:
    budgets: tuple[BudgetRule, ...] = ()
    policies: tuple[ModelPolicy, ...] = ()
    approvals: tuple[ApprovalRule, ...] = ()


@dataclass(slots=True)
class Admission:
    """What ``admit`` decided for one request; ``settle`` needs it back."""

    budget: BudgetAdmission | None = None
    stream: StreamBudget | None = None  # a followed stream: its reservation grows with its output
    body_changed: bool = False
    token_buckets: list[tuple[str, int]] = field(default_factory=list)


class Enforcer:
    MAX_SESSIONS = 100_000

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        catalog: Catalog,
        prices: PriceBook,
        store: SpendStore,
        desk: ApprovalDesk,
        notifier: Notifier,
        audit: Recorder,
        clock: Callable[[], float] = time.time,
        ledger_health: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.settings = config.enforcement
        self.catalog = catalog
        self.prices = prices
        self.store = store
        self.desk = desk
        self.notifier = notifier
        self.audit = audit
        self.clock = clock
        self.ledger_health = ledger_health
        self.tz = ZoneInfo(self.settings.timezone)
        self.budgets = Budgets(rules.budgets, self.tz, store, self.settings.reservation_ttl_seconds)
        self.rules = rules
        self.loop_rules = config.loops
        self.loop_resumes: dict[tuple[str, str], int] = {}  # (subject, rule) -> repeats allowed (refreshed)
        self._ralph_seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # (subject, session) -> count at start
        self._user_wrote: OrderedDict[str, float] = OrderedDict()  # session -> when its user last wrote
        self._watches_velocity = any(
            r.spend_per_hour_usd is not None or r.spend_per_hour_x_baseline is not None for r in self.loop_rules
        )
        self._outputs: OrderedDict[str, deque[int]] = OrderedDict()  # key -> output tokens of its last answers
        self.velocity_baselines: dict[str, int] = {}  # key id -> nanos in its usual active hour (the watcher's)
        self._session_models: OrderedDict[str, str] = OrderedDict()  # session -> model it was downgraded to

    def merge_resumes(self, read: dict[tuple[str, str], int]) -> None:
        """Take in resumes read from the ledger. Each only ever allows more, so the larger of what was read and
        what is held wins: a refresh whose read began before a resume was written cannot undo it."""
        merged = dict(self.loop_resumes)
        for key, allowed in read.items():
            if allowed > merged.get(key, -1):
                merged[key] = allowed
        self.loop_resumes = merged

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.budgets.set_rules(rules.budgets)

    # -- admission --------------------------------------------------------------------------------

    async def admit(self, entry: LedgerEntry, body: dict[str, Any], raw: bytes, api: str) -> Admission:
        admission = await self.check(entry, body, raw, api)
        await self.reserve(admission, entry, body, raw, api)
        return admission

    async def check(self, entry: LedgerEntry, body: dict[str, Any], raw: bytes, api: str) -> Admission:
        """Loop rules and model policies: what every request must pass, one answered from the cache too."""
        admission = Admission()
        if self.rules.policies or self.loop_rules:
            await self._guarded(entry, self._check(entry, body, raw, api, admission))
        return admission

    async def reserve(
        self, admission: Admission, entry: LedgerEntry, body: dict[str, Any], raw: bytes, api: str
    ) -> None:
        """Budgets and approvals: what a request that goes to a provider must pass (a cache hit costs nothing)."""
        if self.rules.budgets or self.rules.approvals:
            await self._guarded(entry, self._reserve(entry, body, raw, api, admission))

    async def _guarded(self, entry: LedgerEntry, stage: Coroutine[Any, Any, None]) -> None:
        try:
            await stage
        except GatewayError as exc:
            self._audit_stop(entry, exc)
            raise
        except Exception as exc:  # the store failed: fail closed, never let spend through unchecked
            log.exception("budget store failed for request %s", entry.request_id)
            raise BudgetStoreUnavailable(
                "tokenctl cannot check budgets right now (budget store unavailable); the request was not sent"
            ) from exc

    async def readmit(
        self, admission: Admission, entry: LedgerEntry, body: dict[str, Any], body_size: int, api: str
    ) -> None:
        """A fallback to another deployment: its reservation is made again at that deployment's price (the
        cheap tier's reservation would not cover a dearer one). Raises BudgetExceeded if it does not fit."""
        if admission.budget is None:
            return
        assert entry.principal is not None and entry.route is not None
        old, admission.budget = admission.budget, None
        await self.budgets.settle(old, 0, self.clock())  # released: nothing was spent on the failed attempt
        self._check_priced(entry.route, old.charges)
        now = self.clock()
        _, reserved, admission.stream = self._plan(entry, body, api, estimate.input_tokens(body_size))
        session = entry.attribution.session_id if entry.attribution else None
        try:
            admission.budget = await self.budgets.admit(
                entry.request_id, entry.principal, session, to_nanos(reserved), now
            )
        except GatewayError as exc:
            self._audit_stop(entry, exc)
            raise
        entry.reserved_usd = reserved
        entry.funding = admission.budget.pool if admission.budget is not None else None

    async def _check(
        self, entry: LedgerEntry, body: dict[str, Any], raw: bytes, api: str, admission: Admission
    ) -> None:
        assert entry.principal is not None and entry.route is not None
        principal, now, body_size = entry.principal, self.clock(), len(raw)
        session = entry.attribution.session_id if entry.attribution else None
        in_tokens = estimate.input_tokens(body_size)
        if self.loop_rules:
            await self._check_loops(entry, body, api, session)
        policies = models.applicable(self.rules.policies, principal, session)
        if policies:
            models.check_model(policies, entry.route.requested_model, entry.route.upstream_model)
            self._rewrite(entry, policies, api)
            models.check_size(policies, body_size, in_tokens)
            changes = models.clamp(policies, body, api, entry.route.provider.kind)
            if changes:
                admission.body_changed = True
                self._decide(entry, "clamp", ", ".join(changes), rule=_rule_names(changes))
            await self._rate_limit(entry, policies, in_tokens, now, admission)

    async def _reserve(
        self, entry: LedgerEntry, body: dict[str, Any], raw: bytes, api: str, admission: Admission
    ) -> None:
        assert entry.principal is not None and entry.route is not None
        principal, now = entry.principal, self.clock()
        session = entry.attribution.session_id if entry.attribution else None
        in_tokens = estimate.input_tokens(len(raw))
        charges = self.budgets.charges_for(principal, session, now) if self.rules.budgets else []
        if charges:
            self._check_ledger()
            self._check_priced(entry.route, charges)
        if any(c.rule.action == "downgrade" for c in charges):
            await self._maybe_downgrade(entry, body, api, charges, session, now)
        if not (charges or self.rules.approvals):
            return
        worst, reserved, stream = self._plan(entry, body, api, in_tokens)
        if self.rules.approvals:
            await self._approval_gate(entry, self._expected_cost(entry, body, api, in_tokens, worst), in_tokens, raw)
        if charges:
            admission.stream = stream
            budget = await self.budgets.admit(entry.request_id, principal, session, to_nanos(reserved), now, charges)
            admission.budget = budget
            entry.reserved_usd = reserved
            if budget is not None and budget.pool:
                entry.funding = budget.pool
                self._decide(entry, "pool", f"drew on pool {budget.pool}", rule=budget.pool, quiet=True)

    async def _check_loops(self, entry: LedgerEntry, body: dict[str, Any], api: str, session: str | None) -> None:
        """Pause (or flag) an agent repeating one tool call, or a script restarting it with one prompt."""
        assert entry.principal is not None
        key = entry.principal.key_id
        run, tool = trailing_repeats(body, api)
        ralph: tuple[str, int] | None = None  # (subject, sessions) once counted for this request
        watching = any(r.unattended_minutes is not None for r in self.loop_rules)
        unattended = self._unattended_minutes(body, api, session) if watching else 0
        for rule in self.loop_rules:
            if covers(rule, entry.principal, session) is None:
                continue
            if rule.unattended_minutes is not None:
                if session is None or unattended < rule.unattended_minutes:
                    continue
                subject, count = session, unattended
                evidence = f"the session ran unattended for {unattended} min (tool-result steps only)"
            elif rule.near_identical_turns is not None:
                count = trailing_similar_answers(body, api, rule.near_identical_turns)
                if count < rule.near_identical_turns:
                    continue
                subject = session or f"key:{key}"
                evidence = f"the model gave {count} near-identical answers in a row"
            elif rule.spend_per_hour_usd is not None:
                subject = session or f"key:{key}"
                count = await self._spent_last_hour(subject) // _NANOS_PER_USD
                if count < rule.spend_per_hour_usd:
                    continue
                evidence = f"spent ${count} in the last hour (rule: ${rule.spend_per_hour_usd}/hour)"
            elif rule.spend_per_hour_x_baseline is not None:
                usual = self.velocity_baselines.get(key)
                if usual is None:
                    continue  # no baseline yet: too few active hours in the ledger
                subject = f"key:{key}"
                spent = await self._spent_last_hour(subject)
                count = spent // _NANOS_PER_USD
                if spent < max(rule.spend_per_hour_x_baseline * usual, rule.min_usd * _NANOS_PER_USD):
                    continue
                evidence = (
                    f"spent ${count} in the last hour (${spent / _NANOS_PER_USD:.2f}), {spent / max(usual, 1):.1f}x "
                    f"its usual ${usual / _NANOS_PER_USD:.2f}/hour (rule: {rule.spend_per_hour_x_baseline}x, "
                    f"at least ${rule.min_usd})"
                )
            elif rule.repeated_tool_calls is not None:
                if run < rule.repeated_tool_calls:
                    continue
                subject = session or f"key:{key}"
                evidence = f"{tool} called {run} times in a row with the same arguments"
                count = run
            else:
                if ralph is None:
                    ralph = await self._ralph_sessions(body, api, session, key, rule.window_minutes)
                    if ralph is None:
                        return
                subject, count = ralph
                if count < (rule.same_first_prompt_sessions or 0):
                    continue
                evidence = f"sessions started {count} times with the same first prompt in {rule.window_minutes} min"
            allowed = self.loop_resumes.get((subject, rule.name), 0)
            if count > allowed:
                await self._loop_action(entry, rule, subject, evidence, allowed)

    def _unattended_minutes(self, body: dict[str, Any], api: str, session: str | None) -> int:
        """Whole minutes since the session's user last wrote (0 at a user turn, or for a session not seen before)."""
        if session is None:
            return 0
        now = self.clock()
        if at_turn_boundary(body, api) or session not in self._user_wrote:
            self._user_wrote[session] = now
        self._user_wrote.move_to_end(session)
        if len(self._user_wrote) > self.MAX_SESSIONS:
            self._user_wrote.popitem(last=False)
        return int((now - self._user_wrote[session]) // 60)

    def _velocity_subjects(self, entry: LedgerEntry) -> set[str]:
        """Whose spend per hour the loop rules watch for this request: its session (or key), and its key."""
        assert entry.principal is not None
        key = f"key:{entry.principal.key_id}"
        session = entry.attribution.session_id if entry.attribution else None
        subjects = set()
        for rule in self.loop_rules:
            if rule.spend_per_hour_usd is not None:
                subjects.add(session or key)
            elif rule.spend_per_hour_x_baseline is not None:
                subjects.add(key)
        return subjects

    async def _record_spend(self, entry: LedgerEntry) -> None:
        """Add a settled request's cost to the spend per hour of the subjects loop rules watch (budget store: a
        fleet on Redis sums every replica). Best effort: a store that cannot be reached loses this one amount."""
        nanos = to_nanos(entry.cost.total) if entry.cost is not None else 0
        if nanos <= 0 or entry.principal is None:
            return
        for subject in self._velocity_subjects(entry):
            try:
                await self.store.window_sum(f"spend:{subject}", nanos, 60, self.clock())
            except StoreUnavailable:
                log.warning("spend per hour of %s not counted: the budget store is unavailable", subject)

    async def _spent_last_hour(self, subject: str) -> int:
        """Nano-dollars the subject's requests settled within the last 60 minutes (per minute)."""
        return await self.store.window_sum(f"spend:{subject}", 0, 60, self.clock())

    async def _ralph_sessions(
        self, body: dict[str, Any], api: str, session: str | None, key: str, window_minutes: int
    ) -> tuple[str, int] | None:
        """(subject, distinct sessions of this key with this request's first prompt in the window)."""
        digest = first_prompt_digest(body, api)
        if digest is None or session is None:
            return None
        subject = f"key:{key}:{digest}"
        seen = self._ralph_seen.get((subject, session))
        if seen is not None:  # a later turn of a session already counted: its count as at its start
            return subject, seen
        count = await self.store.distinct_count(f"fp:{subject}", session, window_minutes * 60.0, self.clock())
        self._ralph_seen[(subject, session)] = count
        if len(self._ralph_seen) > self.MAX_SESSIONS:
            self._ralph_seen.popitem(last=False)
        return subject, count

    async def _loop_action(self, entry: LedgerEntry, rule: LoopRule, subject: str, evidence: str, allowed: int) -> None:
        assert entry.principal is not None
        event = AuditEvent(
            entry.principal.key_id, f"loop_{rule.action}", rule.name, subject, entry.request_id, evidence, self.clock()
        )
        if rule.action == "alert":
            if await self.store.first_crossing(f"loop:{rule.name}:{subject}:{allowed}"):
                self.audit(event)
                self.notifier.send(
                    self.settings.webhook_url, f"tokenctl: loop rule {rule.name} ({subject}): {evidence}"
                )
            self._decide(entry, "loop", f"{rule.name}: {evidence}", rule=rule.name, quiet=True)
            return
        if rule.action == "throttle":
            await self._throttle(entry, rule, subject, evidence, event, allowed)
            return
        self.audit(event)
        raise LoopPaused(
            f"tokenctl: loop rule {rule.name!r} paused {_whose(subject)}: {evidence}. If the agent is not stuck, "
            f"resume it with `tokenctl loops resume {subject}` (or ask your administrator).",
            rule=rule.name,
        )

    def cache_alarm(self, entry: LedgerEntry, session: str, text: str) -> None:
        """A session that keeps missing the prompt cache: one audit entry and webhook per cause."""
        assert entry.principal is not None
        self.audit(
            AuditEvent(entry.principal.key_id, "cache_alarm", None, session, entry.request_id, text, self.clock())
        )
        self.notifier.send(self.settings.webhook_url, f"tokenctl: prompt cache of session {session}: {text}")

    async def _throttle(
        self, entry: LedgerEntry, rule: LoopRule, subject: str, evidence: str, event: AuditEvent, allowed: int
    ) -> None:
        """Slow the subject to ``throttle_per_minute`` while the rule holds: 429 with Retry-After beyond it."""
        if await self.store.first_crossing(f"loop:{rule.name}:{subject}:{allowed}"):
            self.audit(event)
            self.notifier.send(self.settings.webhook_url, f"tokenctl: loop rule {rule.name} ({subject}): {evidence}")
        wait = await self.store.take_rate(f"loop:{rule.name}:{subject}", rule.throttle_per_minute, 1, self.clock())
        self._decide(entry, "loop", f"{rule.name}: {evidence}; throttled", rule=rule.name, quiet=True)
        if wait > 0:
            raise RateLimited(
                f"tokenctl: loop rule {rule.name!r} is slowing this session to {rule.throttle_per_minute} "
                f"requests a minute: {evidence}. Resume it with `tokenctl loops resume {subject}`.",
                retry_after=wait,
            )

    def _plan(
        self, entry: LedgerEntry, body: dict[str, Any], api: str, in_tokens: int
    ) -> tuple[Decimal, Decimal, StreamBudget | None]:
        """(the request's worst case, what to reserve now, how a followed stream grows its reservation)."""
        assert entry.route is not None
        if api == "anthropic.count_tokens":
            return Decimal(0), Decimal(0), None  # counting tokens is not billed
        route = entry.route
        limit = estimate.output_limit(body, api, self.settings.default_max_output_tokens, route.upstream_model)
        searches = estimate.web_searches(body, api)
        rates = self.prices.worst_rates(  # priced once at this input size: each amount below is arithmetic
            route.provider,
            route.upstream_model,
            in_tokens,
            estimate.requested_tier(body, api),
            estimate.audio(body, api),
        )

        def cost(inputs: int, outputs: int, fees: int = searches) -> Decimal:
            return rates.cost(inputs, outputs, fees)

        worst = cost(in_tokens, limit)
        step = self.settings.stream_step_tokens
        streams = body.get("stream") is True
        native = route.upstream_api is None and route.provider.kind == "anthropic"
        assemble = not streams and api == "anthropic.messages" and native
        first = first_share(body, api, route.provider.kind, route.upstream_model, limit, step, streams or assemble)
        if assemble and first is not None and first >= limit:
            first = None  # the first step covers all the output it may write: sent as asked, its worst case held
        if first is None or estimate.input_unknown(body, api):
            return worst, self._reservation(entry, body, api, worst), None
        reserved = min(cost(in_tokens, first), self.settings.reservation_ceiling_usd)
        # What it holds for the input: all of the estimate, or less when the ceiling cut it (then Anthropic's
        # message_start grows it to the real count before any output).
        for_input = max(0, to_nanos(reserved) - to_nanos(cost(0, first, 0)))
        followed = StreamBudget(step, to_nanos(cost(0, step, 0)), first, limit, for_input, assemble=assemble)
        return worst, reserved, followed

    def _expected_cost(
        self, entry: LedgerEntry, body: dict[str, Any], api: str, in_tokens: int, worst: Decimal
    ) -> Decimal:
        """What approvals compare with ``above_usd``: the input as sent plus the output this key usually writes
        (the median of its last answers in this process; ``EXPECTED_OUTPUT_TOKENS`` before it has any), never
        more than the worst case. Not the worst case itself: Claude Code asks for up to 64,000 output tokens on
        every turn, so a rule on the worst case would hold every "say hi"."""
        assert entry.principal is not None and entry.route is not None
        usual = self._outputs.get(entry.principal.key_id)
        output = int(statistics.median(usual)) if usual else EXPECTED_OUTPUT_TOKENS
        limit = estimate.output_limit(body, api, self.settings.default_max_output_tokens, entry.route.upstream_model)
        expected = estimate.worst_case_cost(
            self.prices,
            entry.route,
            in_tokens,
            min(output, limit),
            estimate.web_searches(body, api),
            estimate.requested_tier(body, api),
            estimate.audio(body, api),
        )
        return min(expected, worst)

    def _note_output(self, entry: LedgerEntry) -> None:
        if entry.principal is None or entry.status != 200 or not entry.usage.output_tokens:
            return
        key = entry.principal.key_id
        seen = self._outputs.get(key)
        if seen is None:
            seen = self._outputs[key] = deque(maxlen=50)
            if len(self._outputs) > self.MAX_SESSIONS:
                self._outputs.popitem(last=False)
        seen.append(entry.usage.output_tokens)

    @staticmethod
    def keep_up_due(admission: Admission, meter: StreamMeter) -> bool:
        """Whether ``keep_up`` has anything to do after the events the meter has seen (checked without a call into
        the store: most events need nothing)."""
        followed = admission.stream
        if followed is None or admission.budget is None:
            return False
        if not followed.input_checked and meter.start_usage() is not None:
            return True
        return followed.wants_more(meter.output_tokens_upper())

    async def keep_up(self, admission: Admission, entry: LedgerEntry, meter: StreamMeter) -> GatewayError | None:
        """Called as a followed stream's events pass: grow its reservation to what the output needs (and to the
        real input, once Anthropic's message_start says it). Answers why the stream must stop, or None."""
        if not self.keep_up_due(admission, meter):
            return None  # the common case: nothing to do
        followed, budget = admission.stream, admission.budget
        assert followed is not None and budget is not None
        seen = meter.output_tokens_upper()
        start = meter.start_usage() if not followed.input_checked else None
        try:
            if start is not None:
                followed.input_checked = True
                await self._grow_to_input(admission, entry, start)
            while followed.wants_more(seen):
                await self.budgets.extend(budget, budget.amount + followed.step_nanos, self.clock())
                followed.covered_tokens += followed.step_tokens
                followed.steps += 1
        except BudgetExceeded as exc:
            self._audit_stop(entry, exc)
            self._decide(entry, "budget", f"stopped mid-stream: {exc.budget} exhausted", rule=exc.budget, quiet=True)
            return exc
        except Exception:  # the store failed: stop rather than let the stream run on unchecked
            log.exception("growing the reservation of request %s failed", entry.request_id)
            return BudgetStoreUnavailable(
                "tokenctl cannot check budgets right now (budget store unavailable); the answer was stopped here"
            )
        finally:
            entry.reserved_usd = to_usd(budget.amount)
        return None

    async def _grow_to_input(self, admission: Admission, entry: LedgerEntry, start: dict[str, Any]) -> None:
        """The provider counted more input than the body suggested (dense text, documents): reserve the rest."""
        assert admission.stream is not None and admission.budget is not None and entry.route is not None
        actual = to_nanos(
            self.prices.cost(entry.route.provider, entry.route.upstream_model, from_anthropic(start)).total
        )
        more = actual - admission.stream.input_nanos
        if more > 0:
            admission.stream.input_nanos = actual
            await self.budgets.extend(admission.budget, admission.budget.amount + more, self.clock())

    def _reservation(self, entry: LedgerEntry, body: dict[str, Any], api: str, worst: Decimal) -> Decimal:
        """What budgets reserve: the worst case, at most the ceiling; the ceiling itself (the stated worst case)
        when part of the input is not in the body (server-held context, files fetched by URL or id)."""
        ceiling = self.settings.reservation_ceiling_usd
        if worst and estimate.input_unknown(body, api):
            self._decide(entry, "reserve", f"input not in the body: reserved the ceiling ${ceiling}", quiet=True)
            return ceiling
        return min(worst, ceiling)

    def _check_priced(self, route: Route, charges: Sequence[Charge]) -> None:
        """A hard cap holds only if the request has a price: an unknown model is refused under a blocking
        budget (``enforcement.unpriced_models: refuse``, the default) instead of being counted at $0."""
        if self.settings.unpriced_models != "refuse" or self.prices.knows(route.provider, route.upstream_model):
            return
        blocking = next((c.rule.name for c in charges if c.claim.limit is not None), None)
        if blocking is None:
            return
        raise UnpricedModel(
            f"tokenctl has no price for model {route.upstream_model!r}, so budget {blocking!r} cannot be enforced "
            "on it; the request was not sent. An administrator can add the model to the price override file "
            "(pricing.overrides), or set enforcement.unpriced_models to a model to price it as"
        )

    def _check_ledger(self) -> None:
        """Budgets hold only while spend is recorded: fail closed when the ledger is behind or cannot write."""
        reason = self.ledger_health()
        if reason is not None:
            raise LedgerUnavailable(
                f"tokenctl cannot record spend right now ({reason}); requests under budgets are refused until "
                "it recovers"
            )

    def _rewrite(self, entry: LedgerEntry, policies: Sequence[ModelPolicy], api: str) -> None:
        assert entry.route is not None and entry.principal is not None
        found = models.rewrite_target(policies, entry.route.requested_model, entry.principal)
        if found is None:
            return
        policy, target = found
        route = self._route_to(entry.route, target, api)
        if route is None:
            return
        _reroute(entry, route)
        self._decide(entry, "rewrite", f"{entry.requested_model}->{route.upstream_model}", rule=policy.name)

    def _route_to(self, current: Route, target: str, api: str) -> Route | None:
        try:
            resolved = self.catalog.resolve(target, api)
        except GatewayError as exc:
            log.warning("policy target %r cannot serve %s: %s", target, api, exc.message)
            return None
        return Route(resolved.provider, current.requested_model, resolved.upstream_model, resolved.upstream_api)

    async def _rate_limit(
        self, entry: LedgerEntry, policies: Sequence[ModelPolicy], in_tokens: int, now: float, admission: Admission
    ) -> None:
        assert entry.principal is not None
        session = entry.attribution.session_id if entry.attribution else None
        for p in policies:
            member = covers(p, entry.principal, session)
            if p.tokens_per_minute is not None:
                bucket = f"tpm:{p.name}:{member}"
                wait = await self.store.take_rate(bucket, p.tokens_per_minute, in_tokens, now)
                if wait > 0:
                    raise RateLimited(
                        f"tokenctl policy {p.name!r}: {p.scope} {member} is over "
                        f"{p.tokens_per_minute:,} tokens per minute; retry in {wait:.1f} s",
                        wait,
                    )
                admission.token_buckets.append((bucket, p.tokens_per_minute))
            if p.requests_per_minute is not None:
                wait = await self.store.take_rate(f"rpm:{p.name}:{member}", p.requests_per_minute, 1, now)
                if wait > 0:
                    raise RateLimited(
                        f"tokenctl policy {p.name!r}: {p.scope} {member} is over "
                        f"{p.requests_per_minute:,} requests per minute; retry in {wait:.1f} s",
                        wait,
                    )

    async def _maybe_downgrade(
        self, entry: LedgerEntry, body: dict[str, Any], api: str, charges: list[Charge], session: str | None, now: float
    ) -> None:
        assert entry.route is not None
        sticky = self._session_models.get(session) if session else None
        if sticky is not None:
            route = self._route_to(entry.route, sticky, api)
            if route is not None and route.upstream_model != entry.route.upstream_model:
                _reroute(entry, route)
                self._decide(entry, "downgrade", f"session stays on {sticky}", quiet=True)
            return
        wanted = None
        for charge in charges:
            if (
                charge.rule.action == "downgrade"
                and await self.budgets.spent_share(charge, now) >= charge.rule.downgrade_at
            ):
                wanted = charge
                break
        if wanted is None:
            return
        target = wanted.rule.downgrade_to
        assert target is not None
        if session and not at_turn_boundary(body, api):
            self._decide(
                entry,
                "downgrade_deferred",
                f"to {target} at the session's next turn",
                rule=wanted.rule.name,
                quiet=True,
            )
            return
        route = self._route_to(entry.route, target, api)
        if route is None or route.upstream_model == entry.route.upstream_model:
            return
        _reroute(entry, route)
        if session:
            self._remember_session(session, target)
        share = int(wanted.rule.downgrade_at * 100)
        self._decide(
            entry,
            "downgrade",
            f"{entry.requested_model}->{route.upstream_model}: budget "
            f"{wanted.rule.name} ({wanted.rule.scope} {wanted.member}) at {share}% or more",
            rule=wanted.rule.name,
        )

    def _remember_session(self, session: str, model: str) -> None:
        self._session_models[session] = model
        self._session_models.move_to_end(session)
        while len(self._session_models) > self.MAX_SESSIONS:
            self._session_models.popitem(last=False)

    async def _approval_gate(self, entry: LedgerEntry, worst: Decimal, in_tokens: int, raw: bytes) -> None:
        assert entry.principal is not None and entry.route is not None
        p = entry.principal
        session = entry.attribution.session_id if entry.attribution else None
        found = triggered_rule(self.rules.approvals, p, session, worst, in_tokens)
        if found is None:
            return
        rule, reason = found
        held = HeldRequest(
            rule.name,
            fingerprint(p.key_id, raw),
            p.key_id,
            p.user,
            p.team,
            p.project,
            entry.route.upstream_model,
            worst,
            in_tokens,
            reason,
            session,
        )
        try:
            approval_id, _ = await self.desk.check(held)
        except ApprovalRequired as exc:
            entry.approval_id = exc.approval_id
            if getattr(exc, "new", False):
                self.notifier.send(
                    self.settings.approvals_webhook_url,
                    f"tokenctl approval needed: {exc.approval_id} — {p.user or p.key_id} "
                    f"({p.team or 'no team'}) wants {held.model}; {reason}. "
                    f"`tokenctl approvals approve {exc.approval_id}` or deny.",
                )
                self.audit(
                    AuditEvent(
                        p.key_id,
                        "approval.requested",
                        rule.name,
                        exc.approval_id,
                        entry.request_id,
                        reason,
                        self.clock(),
                    )
                )
            raise
        entry.approval_id = approval_id
        self._decide(entry, "approval.used", f"let through by {approval_id}", rule=rule.name)

    # -- decisions and audit ----------------------------------------------------------------------

    def _decide(
        self, entry: LedgerEntry, action: str, detail: str, *, rule: str | None = None, quiet: bool = False
    ) -> None:
        """Note a decision on the ledger row; unless ``quiet``, also in the audit log."""
        if entry.policy is None:
            entry.policy = []
        entry.policy.append(f"{action}: {detail}")
        if not quiet:
            p = entry.principal
            self.audit(
                AuditEvent(
                    p.key_id if p else "-", action, rule, _subject(entry), entry.request_id, detail, self.clock()
                )
            )

    def _audit_stop(self, entry: LedgerEntry, exc: GatewayError) -> None:
        if isinstance(exc, ApprovalRequired):
            return  # audited where it was created
        action = {BudgetExceeded: "block", RateLimited: "rate_limit", PolicyDenied: "deny"}.get(type(exc))
        if action is None:
            return
        rule = getattr(exc, "budget", None)
        p = entry.principal
        self.audit(
            AuditEvent(
                p.key_id if p else "-", action, rule, _subject(entry), entry.request_id, exc.message, self.clock()
            )
        )
        if isinstance(exc, BudgetExceeded):
            self._notify_block(exc)

    def _notify_block(self, exc: BudgetExceeded) -> None:
        """The 100 % notification fires on the first block of a window even if settled spend stays just below."""
        self.notifier.send(
            self.settings.webhook_url, f"tokenctl: budget {exc.budget} is blocking requests. {exc.message}"
        )

    # -- settlement -------------------------------------------------------------------------------

    async def settle(self, admission: Admission, entry: LedgerEntry) -> None:
        if self._watches_velocity:
            await self._record_spend(entry)
        if self.rules.approvals:
            self._note_output(entry)
        if admission.budget is None and not admission.token_buckets:
            return  # nothing was reserved or taken for this request
        actual = to_nanos(entry.cost.total) if entry.cost is not None else 0
        now = self.clock()
        if admission.budget is not None:
            totals = await self.budgets.settle(admission.budget, actual, now)
            for charge, pct, settled in await self.budgets.crossed_thresholds(admission.budget, totals or ()):
                self._threshold_reached(charge, pct, settled, entry)
        output = entry.usage.output_tokens
        for bucket, per_minute in admission.token_buckets:
            if output:
                await self.store.take_rate(bucket, per_minute, output, now, force=True)

    def _threshold_reached(self, charge: Charge, pct: int, settled: int, entry: LedgerEntry) -> None:
        rule = charge.rule
        resets = (
            "never"
            if charge.window.resets_at is None
            else time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(charge.window.resets_at))
        )
        text = (
            f"tokenctl: budget {rule.name} ({rule.scope} {charge.member}, {rule.period.label}) reached {pct}%: "
            f"${to_usd(settled)} of ${rule.limit}; resets {resets}"
        )
        self.notifier.send(self.settings.webhook_url, text)
        self.audit(
            AuditEvent(
                "tokenctl", "notify", rule.name, f"{rule.scope} {charge.member}", entry.request_id, text, self.clock()
            )
        )


def _subject(entry: LedgerEntry) -> str:
    p = entry.principal
    if p is None:
        return "-"
    return (
        " ".join(f"{k}={v}" for k, v in (("user", p.user), ("team", p.team), ("project", p.project)) if v) or p.key_id
    )


def _whose(subject: str) -> str:
    return "this key's requests" if subject.startswith("key:") else "this session"


def _rule_names(changes: list[str]) -> str:
    names = sorted({c.rsplit("(", 1)[-1].rstrip(")") for c in changes})
    return ",".join(names)


def _reroute(entry: LedgerEntry, route: Route) -> None:
    """Serve the request from another model; the ledger keeps the first route to price what it would have cost."""
    if entry.original_route is None:
        entry.original_route = entry.route
    entry.saving_source = "policy"
    entry.route = route
