"""Budget counters rebuilt from the ledger: at start-up and whenever budget rules change.

Store seeding is set-if-absent, so seeding twice (or from several replicas) never adds spend twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

from tokenctl.ledger.engine import Database
from tokenctl.ledger.spend import spend_by_member
from tokenctl.policy.budget import counter_name, drop_time
from tokenctl.policy.period import current_window, rolling_bucket_seconds
from tokenctl.policy.rules import BudgetRule
from tokenctl.policy.store import Seeds


def ledger_seeds(db: Database, rules: Sequence[BudgetRule], tz: ZoneInfo, now: float) -> Seeds:
    settled: dict[str, int] = {}
    drop_after: dict[str, float | None] = {}
    for rule in rules:
        window = current_window(rule.period, now, tz)
        bucket_seconds = rolling_bucket_seconds(rule.period) if rule.period.kind == "rolling" else None
        kwargs = {"funding": rule.name} if rule.pool else {"not_funding": rule.overflow_to}
        sums = spend_by_member(db, rule.scope, window.start, bucket_seconds=bucket_seconds, **kwargs)
        if rule.pool and rule.member_cap is not None:
            sums.update(
                spend_by_member(
                    db, rule.scope, window.start, bucket_seconds=bucket_seconds, funding=rule.name, slice_by_user=True
                )
            )
        for (member, user, bucket), amount in sums.items():
            if rule.match is not None and member != rule.match:
                continue
            if bucket_seconds is None:
                bucket = window.buckets[0]
            if bucket not in window.buckets:
                continue
            name = counter_name(rule, member, bucket, user)
            settled[name] = settled.get(name, 0) + amount
            drop_after[name] = drop_time(rule, bucket, window)
    return settled, drop_after
