"""Approval records: a held request, the decision on it, and what an approval lets through.

An approval lets *that request* through once (matched by fingerprint: key and body); for a request of an
agent session, *that session* (the same key and session id: its retries and its next turns) for
``SESSION_GRANT_SECONDS``; or, when approved for the user, that user's requests until a time and up to an
amount.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import transaction

_FIELDS = (
    "approval_id",
    "created_at",
    "status",
    "rule",
    "fingerprint",
    "key_id",
    "user",
    "team",
    "project",
    "model",
    "estimated_usd",
    "input_tokens",
    "reason",
    "decided_by",
    "decided_at",
    "note",
    "grant_scope",
    "grant_until",
    "grant_usd",
    "grant_used_usd",
    "session_id",
)
SESSION_GRANT_SECONDS = 12 * 3600  # an approved session's turns pass for this long


class ApprovalNotFound(LookupError):
    pass


class ApprovalStateError(ValueError):
    """The approval is not pending (already decided)."""


@dataclass(frozen=True, slots=True)
class HeldRequest:
    rule: str
    fingerprint: str
    key_id: str
    user: str | None
    team: str | None
    project: str | None
    model: str
    estimated_usd: Decimal
    input_tokens: int
    reason: str
    session_id: str | None = None


def _as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_FIELDS, row, strict=True))


_SELECT = f"SELECT {', '.join(_FIELDS)} FROM approvals"


def create_pending(db: Database, held: HeldRequest) -> dict[str, Any]:
    approval_id = "apr_" + secrets.token_hex(6)
    with transaction(db):
        db.execute(
            "INSERT INTO approvals (approval_id, created_at, status, rule, fingerprint, key_id, user, team, project,"
            " model, estimated_usd, input_tokens, reason, session_id)"
            " VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                approval_id,
                time.time(),
                held.rule,
                held.fingerprint,
                held.key_id,
                held.user,
                held.team,
                held.project,
                held.model,
                str(held.estimated_usd),
                held.input_tokens,
                held.reason,
                held.session_id,
            ),
        )
    return get_approval(db, approval_id)


def get_approval(db: Database, approval_id: str) -> dict[str, Any]:
    row = db.execute(_SELECT + " WHERE approval_id = ?", (approval_id,)).fetchone()
    if row is None:
        raise ApprovalNotFound(f"no approval with id {approval_id!r}")
    return _as_dict(row)


def list_approvals(db: Database, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    if status:
        rows = db.execute(_SELECT + " WHERE status = ? ORDER BY created_at DESC LIMIT ?", (status, limit))
    else:
        rows = db.execute(_SELECT + " ORDER BY created_at DESC LIMIT ?", (limit,))
    return [_as_dict(r) for r in rows]


def decide(
    db: Database,
    approval_id: str,
    *,
    approve: bool,
    by: str,
    note: str | None = None,
    for_user_seconds: float | None = None,
    for_user_usd: Decimal | None = None,
    only_request: bool = False,
) -> dict[str, Any]:
    """Approve or deny a pending approval. ``for_user_*`` turns an approval into a grant for the user; an
    approval of a session's request covers the session, unless ``only_request``."""
    now = time.time()
    user_grant = approve and (for_user_seconds is not None or for_user_usd is not None)
    with transaction(db):
        row = db.execute("SELECT status, session_id FROM approvals WHERE approval_id = ?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalNotFound(f"no approval with id {approval_id!r}")
        if row[0] != "pending":
            raise ApprovalStateError(f"approval {approval_id} is already {row[0]}")
        scope = "user" if user_grant else "session" if row[1] and not only_request else "request"
        until = now + (for_user_seconds or 86_400) if user_grant else now + SESSION_GRANT_SECONDS
        db.execute(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, note = ?, grant_scope = ?,"
            " grant_until = ?, grant_usd = ? WHERE approval_id = ?",
            (
                "approved" if approve else "denied",
                by,
                now,
                note,
                scope if approve else None,
                until if approve and scope != "request" else None,
                str(for_user_usd) if user_grant and for_user_usd is not None else None,
                approval_id,
            ),
        )
    return get_approval(db, approval_id)


def find_for_request(db: Database, fingerprint: str) -> dict[str, Any] | None:
    """The newest approval for this exact request that is pending, approved-unused or denied."""
    row = db.execute(
        _SELECT + " WHERE fingerprint = ? AND status IN ('pending', 'approved', 'denied')"
        " ORDER BY created_at DESC LIMIT 1",
        (fingerprint,),
    ).fetchone()
    return _as_dict(row) if row else None


def use_request_approval(db: Database, approval_id: str) -> bool:
    """Consume a one-request approval. False if someone else used it first."""
    with transaction(db):
        cur = db.execute(
            "UPDATE approvals SET status = 'used' WHERE approval_id = ? AND status = 'approved'"
            " AND grant_scope = 'request'",
            (approval_id,),
        )
    return cur.rowcount == 1


def use_session_grant(db: Database, key_id: str, session_id: str) -> str | None:
    """An unexpired approval of this key's session: its id, or None."""
    row = db.execute(
        "SELECT approval_id FROM approvals WHERE key_id = ? AND session_id = ? AND status = 'approved'"
        " AND grant_scope = 'session' AND grant_until > ? ORDER BY created_at DESC LIMIT 1",
        (key_id, session_id, time.time()),
    ).fetchone()
    return str(row[0]) if row else None


def use_user_grant(db: Database, key_user: str | None, key_id: str, amount: Decimal) -> str | None:
    """Draw ``amount`` from an unexpired user grant that still covers it; returns its id, or None."""
    now = time.time()
    with transaction(db):
        rows = db.execute(
            "SELECT approval_id, grant_usd, grant_used_usd FROM approvals WHERE status = 'approved'"
            " AND grant_scope = 'user' AND grant_until > ? AND (user = ? OR (user IS NULL AND key_id = ?))"
            " ORDER BY created_at",
            (now, key_user, key_id),
        ).fetchall()
        for approval_id, grant_usd, used_usd in rows:
            used = Decimal(used_usd)
            if grant_usd is not None and used + amount > Decimal(grant_usd):
                continue
            db.execute(
                "UPDATE approvals SET grant_used_usd = ? WHERE approval_id = ?", (str(used + amount), approval_id)
            )
            return approval_id
    return None
