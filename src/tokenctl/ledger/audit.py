"""The audit trail: every policy decision and every change to budgets, policies and approvals.

Request-path decisions are handed to the ledger writer like ledger entries (no database
access on the request path); CLI and admin changes are written directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import transaction
from tokenctl.ledger.record import iso_utc

AUDIT_COLUMNS = ("ts", "actor", "action", "rule", "subject", "request_id", "detail")
AUDIT_INSERT_SQL = f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what, under which rule, when."""

    actor: str
    action: str
    rule: str | None = None
    subject: str | None = None
    request_id: str | None = None
    detail: str | None = None
    at: float = 0.0

    def to_row(self) -> tuple[Any, ...]:
        return (
            iso_utc(self.at or time.time()),
            self.actor,
            self.action,
            self.rule,
            self.subject,
            self.request_id,
            self.detail,
        )


def write_audit(db: Database, event: AuditEvent) -> None:
    with transaction(db):
        db.execute(AUDIT_INSERT_SQL, event.to_row())


def read_audit(
    db: Database, *, limit: int = 100, action: str | None = None, since: str | None = None
) -> list[dict[str, Any]]:
    sql = f"SELECT id, {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE 1=1"
    params: list[Any] = []
    if action:
        sql += " AND action LIKE ?"
        params.append(action.replace("*", "%"))
    if since:
        sql += " AND ts >= ?"
        params.append(since)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    cur = db.execute(sql, params)
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
