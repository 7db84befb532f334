"""Training rows from the deployment's own traffic: which user turns the cheap tier handled, and which it did not.

Only turns the cheap tier actually served carry evidence (a premium answer says nothing about whether the
cheap one would have done). A turn is labelled "needed premium" when the session escalated before its next
user turn (the cheap model struggled, or the user asked again), when feedback for the session says the
work failed, or when the turn ended in an error or the client gave up; "the cheap tier was enough" when
feedback says the work succeeded, or when the session went on to another user turn without any of that.
The classifier's inputs come from the ``route_features`` column (hashed feature ids, never text).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.ledger.feedback import session_outcomes

Row = tuple[list[int], float, int]
_QUERY = (
    "SELECT session_id, ts, route_tier, route_escalation, route_features, route_dry_run, outcome, status"
    " FROM requests WHERE route_tier IS NOT NULL AND session_id IS NOT NULL{since} ORDER BY session_id, ts"
)


@dataclass
class LedgerLabels:
    rows: list[Row] = field(default_factory=list)
    why: dict[str, int] = field(default_factory=dict)  # label reason -> turns

    def count(self, reason: str) -> None:
        self.why[reason] = self.why.get(reason, 0) + 1

    @property
    def positives(self) -> int:
        return sum(label for _, _, label in self.rows)


def labels_from_ledger(db: Database, cheap_tiers: set[str], since: str | None = None) -> LedgerLabels:
    query = _QUERY.format(since=" AND ts >= ?" if since else "")
    records = db.execute(query, (since,) if since else ()).fetchall()
    feedback = session_outcomes(db)
    out = LedgerLabels()
    for session, group in groupby(records, key=lambda r: r[0]):
        _label_session(list(group), feedback.get(session), cheap_tiers, out)
    return out


def _label_session(records: list[Any], feedback: float | None, cheap: set[str], out: LedgerLabels) -> None:
    turns = [i for i, r in enumerate(records) if r[4]]  # rows the classifier judged: user turns
    for n, start in enumerate(turns):
        tier, features, dry_run = records[start][2], records[start][4], records[start][5]
        if tier not in cheap or dry_run:
            out.count("not served by the cheap tier (no evidence)")
            continue
        following = turns[n + 1] if n + 1 < len(turns) else None
        span = records[start + 1 : (following + 1) if following is not None else len(records)]
        label, reason = _judge(
            records[start : (following if following is not None else len(records))],
            span,
            feedback,
            following is not None,
        )
        out.count(reason)
        if label is not None:
            out.rows.append(([int(x) for x in features.split(",")], 0.0, label))


def _judge(turn: list[Any], after: Iterable[Any], feedback: float | None, went_on: bool) -> tuple[int | None, str]:
    if any(r[3] for r in after):
        return 1, "escalated before the next user turn"
    if feedback is not None:
        return (1, "feedback: failed") if feedback < 0.5 else (0, "feedback: succeeded")
    last = turn[-1]
    if last[6] in ("client_disconnected", "stream_failed") or (last[7] or 0) >= 500:
        return 1, "the turn ended in an error or the client gave up"
    if went_on:
        return 0, "the session went on without escalating"
    return None, "the session's last turn, no feedback (unknown)"
