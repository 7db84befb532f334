"""Sessions an operator let go on after a loop rule paused them (``tokenctl loops resume``)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from tokenctl.ledger.audit import AuditEvent, read_audit, write_audit
from tokenctl.ledger.engine import Database
from tokenctl.ledger.migrations import transaction
from tokenctl.policy.loops import LoopRule

_COUNT = re.compile(
    r"(?:called|started) (\d+) times|unattended for (\d+) min|spent \$(\d+) in|gave (\d+) near-identical"
)


class NotPaused(LookupError):
    """No loop rule paused that session."""


def resume(db: Database, subject: str, rule: str, repeats_allowed: int, by: str) -> None:
    """Let ``subject`` (a session id, or ``key:<id>``) run up to ``repeats_allowed`` repeats under ``rule``."""
    with transaction(db):
        db.execute(
            "INSERT INTO loop_resumes (subject, rule, repeats_allowed, resumed_at, resumed_by) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (subject, rule) DO UPDATE SET repeats_allowed = excluded.repeats_allowed,"
            " resumed_at = excluded.resumed_at, resumed_by = excluded.resumed_by",
            (subject, rule, repeats_allowed, time.time(), by),
        )


def resumes(db: Database) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT subject, rule, repeats_allowed FROM loop_resumes").fetchall()
    return {(subject, rule): allowed for subject, rule, allowed in rows}


def detections(db: Any, limit: int) -> list[dict[str, Any]]:
    """The latest pause, throttle or alert per (session, rule), with how often it fired and whether it was resumed."""
    events = read_audit(db, limit=10_000, action="loop_*")
    resumed = resumes(db)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:  # newest first
        if event["action"] not in ("loop_pause", "loop_throttle", "loop_alert"):
            continue
        key = (event["subject"], event["rule"])
        if key not in latest:
            latest[key] = {**event, "times": 0}
        latest[key]["times"] += 1
    out = []
    for (subject, rule), event in latest.items():
        found = _COUNT.search(event["detail"] or "")
        count = int(next(g for g in found.groups() if g is not None)) if found else None
        allowed = resumed.get((subject, rule))
        out.append(
            {
                "subject": subject,
                "rule": rule,
                "action": event["action"].removeprefix("loop_"),
                "repeats": count,
                "last_seen": event["ts"],
                "times": event["times"],
                "resumed": allowed is not None and count is not None and allowed >= count,
                "evidence": event["detail"],
            }
        )
    return out[:limit]


def resume_paused(
    db: Database, rules: Sequence[LoopRule], subject: str, rule_name: str | None, by: str
) -> tuple[str, int]:
    """Let a paused session go on until it repeats its rule's count again; (rule, repeats now allowed)."""
    paused = [d for d in detections(db, 10_000) if d["subject"] == subject and d["action"] in ("pause", "throttle")]
    if rule_name:
        paused = [d for d in paused if d["rule"] == rule_name]
    if not paused:
        raise NotPaused(f"no loop rule paused {subject!r} (see `tokenctl loops list`)")
    found = paused[0]
    rule = next((r for r in rules if r.name == found["rule"]), None)
    step = rule.threshold if rule is not None else 1
    allowed = (found["repeats"] or 0) + step - 1  # paused again once it repeats `step` more times
    resume(db, subject, found["rule"], allowed, by)
    write_audit(db, AuditEvent(by, "loop_resume", found["rule"], subject, None, f"up to {allowed} repeats"))
    return found["rule"], allowed
