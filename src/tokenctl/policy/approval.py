"""Approval gate: a request estimated above a threshold is held until an approver lets it through.

The client gets a 402 naming the approval id; approvers are told by webhook and decide with
``tokenctl approvals approve|deny`` or the admin API. Retrying the same request (same key and body)
after approval passes once; the approval of an agent session's request lets that session's next turns and
retries pass (for 12 hours); an approval given for the user lets that user's held requests pass until its
time runs out or its amount is used. Only requests above a threshold reach the database, in a
worker thread, so ordinary requests never wait for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tokenctl.errors import ApprovalRequired, PolicyDenied
from tokenctl.ledger import approvals as store
from tokenctl.ledger.db import connect
from tokenctl.ledger.engine import Database
from tokenctl.policy.budget import covers
from tokenctl.policy.rules import ApprovalRule
from tokenctl.types import Principal


def triggered_rule(
    rules: Sequence[ApprovalRule],
    principal: Principal,
    session_id: str | None,
    estimated_usd: Decimal,
    input_tokens: int,
) -> tuple[ApprovalRule, str] | None:
    for rule in rules:
        if covers(rule, principal, session_id) is None:
            continue
        if rule.above_usd is not None and estimated_usd > rule.above_usd:
            return rule, f"estimated cost ${estimated_usd.quantize(Decimal('0.0001'))} is above ${rule.above_usd}"
        if rule.above_input_tokens is not None and input_tokens > rule.above_input_tokens:
            return rule, f"about {input_tokens:,} input tokens is above {rule.above_input_tokens:,}"
    return None


def fingerprint(key_id: str, raw_body: bytes) -> str:
    return hashlib.sha256(key_id.encode() + b"\0" + raw_body).hexdigest()


class ApprovalDesk:
    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        self._db: Database | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def check(self, held: store.HeldRequest) -> tuple[str, bool]:
        """(approval id, created now) if the request may pass or was just held; raises when it must wait or was denied."""
        return await asyncio.get_running_loop().run_in_executor(None, self._check, held)

    def _connection(self) -> Database:
        if self._db is None:
            self._db = connect(self._db_path)
        return self._db

    def _check(self, held: store.HeldRequest) -> tuple[str, bool]:
        with self._lock:
            db = self._connection()
            grant = store.use_user_grant(db, held.user, held.key_id, held.estimated_usd)
            if grant is None and held.session_id:
                grant = store.use_session_grant(db, held.key_id, held.session_id)
            if grant is not None:
                return grant, False
            found = store.find_for_request(db, held.fingerprint)
            if found is None:
                created = store.create_pending(db, held)
                raise _held(created, held, new=True)
            if (
                found["status"] == "approved"
                and found["grant_scope"] == "request"
                and store.use_request_approval(db, found["approval_id"])
            ):
                return found["approval_id"], False
            if found["status"] == "denied":
                note = f": {found['note']}" if found["note"] else ""
                raise PolicyDenied(
                    f"tokenctl: approval {found['approval_id']} for this request was denied by "
                    f"{found['decided_by']}{note}"
                )
            raise _held(found, held, new=False)


def _held(approval: dict[str, Any], held: store.HeldRequest, *, new: bool) -> ApprovalRequired:
    exc = ApprovalRequired(
        f"tokenctl: this request needs approval ({held.reason}; rule {held.rule!r}). It is held as "
        f"{approval['approval_id']}; an approver can run `tokenctl approvals approve {approval['approval_id']}`. "
        f"Retry the same request once it is approved.",
        approval["approval_id"],
    )
    exc.new = new  # type: ignore[attr-defined]
    return exc
