"""Deciding a held request: approve or deny, with its audit entry. Shared by the admin API, the dashboard and
the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tokenctl.ledger import approvals as approval_store
from tokenctl.ledger.audit import AuditEvent, write_audit
from tokenctl.validate import ConfigError, money


def decide_approval(db: Any, approval_id: str, approve: bool, body: dict[str, Any]) -> dict[str, Any]:
    """Approve or deny, with the audit entry; shared by the admin API and the CLI."""
    by = str(body.get("by") or "admin")
    hours = body.get("for_user_hours")
    if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0):
        raise ConfigError("for_user_hours: must be a positive number")
    amount: Decimal | None = money(body, "for_user_usd", "approval")
    seconds = None if hours is None else float(hours) * 3600
    if approve and amount is not None and seconds is None:
        seconds = 86_400.0
    only_request = body.get("only_request", False)
    if not isinstance(only_request, bool):
        raise ConfigError("only_request: must be true or false")
    result = approval_store.decide(
        db,
        approval_id,
        approve=approve,
        by=by,
        note=body.get("note"),
        for_user_seconds=seconds,
        for_user_usd=amount,
        only_request=only_request,
    )
    grant = ""
    if result["grant_scope"] == "session":
        grant = f" for session {result['session_id']} (its next turns and retries) for 12 h"
    if result["grant_scope"] == "user":
        until = datetime.fromtimestamp(result["grant_until"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        grant = f" for user {result['user'] or result['key_id']} until {until}"
        if result["grant_usd"]:
            grant += f" up to ${result['grant_usd']}"
    write_audit(
        db,
        AuditEvent(
            by,
            "approval.approve" if approve else "approval.deny",
            result["rule"],
            approval_id,
            None,
            (body.get("note") or "") + grant,
        ),
    )
    return result
