"""Outcome feedback: a team's CI or review says whether a session's work was done (tests passed, PR merged).

``tokenctl router train --from-ledger`` learns from it which turns the cheap tier handled and which it did
not. Feedback names a session (or one request, whose session is then looked up)."""

from __future__ import annotations

import uuid
from typing import Any

from tokenctl.ledger.engine import Database

OUTCOMES = {"success": 1.0, "merged": 1.0, "passed": 1.0, "failure": 0.0, "failed": 0.0, "rejected": 0.0}


class FeedbackError(ValueError):
    """Feedback that cannot be recorded: the message says why."""


def parse_outcome(value: Any) -> float:
    if isinstance(value, str) and value.lower() in OUTCOMES:
        return OUTCOMES[value.lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise FeedbackError(f"outcome must be one of {', '.join(OUTCOMES)} or a number from 0 to 1 (got {value!r})")


def record_feedback(
    db: Database,
    *,
    session_id: str | None,
    request_id: str | None,
    outcome: float,
    source: str | None,
    key_id: str | None,
    now: float,
) -> dict[str, Any]:
    if not session_id and not request_id:
        raise FeedbackError("name the session_id (or a request_id) the feedback is about")
    if request_id and not session_id:
        row = db.execute("SELECT session_id FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"no request {request_id!r} in the ledger")
        session_id = row[0]
    elif session_id:
        known = db.execute("SELECT 1 FROM requests WHERE session_id = ? LIMIT 1", (session_id,)).fetchone()
        if known is None:
            raise FeedbackError(f"no session {session_id!r} in the ledger")
    feedback_id = f"fb_{uuid.uuid4().hex[:20]}"
    db.execute(
        "INSERT INTO feedback (id, ts, session_id, request_id, outcome, source, key_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (feedback_id, now, session_id, request_id, outcome, source, key_id),
    )
    return {"id": feedback_id, "session_id": session_id, "request_id": request_id, "outcome": outcome}


def session_outcomes(db: Database) -> dict[str, float]:
    """The latest feedback outcome per session."""
    rows = db.execute("SELECT session_id, outcome FROM feedback WHERE session_id IS NOT NULL ORDER BY ts").fetchall()
    return {session: float(outcome) for session, outcome in rows}
