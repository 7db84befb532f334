"""The alerts raised so far, as the audit log keeps them (the Health page and ``GET /admin/alerts``)."""

from __future__ import annotations

from typing import Any

from tokenctl.ledger.engine import Database
from tokenctl.watch.checks import ALERT_ACTIONS

SHOWN = (*ALERT_ACTIONS, "cache_alarm")  # cache_alarm: one session missing the prompt cache (the enforcer's)


def recent_alerts(db: Database, limit: int, team: str | None = None) -> list[dict[str, Any]]:
    """Newest first; for a team's viewer only that team's own (its team alerts)."""
    marks = ", ".join("?" * len(SHOWN))
    sql = f"SELECT id, ts, action, subject, detail FROM audit_log WHERE action IN ({marks})"
    params: list[Any] = [*SHOWN]
    if team is not None:
        sql += " AND subject = ?"
        params.append(f"team {team}")
    rows = db.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [dict(zip(("id", "ts", "action", "subject", "detail"), row, strict=True)) for row in rows]
